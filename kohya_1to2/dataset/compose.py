"""Image operations of the composite build: load a source as 8-bit RGB, join two (or more) side by side, encode.

Everything here is deterministic (same inputs, same bytes), so an interrupted build resumed later ends
byte-identical to a clean one.
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import io
import math
import re
import unicodedata
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image, ImageOps

from kohya_1to2.errors import DatasetError, UsageError

if TYPE_CHECKING:  # pool workers import this module: keep pydantic (models) out of their start-up
    from kohya_1to2.models import CompositeSettings

RGB = tuple[int, int, int]
Size = tuple[int, int]

EXTENSIONS = {"png": "png", "jpg": "jpg", "webp": "webp"}
"""Output file suffix per `composites.format`."""

SOURCE_SIZE_KEY = "1to2_source_size"
"""`load_source` leaves the upright size before shrinking in `image.info[SOURCE_SIZE_KEY]` (for the manifest)."""

EXIF_ORIENTATION = 0x0112
ROTATED_90 = (5, 6, 7, 8)
"""EXIF orientations that turn the image by 90 degrees: its upright width and height swap."""
REDUCING_GAP = 3.0
"""Pillow first shrinks by an integer factor (fast box filter) then LANCZOS over the last <= 3x: visually
equal to pure LANCZOS, several times faster on big downscales."""


# ---------------------------------------------------------------- loading


def fit_box(size: Size, max_side: int) -> Size:
    """`size` shrunk (never grown) so its long side is at most `max_side`, aspect kept."""
    long_side = max(size)
    if long_side <= max_side:
        return size
    scale = max_side / long_side
    return (max(1, round(size[0] * scale)), max(1, round(size[1] * scale)))


def _flatten(image: Image.Image, background: RGB) -> Image.Image:
    """Composite any image with alpha (or a transparent palette entry) over the background colour."""
    rgba = image.convert("RGBA")
    alpha_min, _ = rgba.getchannel("A").getextrema()
    if alpha_min == 255:
        return rgba.convert("RGB")
    base = Image.new("RGBA", rgba.size, (*background, 255))
    base.alpha_composite(rgba)
    return base.convert("RGB")


def _sixteen_bit_to_l(image: Image.Image) -> Image.Image:
    """16/32-bit integer greyscale -> 8-bit: keep the top byte (values above 65535 clip)."""
    as_int = image.convert("I") if image.mode != "I" else image
    return as_int.point(lambda value: value * (1 / 256)).convert("L")


def _to_srgb(image: Image.Image) -> Image.Image:
    """Apply an embedded ICC profile (CMYK print profiles, wide gamut) so colours survive; else plain convert."""
    icc = image.info.get("icc_profile")
    if icc and image.mode in ("RGB", "CMYK"):
        try:
            from PIL import ImageCms  # LittleCMS loads only for an image that carries a profile

            source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            converted = ImageCms.profileToProfile(image, source, ImageCms.createProfile("sRGB"), outputMode="RGB")
            if converted is not None:
                return converted
        except Exception:  # a broken profile is common in the wild; fall back to the naive conversion
            pass
    return image.convert("RGB")


def is_sixteen_bit(image: Image.Image) -> bool:
    """16/32-bit integer greyscale, which `convert("RGB")` (sd-scripts' `load_image`) clips instead of scaling."""
    return image.mode.startswith("I;16") or image.mode == "I"


def may_be_transparent(image: Image.Image) -> bool:
    mode = image.mode
    return mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        "transparency" in image.info and mode in ("P", "L", "RGB", "1"))


def has_transparent_pixels(image: Image.Image) -> bool:
    """Some pixel is not fully opaque: `convert("RGB")` would expose the colour under it, `to_rgb` flattens it."""
    if not may_be_transparent(image) or is_sixteen_bit(image):
        return False
    alpha_min, _ = image.convert("RGBA").getchannel("A").getextrema()
    return bool(alpha_min != 255)  # an 8-bit channel: extrema are ints


