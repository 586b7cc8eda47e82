"""Header-only facts about image files on disk (no pixel decode), for `plan` and `check`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from kohya_1to2.models import IMAGE_EXTENSIONS


def image_sizes(paths: Sequence[Path]) -> tuple[tuple[int, int], ...] | None:
    """Header-only sizes of images, or None if one cannot be read."""
    sizes = []
    for path in paths:
        try:
            with Image.open(path) as image:
                sizes.append(image.size)
        except (OSError, ValueError):
            return None
    return tuple(sizes)


def list_images(folder: Path) -> list[Path]:
    """The images sd-scripts would train from `folder` (top level, any case of the known extensions)."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
