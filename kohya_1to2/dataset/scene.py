"""Scene composites: each character cut out by its mask and placed on one shared background.

Side-by-side panels teach a hard vertical seam and two backgrounds, which leak back as split-screen images;
MuDI's Seg-Mix places the subjects' cut-outs together on one canvas instead and trains only where they are.
Placement is pure and seeded (same plan, same seed: same pixels); cut-outs keep their caption order left to
right, stay whole inside the canvas, and overlap by at most `max_overlap` of the smaller one's box. The
composite's alpha channel is the loss weight sd-scripts reads with `alpha_mask`: the union of the
characters' masks, and `background_weight` elsewhere.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Literal

from PIL import Image, ImageChops, ImageOps

from kohya_1to2.dataset.compose import REDUCING_GAP, SOURCE_SIZE_KEY, fit_box, load_source, to_rgb
from kohya_1to2.dataset.masks import MaskRef, load_mask
from kohya_1to2.errors import DatasetError

Size = tuple[int, int]
RGB = tuple[int, int, int]
BackgroundKind = Literal["flat", "gradient", "images"]

HEIGHT_ROOM = 1.06
"""Canvas height over the cut-outs' full height: room to jitter them up and down."""
WIDTH_ROOM = 1.15
"""Canvas width over the cut-outs' summed width: room to jitter them sideways."""
MIN_SCALE = 0.85
"""Each cut-out is drawn at 85-100% of the full height, so characters do not always stand equally tall."""
GRADIENT_SHADES = ((0.55, 0.55, 0.55), (1.0, 0.92, 0.8), (0.8, 0.88, 1.0), (0.85, 1.0, 0.88))
"""Colour factors of a gradient's far end (the near end is --background): grey, warm, cool, green."""


@dataclass(frozen=True)
class Placement:
    """Where one cut-out goes on the canvas, at what size, and whether it is mirrored."""

    x: int
    y: int
    width: int
    height: int
    flip: bool = False

    @property
    def box(self) -> tuple[int, int, int, int]:
        return (self.x, self.y, self.x + self.width, self.y + self.height)


@dataclass(frozen=True)
class ScenePlan:
    canvas: Size
    placements: tuple[Placement, ...]


def overlap_fraction(a: Placement, b: Placement) -> float:
    """The area the two boxes share, over the smaller box's area (a bound on how much masks can overlap)."""
    width = min(a.x + a.width, b.x + b.width) - max(a.x, b.x)
    height = min(a.y + a.height, b.y + b.height) - max(a.y, b.y)
    if width <= 0 or height <= 0:
        return 0.0
    return width * height / min(a.width * a.height, b.width * b.height)


def _full_height(sizes: Sequence[Size], max_side: int | None) -> int:
    """The height every cut-out is scaled towards: the shortest one's (no cut-out is ever upscaled, as the
    side-by-side halves are not), shrunk until the canvas fits max_side."""
    tallest = min(h for _, h in sizes)
    if max_side is None:
        return tallest
    width_per_height = sum(w / h for w, h in sizes) * WIDTH_ROOM
    longest = max(width_per_height, HEIGHT_ROOM) * tallest
    return max(1, int(tallest * min(1.0, max_side / longest)))


def estimated_canvas(sizes: Sequence[Size], max_side: int | None = None) -> Size:
    """The canvas of cut-outs of `sizes` before any aspect padding (prepare's guess from whole sources,
    for choosing stage 2's buckets before the build)."""
    full = _full_height(sizes, max_side)
    return (max(8, int(sum(w * full / h for w, h in sizes) * WIDTH_ROOM)), max(8, int(full * HEIGHT_ROOM)))


def _grown(canvas: Size, aspect: float | None) -> Size:
    """The canvas grown (never shrunk) to `aspect` (width / height): the bucket sd-scripts will put it in."""
    if aspect is None:
        return canvas
    width, height = canvas
    if width / height < aspect:
        return (max(width, round(height * aspect)), height)
    return (width, max(height, round(width / aspect)))