def to_rgb(image: Image.Image, background: RGB) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB; transparency is flattened on `background`."""
    mode = image.mode
    if may_be_transparent(image):
        return _flatten(image, background)
    if is_sixteen_bit(image):
        return _sixteen_bit_to_l(image).convert("RGB")
    if mode in ("RGB", "CMYK"):
        return _to_srgb(image)
    return image.convert("RGB")  # L, 1, P, F, YCbCr, LAB, HSV


def upright_size(image: Image.Image) -> Size:
    """The size an opened image has once its EXIF orientation is applied (headers only, no pixel decode)."""
    width, height = image.size
    return (height, width) if image.getexif().get(EXIF_ORIENTATION, 1) in ROTATED_90 else (width, height)


def load_source(path: Path, background_rgb: RGB, max_side: int | None = None) -> Image.Image:
    """Decode a source as upright 8-bit RGB (first frame if animated), shrunk to fit `max_side` if given.

    Shrinking on load is safe because no half of a composite is ever larger than `max_side`, and it
    bounds the worker's cache; JPEGs are decoded at reduced scale directly (draft mode) when possible.
    """
    try:
        with Image.open(path) as opened:
            if getattr(opened, "n_frames", 1) > 1:
                opened.seek(0)
            width, height = upright_size(opened)
            if max_side is not None and opened.format == "JPEG":
                opened.draft("RGB", fit_box(opened.size, max_side))
            upright = ImageOps.exif_transpose(opened)
            rgb = to_rgb(upright, background_rgb)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise DatasetError(
            f"cannot read image {path}: {exc}", hint="re-save it with an image editor or remove it"
        ) from exc
    if max_side is not None:
        target = fit_box(rgb.size, max_side)
        if target != rgb.size:
            rgb = rgb.resize(target, Image.Resampling.LANCZOS, reducing_gap=REDUCING_GAP)
    rgb.info[SOURCE_SIZE_KEY] = (width, height)
    return rgb


# ---------------------------------------------------------------- composing


@dataclass(frozen=True)
class PairLayout:
    """Where each member goes, left to right (a pair, or a group of three or four): all share one height; the
    gap sits between neighbours. `canvas`, when set, is a larger frame the row sits centred in (padding in the
    background colour, see `pad_to_aspect`)."""

    members: tuple[Size, ...]
    gap: int
    canvas: Size | None = None

    @property
    def left(self) -> Size:
        return self.members[0]

    @property
    def right(self) -> Size:
        """The last member (the right half of a pair)."""
        return self.members[-1]

    @property
    def content(self) -> Size:
        return (sum(w for w, _ in self.members) + self.gap * (len(self.members) - 1), self.members[0][1])

    @property
    def size(self) -> Size:
        return self.canvas or self.content

    @property
    def origin(self) -> tuple[int, int]:
        """Top-left corner of the left member on the canvas."""
        (width, height), (content_w, content_h) = self.size, self.content
        return ((width - content_w) // 2, (height - content_h) // 2)

    @property
    def offsets(self) -> list[int]:
        """Each member's x on the canvas."""
        x = self.origin[0]
        found = []
        for w, _ in self.members:
            found.append(x)
            x += w + self.gap
        return found


def pair_layout(left: Size, right: Size, gap: int, max_side: int | None, max_height: int | None = None) -> PairLayout:
    """Common height = the smaller height (never upscale); then everything shrinks to fit `max_side` (and the
    height to `max_height`, which `pad_to_aspect` uses to leave room for padding)."""
    return row_layout((left, right), gap, max_side, max_height)


