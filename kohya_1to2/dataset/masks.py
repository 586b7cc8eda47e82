"""Where each source image's character mask comes from, for scene composites (white = character).

In this order: the image's own alpha channel, then a `--masks DIR` tree mirroring the sources
(`DIR/N_name/<stem>.png`), then (with `--segment`) the segmenter's mask in the run directory's own tree of the
same shape (dataset/segment.py). An image with none is an error naming it: a guessed mask (a rectangle, a colour
key) would teach the network the background as part of the character. Mask files never belong inside a
character folder: sd-scripts would train each one as an image of that character.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from PIL import Image, ImageOps

from kohya_1to2.dataset.compose import may_be_transparent
from kohya_1to2.dataset.segment import EXTRA, is_current
from kohya_1to2.dataset.segment import NAME as SEGMENTER
from kohya_1to2.errors import DatasetError

if TYPE_CHECKING:  # build workers import this module: keep pydantic (models) out of their start-up
    from kohya_1to2.models import Character, SourceImage

MaskKind = Literal["alpha", "file", "segmented"]
MASK_SUFFIX = ".png"
MASK_NAME = re.compile(r"[._ -]mask$", re.IGNORECASE)
"""Stems such as `alice_01_mask` or `alice_01.mask`: mask files put beside the images they belong to."""
SHOWN = 5
"""How many image names an error lists before `and N more`."""


@dataclass(frozen=True)
class MaskRef:
    """One image's mask: read from the image's alpha channel, or from a mask file. An alpha channel is found
    from the header (no decode); `fallback` is the --masks file to use should it turn out fully opaque."""

    kind: MaskKind
    path: Path
    fallback: Path | None = None


def mask_file_for(image: SourceImage, masks_root: Path) -> Path:
    """`DIR/N_name/<stem>.png`: the tree mirrors the source folders by name."""
    return masks_root / image.path.parent.name / f"{image.path.stem}{MASK_SUFFIX}"


def _has_alpha_channel(path: Path) -> bool:
    """The header says the image can be transparent (its pixels are read once, in the build)."""
    try:
        with Image.open(path) as image:
            return may_be_transparent(image)
    except (OSError, ValueError):
        return False


def find_masks(characters: Sequence[Character], masks_root: Path | None,
               segmented_root: Path | None = None) -> tuple[dict[Path, MaskRef], list[Path]]:
    """Each image's mask source, and the images that have none (a segmented mask counts while it is newer
    than its image)."""
    found: dict[Path, MaskRef] = {}
    missing: list[Path] = []
    for character in characters:
        for image in character.images:
            file = mask_file_for(image, masks_root) if masks_root is not None else None
            file = file if file is not None and file.is_file() else None
            if _has_alpha_channel(image.path):
                found[image.path] = MaskRef("alpha", image.path, fallback=file)
            elif file is not None:
                found[image.path] = MaskRef("file", file)
            elif segmented_root is not None and is_current(segmented := mask_file_for(image, segmented_root),
                                                           image.path):
                found[image.path] = MaskRef("segmented", segmented)
            else:
                missing.append(image.path)
    return found, missing


def _listed(paths: Sequence[Path]) -> str:
    names = [f"{p.parent.name}/{p.name}" for p in paths[:SHOWN]]
    more = f" and {len(paths) - SHOWN} more" if len(paths) > SHOWN else ""
    return ", ".join(names) + more


def require_masks(characters: Sequence[Character], masks_root: Path | None,
                  segmented_root: Path | None = None) -> dict[Path, MaskRef]:
    """Every image's mask source, or a DatasetError (exit 3) naming the images without one."""
    if masks_root is not None and not masks_root.is_dir():
        raise DatasetError(f"--masks {masks_root}: no such folder", hint="pass the root of the mask tree")
    found, missing = find_masks(characters, masks_root, segmented_root)
    if missing:
        where = f"; no {masks_root}/N_name/<stem>.png either" if masks_root else ""
        raise DatasetError(
            f"scene composites need a mask for every image: {len(missing)} image(s) have no alpha channel{where}: "
            f"{_listed(missing)}",
            hint="give them a transparent background, or pass --masks DIR holding N_name/<stem>.png "
                 f"(white = character, same size as the image), or --segment (the optional [{EXTRA}] extra)",
        )
    return found


def masks_in_character_folders(characters: Sequence[Character]) -> list[Path]:
    """Images whose name says they are masks (`*_mask.png`): sd-scripts would train them as that character."""
    return [image.path for c in characters for image in c.images if MASK_NAME.search(image.path.stem)]


def to_segment(characters: Sequence[Character], masks_root: Path | None,
               segmented_root: Path) -> list[tuple[Path, Path]]:
    """(image, mask path) for each image with no mask of its own and no current segmented one."""
    _, missing = find_masks(characters, masks_root, segmented_root)
    by_path = {image.path: image for c in characters for image in c.images}
    return [(path, mask_file_for(by_path[path], segmented_root)) for path in missing]


def mask_summary(refs: dict[Path, MaskRef], to_segment: int = 0) -> str:
    """`masks: 6 from the images' alpha channel, 2 from --masks files` (the pre-flight's line)."""
    counts = {kind: sum(1 for ref in refs.values() if ref.kind == kind) for kind in ("alpha", "file", "segmented")}
    words = {"alpha": "from the images' alpha channel", "file": "from --masks files",
             "segmented": f"segmented earlier by {SEGMENTER}"}
    parts = [f"{count} {words[kind]}" for kind, count in counts.items() if count]
    if to_segment:
        parts.append(f"{to_segment} to segment with {SEGMENTER} (--segment)")
    return "masks: " + ", ".join(parts)


def load_mask(ref: MaskRef, source_size: tuple[int, int], size: tuple[int, int]) -> Image.Image:
    """The mask as 8-bit L, upright like its image, at `size` (the loaded source's, shrunk from `source_size`);
    a mask file of another size than its image is an error, not a stretch."""
    try:
        with Image.open(ref.path) as opened:
            upright = ImageOps.exif_transpose(opened)
            mask = upright.convert("RGBA").getchannel("A") if ref.kind == "alpha" else upright.convert("L")
    except (OSError, ValueError) as exc:
        raise DatasetError(f"cannot read mask {ref.path}: {exc}", hint="re-save it as a PNG") from exc
    if mask.size != source_size:
        raise DatasetError(f"mask {ref.path} is {mask.size[0]}x{mask.size[1]}, its image "
                           f"{source_size[0]}x{source_size[1]}", hint="a mask must have its image's size")
    return mask if mask.size == size else mask.resize(size, Image.Resampling.BILINEAR)
