"""evaluate/grid.py: rows = weights, columns = seeds, labels on the left and on top."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from kohya_1to2.evaluate.grid import HEADER_HEIGHT, LABEL_WIDTH, MAX_LABEL_WIDTH, PAD, compose_grid


def test_cells_land_in_their_row_and_column(tmp_path: Path) -> None:
    colours = {(r, c): (40 * r + 20, 30 * c + 10, 99) for r in range(3) for c in range(2)}
    cells = []
    for r in range(3):
        row: list[Path | None] = []
        for c in range(2):
            path = tmp_path / f"{r}{c}.png"
            Image.new("RGB", (48, 32), colours[(r, c)]).save(path)
            row.append(path)
        cells.append(row)
    cells[2][1] = None  # not generated: a grey cell, not a crash
    grid = compose_grid(cells, ["base", "stage 1", "stage 2 epoch 1"], ["seed 1", "seed 2"], "alice/bob")
    assert grid.size == (LABEL_WIDTH + 2 * (48 + PAD) + PAD, HEADER_HEIGHT + 3 * (32 + PAD) + PAD)
    for r in range(3):
        for c in range(2):
            x = LABEL_WIDTH + c * (48 + PAD) + PAD + 24
            y = HEADER_HEIGHT + r * (32 + PAD) + PAD + 16
            expected = (235, 235, 235) if (r, c) == (2, 1) else colours[(r, c)]
            assert grid.getpixel((x, y)) == expected
    # the labels are drawn: the label column is not blank
    assert grid.crop((0, HEADER_HEIGHT, LABEL_WIDTH, grid.height)).getextrema() != ((255, 255),) * 3


def test_long_row_labels_widen_the_label_column_up_to_a_cap(tmp_path: Path) -> None:
    path = tmp_path / "c.png"
    Image.new("RGB", (16, 16), (1, 2, 3)).save(path)
    long = "run_replay (replay), run_seq (sequential) · stage 2 epoch 12 (final)"
    grid = compose_grid([[path], [path]], ["base model", long], ["seed 1"], "alice")
    left = grid.width - (16 + PAD) - PAD
    assert LABEL_WIDTH < left <= MAX_LABEL_WIDTH
    assert grid.getpixel((left + PAD + 8, HEADER_HEIGHT + PAD + 8)) == (1, 2, 3)  # the cell moved right with it
    huge = compose_grid([[path]], ["x" * 400], ["seed 1"], "alice")
    assert huge.width - (16 + PAD) - PAD == MAX_LABEL_WIDTH