def row_layout(sizes: Sequence[Size], gap: int, max_side: int | None, max_height: int | None = None) -> PairLayout:
    """`pair_layout` for k members side by side: the smallest height, all shrunk together to fit `max_side`."""
    height = min(h for _, h in sizes)
    widths = [max(1, round(w * height / h)) for w, h in sizes]
    if max_side is not None:
        room = max_side - gap * (len(sizes) - 1)
        if room < len(sizes):
            raise UsageError(
                f"composites.gap ({gap}) leaves no room in composites.max_side ({max_side})",
                hint="lower --gap or raise --max-side",
            )
        scale = min(1.0, room / sum(widths), min(max_side, max_height or max_side) / height)
        if scale < 1.0:
            height = max(1, math.floor(height * scale))
            widths = [max(1, math.floor(w * height / h)) for w, h in sizes]
            # Rounding (or a 1-pixel height floor on extreme shapes) may overshoot: trim the widest member.
            for _ in range(len(sizes)):
                overflow = sum(widths) - room
                if overflow <= 0:
                    break
                wide = widths.index(max(widths))
                widths[wide] = max(1, widths[wide] - overflow)
    return PairLayout(members=tuple((w, height) for w in widths), gap=gap)


def _padded(content: Size, target: float) -> Size:
    if content[0] / content[1] > target:
        return (content[0], max(content[1], round(content[0] / target)))
    return (max(content[0], round(content[1] * target)), content[1])


def pad_to_aspect(left: Size, right: Size, gap: int, max_side: int | None, bucket: Size) -> PairLayout:
    """The pair's layout centred on a canvas of `bucket`'s aspect, padded (never cropped), for a composite whose
    own aspect the run's buckets cannot hold within MAX_CROP: sd-scripts then cuts nothing off a character.

    Too wide for the bucket: padding above and below; too tall: left and right. The canvas keeps within
    `max_side`: where padding would push it over, the pair shrinks first.
    """
    return pad_row_to_aspect((left, right), gap, max_side, bucket)


def pad_row_to_aspect(sizes: Sequence[Size], gap: int, max_side: int | None, bucket: Size) -> PairLayout:
    """`pad_to_aspect` for k members side by side."""
    target = bucket[0] / bucket[1]
    layout = row_layout(sizes, gap, max_side)
    for _ in range(16):
        canvas = _padded(layout.content, target)
        if max_side is None or max(canvas) <= max_side or layout.content[1] == 1:
            break
        height = layout.content[1]
        layout = row_layout(sizes, gap, max_side,
                            max_height=max(1, min(height - 1, math.floor(height * max_side / max(canvas)))))
    return PairLayout(layout.members, layout.gap, canvas if canvas != layout.content else None)


def fit(image: Image.Image, size: Size) -> Image.Image:
    """`image` resized to `size` with high-quality resampling; the same object if already that size."""
    if image.size == size:
        return image
    return image.resize(size, Image.Resampling.LANCZOS, reducing_gap=REDUCING_GAP)


def join(left: Image.Image, right: Image.Image, layout: PairLayout, background_rgb: RGB) -> Image.Image:
    """Paste two already-fitted halves side by side on the background colour."""
    return join_row((left, right), layout, background_rgb)


def join_row(members: Sequence[Image.Image], layout: PairLayout, background_rgb: RGB) -> Image.Image:
    """Paste k already-fitted members side by side on the background colour."""
    canvas = Image.new("RGB", layout.size, background_rgb)
    y = layout.origin[1]
    for image, x in zip(members, layout.offsets, strict=True):
        canvas.paste(image, (x, y))
    return canvas


def compose_pair(left: Image.Image, right: Image.Image, settings: CompositeSettings) -> Image.Image:
    """The composite of two RGB images per `settings` (halves resized before joining, cheaper than after)."""
    return compose_row((left, right), settings)


def compose_row(images: Sequence[Image.Image], settings: CompositeSettings) -> Image.Image:
    """The composite of k RGB images side by side per `settings`."""
    layout = row_layout([image.size for image in images], settings.gap, settings.max_side)
    fitted = [fit(image, size) for image, size in zip(images, layout.members, strict=True)]
    return join_row(fitted, layout, settings.background_rgb)


# ---------------------------------------------------------------- encoding and naming


