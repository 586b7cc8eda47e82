"""Small generated images for tests: solid colours with a marker, so different files differ."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

PALETTE = [(220, 60, 60), (60, 120, 220), (60, 180, 90), (200, 160, 40), (150, 80, 190), (40, 170, 170)]


def write_image(path: Path, size: tuple[int, int] = (96, 128), colour: tuple[int, int, int] = (200, 50, 50)) -> Path:
    """A small solid image with a marker square, so different files have different pixels."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", size, colour)
    marker = (hash(path.name) % 200, 255 - colour[1], colour[0] // 2)
    image.paste(marker, (4, 4, 4 + size[0] // 4, 4 + size[1] // 4))
    image.save(path)
    return path
