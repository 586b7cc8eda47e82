"""preview.py: the contact sheet shows the first composites with their captions, written atomically."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image

from kohya_1to2.dataset import preview
from kohya_1to2.errors import SetupError
from kohya_1to2.fsutil import TMP_PREFIX


@dataclass(frozen=True)
class Entry:
    file: str
    caption: str


def _entries(run_dir: Path, count: int) -> list[Entry]:
    folder = run_dir / "composites" / "1_composite"
    folder.mkdir(parents=True)
    entries = []
    for n in range(count):
        name = f"{n:06d}_a__b.png"
        Image.new("RGB", (200, 100), (n * 20 % 256, 0, 255 - n * 20 % 256)).save(folder / name)
        entries.append(Entry(file=f"composites/1_composite/{name}", caption=f"a/b/COMPOSITE, tag{n}, red hair"))
    return entries


def _cells_with_thumbnail(sheet: Image.Image, count_columns: int, cell_height: int) -> int:
    """How many cells have non-white pixels where the thumbnail goes."""
    found = 0
    for row in range(sheet.height // cell_height):
        for col in range(count_columns):
            x = col * preview.CELL_WIDTH + preview.CELL_WIDTH // 2
            y = row * cell_height + preview.PADDING + preview.THUMB_HEIGHT // 2
            found += sheet.getpixel((x, y)) != preview.BACKGROUND
    return found


def test_grid_holds_at_most_max_items(tmp_path: Path) -> None:
    entries = _entries(tmp_path, 7)
    out = preview.contact_sheet(entries, tmp_path / "preview.png", max_items=5)
    with Image.open(out) as sheet:
        sheet = sheet.convert("RGB")
        assert sheet.width == preview.COLUMNS * preview.CELL_WIDTH
        rows = 2
        cell_height = sheet.height // rows
        assert _cells_with_thumbnail(sheet, preview.COLUMNS, cell_height) == 5
    assert not list(tmp_path.glob(TMP_PREFIX + "*"))


def test_thumbnail_keeps_the_composite_colours(tmp_path: Path) -> None:
    entries = _entries(tmp_path, 1)
    with Image.open(preview.contact_sheet(entries, tmp_path / "p.png")) as sheet:
        centre = sheet.convert("RGB").getpixel((preview.CELL_WIDTH // 2, preview.PADDING + preview.THUMB_HEIGHT // 2))
    assert centre == (0, 0, 255)


def test_caption_text_is_drawn_below_the_image(tmp_path: Path) -> None:
    entries = _entries(tmp_path, 1)
    with Image.open(preview.contact_sheet(entries, tmp_path / "p.png")) as sheet:
        rgb = sheet.convert("RGB")
        text_band = rgb.crop((0, preview.PADDING + preview.THUMB_HEIGHT, rgb.width, rgb.height))
        assert text_band.getextrema()[0][0] < 100  # dark text pixels exist under the thumbnail


def test_missing_composite_does_not_break_the_sheet(tmp_path: Path) -> None:
    out = preview.contact_sheet([Entry(file="gone.png", caption="x/y/COMPOSITE")], tmp_path / "p.png")
    assert out.is_file()


def test_long_captions_wrap_and_are_truncated() -> None:
    caption = ", ".join(f"tag number {n}" for n in range(100))
    lines = preview.wrap_caption(caption, width_chars=40, max_lines=4)
    assert len(lines) == 4 and all(len(line) <= 40 for line in lines)
    assert lines[-1].endswith("...")
    assert preview.wrap_caption("short", 40) == ["short"]


def test_failed_write_leaves_the_old_preview(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    entries = _entries(tmp_path, 2)
    target = tmp_path / "preview.png"
    target.write_bytes(b"old")

    def failing_rename(src: object, dst: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", failing_rename)  # the sheet is complete in a temp file, then cannot land
    with pytest.raises(SetupError, match=f"cannot write {target}: disk full"):  # one line, exit 5
        preview.contact_sheet(entries, target)
    assert target.read_bytes() == b"old"
    assert not list(tmp_path.glob(TMP_PREFIX + "*"))