@functools.cache
def _opencv() -> Any | None:
    """OpenCV's libpng encoder when the training environment has it (sd-scripts requires opencv)."""
    try:
        import cv2
        import numpy  # noqa: F401  (cv2 needs it; fail here, not mid-build)
    except ImportError:  # not installed, or a GUI build missing libGL on a headless box
        return None
    return cv2


@functools.cache
def opencv_version() -> str | None:
    """The installed OpenCV's version, found without importing it (the import is slow and heavy, and the main
    process of a build does not need it)."""
    if importlib.util.find_spec("cv2") is None:
        return None
    for dist in ("opencv-python", "opencv-python-headless", "opencv-contrib-python", "opencv-contrib-python-headless"):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return "unknown"


def png_encoder() -> str:
    """Which PNG encoder `encode` uses; part of the settings fingerprint, since the bytes differ."""
    version = opencv_version()
    return f"opencv-{version}" if version else f"pillow-{Image.__version__}"


def encode(image: Image.Image, fmt: str = "png", quality: int = 95) -> bytes:
    """Deterministic encoded bytes (no timestamps, no metadata).

    PNG uses zlib level 1 with the run-length strategy: about the size of the default level at several
    times the speed, which is what dominates a large build. libpng (through OpenCV) does it ~1.5x faster
    than Pillow, whose adaptive row filtering costs more than the compression, so it is used when present.
    """
    if fmt == "png":
        cv2 = _opencv() if opencv_version() else None
        if cv2 is not None:
            import numpy  # comes with the training stack (OpenCV's path); the wrapper needs Pillow only

            if image.mode == "RGBA":  # a scene composite: its alpha is the loss mask
                return _png_with_opencv(cv2, cv2.cvtColor(numpy.asarray(image), cv2.COLOR_RGBA2BGRA))
            rgb = numpy.asarray(image if image.mode == "RGB" else image.convert("RGB"))
            return _png_with_opencv(cv2, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        buffer = io.BytesIO()
        image.save(buffer, "PNG", compress_level=1, compress_type=zlib.Z_RLE)
        return buffer.getvalue()
    buffer = io.BytesIO()
    if fmt == "jpg":
        image.save(buffer, "JPEG", quality=quality, subsampling="4:4:4" if quality >= 90 else "4:2:0")
    elif fmt == "webp":
        image.save(buffer, "WEBP", quality=quality, method=4)
    else:
        raise UsageError(f"composites.format {fmt!r} is not one of png, jpg, webp")
    return buffer.getvalue()


def _png_with_opencv(cv2: Any, bgr: Any) -> bytes:
    params = [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE]
    ok, encoded = cv2.imencode(".png", bgr, params)
    if not ok:
        raise OSError("OpenCV could not encode a PNG")
    return bytes(encoded.tobytes())


def is_lossless(fmt: str) -> bool:
    """Whether a composite file of `fmt` decodes to exactly the pixels that were encoded."""
    return fmt == "png"


def uses_opencv(fmt: str) -> bool:
    """Whether `fmt` is encoded with OpenCV; `composite_canvas` then also takes halves in `as_bgr` form."""
    return fmt == "png" and opencv_version() is not None and _opencv() is not None


def as_bgr(image: Image.Image) -> Any:
    """An RGB image as OpenCV's BGR array, what `composite_canvas` copies into its canvas. A worker keeps a fitted
    half in this form, so a half shared by many composites is converted once, not once per composite
    (Pillow's export to numpy copies the pixels through its raw encoder)."""
    import numpy  # comes with the training stack (OpenCV's path); the wrapper needs Pillow only

    return bgr_from_rgb(numpy.asarray(image))


def rgb_array(data: bytes, size: Size, offset: int = 0) -> Any:
    """Raw RGB pixels as `Image.tobytes` gives them (from `offset`) viewed as an array, without a copy."""
    import numpy  # comes with the training stack (OpenCV's path); the wrapper needs Pillow only

    return numpy.frombuffer(data, numpy.uint8, size[0] * size[1] * 3, offset).reshape(size[1], size[0], 3)


def bgr_from_rgb(rgb: Any) -> Any:
    """An RGB array (height x width x 3) as OpenCV's BGR array."""
    cv2 = _opencv()
    assert cv2 is not None, "only called where uses_opencv()"
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)


