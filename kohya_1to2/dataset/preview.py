"""Contact sheet of the first composites with their captions: one glance tells if pairing and captions
look right before hours of training."""

from __future__ import annotations

import io
import textwrap
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol

from PIL import Image, ImageDraw, ImageFont

from kohya_1to2.fsutil import atomic_write_bytes

CELL_WIDTH = 384
THUMB_HEIGHT = 192
COLUMNS = 3
PADDING = 8
LINE_HEIGHT = 14
MAX_CAPTION_LINES = 6
BACKGROUND = (255, 255, 255)
TEXT = (20, 20, 20)


class PreviewEntry(Protocol):
    """What a contact-sheet cell needs (a build.ManifestEntry fits)."""

    @property
    def file(self) -> str: ...

    @property
    def caption(self) -> str: ...


def wrap_caption(caption: str, width_chars: int, max_lines: int = MAX_CAPTION_LINES) -> list[str]:
    """Caption wrapped at tag boundaries where possible; overflow ends with an ellipsis."""
    lines = textwrap.wrap(caption, width=width_chars, break_long_words=True) or [""]
    if len(lines) > max_lines:
        lines = [*lines[: max_lines - 1], lines[max_lines - 1][: max(0, width_chars - 3)] + "..."]
    return lines


Thumbnail = tuple[tuple[int, int], bytes]
"""A cell's thumbnail as (size, raw RGB bytes): plain data, cheap to pickle from a build worker."""


def thumbnail(rgb: Image.Image) -> Image.Image:
    """`rgb` shrunk in place to fit a cell (the image is consumed)."""
    rgb.thumbnail((CELL_WIDTH, THUMB_HEIGHT), Image.Resampling.LANCZOS, reducing_gap=2.0)
    return rgb


def thumbnail_data(rgb: Image.Image) -> Thumbnail:
    """A cell's thumbnail as plain data: a build worker makes it from the composite it has just encoded
    (lossless, so the same pixels as decoding the file), and the parent need not decode the file again."""
    small = thumbnail(rgb)
    return small.size, small.tobytes()


def _thumbnail(path: Path) -> Image.Image:
    with Image.open(path) as image:
        image.draft("RGB", (CELL_WIDTH, THUMB_HEIGHT))
        rgb = image.convert("RGB")
    return thumbnail(rgb)


def contact_sheet(
    entries: Sequence[PreviewEntry],
    out_path: Path,
    max_items: int = 12,
    base_dir: Path | None = None,
    thumbnails: Mapping[str, Thumbnail] | None = None,
) -> Path:
    """Write a grid of the first `max_items` composites, each with its caption below (atomic PNG).

    `thumbnails` (by entry file, as `thumbnail_data` gives them) are used instead of decoding those files."""
    base = base_dir if base_dir is not None else out_path.parent
    shown = list(entries[:max_items])
    font = ImageFont.load_default()
    chars_per_line = max(10, (CELL_WIDTH - 2 * PADDING) // 7)
    wrapped = [wrap_caption(entry.caption, chars_per_line) for entry in shown]
    cell_height = THUMB_HEIGHT + PADDING * 2 + LINE_HEIGHT * max((len(w) for w in wrapped), default=1)
    columns = max(1, min(COLUMNS, len(shown)))
    rows = max(1, -(-len(shown) // columns))
    sheet = Image.new("RGB", (columns * CELL_WIDTH, rows * cell_height), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    for n, (entry, lines) in enumerate(zip(shown, wrapped, strict=True)):
        x, y = (n % columns) * CELL_WIDTH, (n // columns) * cell_height
        try:
            made = (thumbnails or {}).get(entry.file)
            thumb = Image.frombytes("RGB", *made) if made is not None else _thumbnail(base / entry.file)
            sheet.paste(thumb, (x + (CELL_WIDTH - thumb.width) // 2, y + PADDING))
        except OSError:
            draw.text((x + PADDING, y + PADDING), f"(missing {Path(entry.file).name})", fill=TEXT, font=font)
        for line_no, line in enumerate(lines):
            draw.text((x + PADDING, y + PADDING + THUMB_HEIGHT + 4 + line_no * LINE_HEIGHT), line, fill=TEXT,
                      font=font)
    buffer = io.BytesIO()
    # Pillow here (the main process never loads OpenCV), with the composites' fast setting: zlib level 1, RLE.
    sheet.save(buffer, "PNG", compress_level=1, compress_type=zlib.Z_RLE)
    atomic_write_bytes(out_path, buffer.getvalue())
    return out_path
