"""One labelled grid per prompt: rows = weights, columns = seeds (Pillow only)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

LABEL_WIDTH = 180
"""The label column's width; longer labels (a comparison's `run (mode) · row`) widen it up to MAX_LABEL_WIDTH."""
MAX_LABEL_WIDTH = 440
HEADER_HEIGHT = 40
PAD = 4
MISSING = (235, 235, 235)


def _font() -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default()


def _fit(text: str, width: int, font: ImageFont.FreeTypeFont | ImageFont.ImageFont) -> str:
    """Cut `text` with an ellipsis so it fits `width` pixels."""
    while text and font.getlength(text) > width:
        text = text[:-2] + "…" if len(text) > 2 else ""
    return text


def label_width(labels: Sequence[str], font: ImageFont.FreeTypeFont | ImageFont.ImageFont) -> int:
    """LABEL_WIDTH, or wider (at most MAX_LABEL_WIDTH) so the longest row label fits."""
    longest = max((font.getlength(label) for label in labels), default=0)
    return int(min(MAX_LABEL_WIDTH, max(LABEL_WIDTH, math.ceil(longest) + 2 * PAD)))


def compose_grid(cells: Sequence[Sequence[Path | None]], row_labels: Sequence[str], column_labels: Sequence[str],
                 title: str) -> Image.Image:
    """A grid of the cell images (None = not generated) with row labels on the left and a header."""
    images = [[Image.open(p).convert("RGB") if p is not None else None for p in row] for row in cells]
    sizes = [im.size for row in images for im in row if im is not None] or [(64, 64)]
    cell_w, cell_h = max(w for w, _ in sizes), max(h for _, h in sizes)
    columns = max((len(r) for r in cells), default=0)
    font = _font()
    left = label_width(row_labels, font)
    width = left + columns * (cell_w + PAD) + PAD
    height = HEADER_HEIGHT + len(cells) * (cell_h + PAD) + PAD
    grid = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(grid)
    draw.text((PAD, PAD), _fit(title, width - 2 * PAD, font), fill="black", font=font)
    for c, label in enumerate(column_labels):
        draw.text((left + c * (cell_w + PAD) + PAD, HEADER_HEIGHT - 16), _fit(label, cell_w, font),
                  fill="black", font=font)
    for r, row in enumerate(images):
        y = HEADER_HEIGHT + r * (cell_h + PAD) + PAD
        draw.text((PAD, y + cell_h // 2 - 6), _fit(row_labels[r], left - 2 * PAD, font), fill="black", font=font)
        for c, image in enumerate(row):
            x = left + c * (cell_w + PAD) + PAD
            if image is None:
                draw.rectangle((x, y, x + cell_w - 1, y + cell_h - 1), fill=MISSING)
            else:
                grid.paste(image, (x, y))
    return grid