def canvas_image(canvas: Any) -> Image.Image:
    """`composite_canvas`'s canvas as an RGB image (the pixels the encoded file decodes to, for lossless formats)."""
    if isinstance(canvas, Image.Image):
        return canvas
    cv2 = _opencv()
    assert cv2 is not None, "a BGR canvas only exists where uses_opencv()"
    return Image.fromarray(cv2.cvtColor(canvas, cv2.COLOR_BGR2RGB))


def composite_canvas(left: Any, right: Any, layout: PairLayout, background_rgb: RGB, fmt: str = "png") -> Any:
    """Two fitted halves on one canvas (see `row_canvas`)."""
    return row_canvas((left, right), layout, background_rgb, fmt)


def row_canvas(members: Sequence[Any], layout: PairLayout, background_rgb: RGB, fmt: str = "png") -> Any:
    """Fitted members on one canvas, in the form `encode_canvas` takes for `fmt`: an RGB image, or (where
    `uses_opencv(fmt)`) one BGR array the members go straight into (no RGB canvas, no whole-image copy).

    `members` are RGB images, or (only where `uses_opencv(fmt)`) their `as_bgr` arrays.
    """
    if not uses_opencv(fmt):
        return join_row(members, layout, background_rgb)
    import numpy  # comes with the training stack (OpenCV's path); the wrapper needs Pillow only

    width, height = layout.size
    canvas = numpy.empty((height, width, 3), numpy.uint8)
    y = layout.origin[1]
    rows = slice(y, y + layout.content[1])
    if layout.canvas is not None:
        canvas[:] = background_rgb[::-1]
    else:  # the members cover all but the gaps: paint only those
        for x, (w, _) in zip(layout.offsets[:-1], layout.members[:-1], strict=True):
            canvas[:, x + w : x + w + layout.gap] = background_rgb[::-1]
    for member, x, (w, _) in zip(members, layout.offsets, layout.members, strict=True):
        canvas[rows, x : x + w] = member if isinstance(member, numpy.ndarray) else as_bgr(member)
    return canvas


def encode_canvas(canvas: Any, fmt: str = "png", quality: int = 95) -> bytes:
    """The bytes of a `composite_canvas` canvas: the same as `encode(canvas_image(canvas))`."""
    if isinstance(canvas, Image.Image):
        return encode(canvas, fmt, quality)
    return _png_with_opencv(_opencv(), canvas)


_SEPARATORS = re.compile(r"[\s_]+")


def slug(name: str, max_length: int = 48) -> str:
    """A readable, safe file-name part: letters of any script and digits kept, everything else `_`.

    Never contains a path separator, never starts with `-` or `.`, never empty.
    """
    kept: list[str] = []
    for ch in unicodedata.normalize("NFC", name):
        category = unicodedata.category(ch)
        if category[0] in "LN" or (category[0] == "M" and kept) or ch in "-+":
            kept.append(ch)
        else:
            kept.append("_")
    text = _SEPARATORS.sub("_", "".join(kept)).strip("_").lstrip("-.+")
    return text[:max_length].rstrip("_") or "character"


def composite_name(index: int, left_name: str, right_name: str, fmt: str) -> str:
    """`000042_alice__bob.png`: sorts in build order and says who is on which side."""
    return group_name(index, (left_name, right_name), fmt)


def group_name(index: int, names: Sequence[str], fmt: str) -> str:
    """`000042_alice__bob__carol.png`: a composite's file, its members left to right."""
    return f"{index:06d}_{'__'.join(slug(name) for name in names)}.{EXTENSIONS[fmt]}"