def plan_scene(sizes: Sequence[Size], key: str, *, max_overlap: float = 0.1, flip: bool = False,
               max_side: int | None = None, bottom: Sequence[bool] = (), aspect: float | None = None) -> ScenePlan:
    """Canvas and placements for cut-outs of `sizes` (left to right), seeded by `key`; `bottom[i]`: the cut-out
    touches its own image's bottom edge (a cowboy shot), so it stands on the canvas's bottom edge. `aspect`:
    the canvas is grown to it (background added), so its stage-2 bucket crops nothing."""
    rng = random.Random(f"1to2-scene:{key}")
    full = _full_height(sizes, max_side)
    row = estimated_canvas(sizes, max_side)
    drawn = []
    for w, h in sizes:
        height = max(1, int(full * rng.uniform(MIN_SCALE, 1.0)))
        drawn.append((max(1, min(row[0], round(w * height / h))), height))
    row = (max(row[0], sum(w for w, _ in drawn)), row[1])  # tiny sizes: rounding up must still fit
    canvas = _grown(row, aspect)
    dx, dy = (canvas[0] - row[0]) // 2, canvas[1] - row[1]  # centred across, standing on the bottom edge
    slack = row[0] - sum(w for w, _ in drawn)
    cuts = sorted(rng.uniform(0, max(0, slack)) for _ in drawn)
    gaps = [int(b - a) for a, b in pairwise([0.0, *cuts])]
    wanted = [0] + [int(rng.uniform(0, max_overlap) * min(drawn[i - 1][0], drawn[i][0])) for i in range(1, len(drawn))]
    ys = [row[1] - h if bottom and bottom[i] else rng.randint(0, row[1] - h) for i, (_, h) in enumerate(drawn)]
    flips = [flip and rng.random() < 0.5 for _ in drawn]
    while True:
        placements = _row(drawn, gaps, wanted, ys, flips)
        worst = _first_too_close(placements, max_overlap)
        if worst is None:
            return ScenePlan(canvas, tuple(Placement(p.x + dx, p.y + dy, p.width, p.height, p.flip)
                                           for p in placements))
        wanted[worst] = 0  # that cut-out goes back to its gap: with no shift left, no box overlaps another


def _row(drawn: Sequence[Size], gaps: Sequence[int], shifts: Sequence[int], ys: Sequence[int],
         flips: Sequence[bool]) -> list[Placement]:
    placements: list[Placement] = []
    x = 0
    for i, (w, h) in enumerate(drawn):
        x = max(placements[-1].x if placements else 0, x + gaps[i] - shifts[i])
        placements.append(Placement(x, ys[i], w, h, flips[i]))
        x += w
    return placements


def _first_too_close(placements: Sequence[Placement], max_overlap: float) -> int | None:
    for j in range(1, len(placements)):
        if any(overlap_fraction(placements[i], placements[j]) > max_overlap for i in range(j)):
            return j
    return None


# ---------------------------------------------------------------- pixels


def cut_out(image: Image.Image, mask: Image.Image) -> tuple[Image.Image, Image.Image, bool]:
    """The character's box of `image` and `mask` (mask > 0), and whether it touches the image's bottom edge."""
    box = mask.point(lambda v: 255 if v else 0).getbbox()
    if box is None:
        raise ValueError("the mask is empty")
    return image.crop(box), mask.crop(box), box[3] == image.size[1]


def background(kind: BackgroundKind, canvas: Size, colour: RGB, key: str,
               images: Sequence[Path] = ()) -> Image.Image:
    """The shared background: the flat colour, a vertical gradient from it, or one of `images` (cover-cropped)."""
    rng = random.Random(f"1to2-background:{key}")
    if kind == "images" and images:
        with Image.open(images[rng.randrange(len(images))]) as opened:
            return ImageOps.fit(ImageOps.exif_transpose(opened).convert("RGB"), canvas, Image.Resampling.LANCZOS)
    near = Image.new("RGB", canvas, colour)
    if kind != "gradient":
        return near
    shade = GRADIENT_SHADES[rng.randrange(len(GRADIENT_SHADES))]
    far = Image.new("RGB", canvas, tuple(min(255, int(c * f)) for c, f in zip(colour, shade, strict=True)))
    ramp = Image.linear_gradient("L").resize(canvas, Image.Resampling.BILINEAR)
    return Image.composite(far, near, ramp)


def compose_scene(cutouts: Sequence[tuple[Image.Image, Image.Image]], plan: ScenePlan, back: Image.Image,
                  background_weight: float = 0.0) -> Image.Image:
    """RGBA: the cut-outs pasted by their masks over `back`; alpha = the union of the placed masks, lifted to
    `background_weight` (0..1) where no character is."""
    picture = back.copy()
    union = Image.new("L", plan.canvas, 0)
    for (rgb, mask), place in zip(cutouts, plan.placements, strict=True):
        size = (place.width, place.height)
        rgb = rgb.resize(size, Image.Resampling.LANCZOS, reducing_gap=REDUCING_GAP)
        mask = mask.resize(size, Image.Resampling.BILINEAR, reducing_gap=REDUCING_GAP)
        if place.flip:
            rgb, mask = ImageOps.mirror(rgb), ImageOps.mirror(mask)
        picture.paste(rgb, (place.x, place.y), mask)
        union.paste(ImageChops.lighter(union.crop(place.box), mask), (place.x, place.y))
    if background_weight > 0:
        floor = round(background_weight * 255)
        union = union.point(lambda v: floor + (255 - floor) * v // 255)
    picture.putalpha(union)
    return picture


# ---------------------------------------------------------------- one scene, in a build worker


@dataclass(frozen=True)
class SceneConfig:
    """What a build worker needs for scene composites (plain data: workers never import pydantic)."""

    masks: dict[str, MaskRef]
    """Each source's mask, by path string."""
    background: RGB
    kind: BackgroundKind
    backgrounds: tuple[Path, ...] = ()
    max_overlap: float = 0.1
    flip: bool = False
    background_weight: float = 0.0
    max_side: int | None = None
    seed: int = 0


@dataclass(frozen=True)
class Cutout:
    """A source cut to its character's box (RGBA: the mask is the alpha), its source size, and whether the
    character touches the source's bottom edge."""

    image: Image.Image
    source_size: Size
    bottom: bool


def load_cutout(path: str, config: SceneConfig) -> Cutout:
    """One source cut to its character, its mask as alpha. A mask from the image's own alpha is read from the
    same decode as the pixels (one decode per source, not two)."""
    ref = config.masks[path]
    if ref.kind == "alpha":
        rgb, mask, source_size = _decode_with_alpha(Path(path), config)
        if mask.getextrema()[0] == 255:  # an alpha channel, but every pixel opaque: no mask there
            if ref.fallback is None:
                raise DatasetError(f"{path} has an alpha channel but no transparent pixel, so no mask",
                                   hint="give it a transparent background, or a mask file under --masks")
            mask = load_mask(MaskRef("file", ref.fallback), source_size, rgb.size)
    else:
        rgb = load_source(Path(path), config.background, config.max_side)
        source_size = rgb.info.get(SOURCE_SIZE_KEY, rgb.size)
        mask = load_mask(ref, source_size, rgb.size)
    try:
        cropped, cropped_mask, bottom = cut_out(rgb, mask)
    except ValueError:
        raise DatasetError(f"the mask of {path} is empty: no character to cut out",
                           hint="fix its alpha channel or mask file") from None
    cropped.putalpha(cropped_mask)
    return Cutout(cropped, source_size, bottom)


def _decode_with_alpha(path: Path, config: SceneConfig) -> tuple[Image.Image, Image.Image, Size]:
    try:
        with Image.open(path) as opened:
            rgba = ImageOps.exif_transpose(opened).convert("RGBA")
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise DatasetError(f"cannot read image {path}: {exc}", hint="re-save it with an image editor") from exc
    source_size = rgba.size
    if config.max_side is not None and (target := fit_box(rgba.size, config.max_side)) != rgba.size:
        rgba = rgba.resize(target, Image.Resampling.LANCZOS, reducing_gap=REDUCING_GAP)
    return to_rgb(rgba, config.background), rgba.getchannel("A"), source_size


def render_scene(cutouts: Sequence[Cutout], key: str, config: SceneConfig,
                 bucket: Size | None = None) -> Image.Image:
    """The scene composite of `cutouts` (left to right) seeded by `key`: RGBA, alpha = loss weight; grown to
    `bucket`'s aspect where given."""
    plan = plan_scene([c.image.size for c in cutouts], f"{config.seed}:{key}", max_overlap=config.max_overlap,
                      flip=config.flip, max_side=config.max_side, bottom=[c.bottom for c in cutouts],
                      aspect=bucket[0] / bucket[1] if bucket else None)
    kind: BackgroundKind = "images" if config.backgrounds else config.kind
    back = background(kind, plan.canvas, config.background, f"{config.seed}:{key}", config.backgrounds)
    pairs = [(c.image.convert("RGB"), c.image.getchannel("A")) for c in cutouts]
    return compose_scene(pairs, plan, back, config.background_weight)
