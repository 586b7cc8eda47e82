"""Mask sources of scene composites: the image's alpha first, then the --masks tree; none is an error."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

from kohya_1to2.dataset.masks import (
    MaskRef,
    find_masks,
    load_mask,
    mask_file_for,
    mask_summary,
    masks_in_character_folders,
    require_masks,
)
from kohya_1to2.dataset.scan import scan_sources
from kohya_1to2.errors import DatasetError
from kohya_1to2.models import Character, SourceSettings


def characters(root: Path) -> list[Character]:
    return scan_sources(SourceSettings(roots=[root])).characters


def with_alpha(path: Path) -> None:
    image = Image.open(path).convert("RGBA")
    image.putalpha(Image.new("L", image.size, 0))
    image.paste(Image.new("RGBA", (10, 10), (9, 9, 9, 255)), (5, 5))
    image.save(path)


def test_alpha_first_then_the_mask_tree_and_the_rest_named(kohya_dataset: Callable[..., Path], tmp_path: Path) -> None:
    root = kohya_dataset({"alice": 2, "bob": 2})
    with_alpha(root / "1_alice" / "alice_00.png")
    masks = tmp_path / "masks"
    (masks / "1_bob").mkdir(parents=True)
    bob_01 = next(i for c in characters(root) for i in c.images if i.path.name == "bob_01.png")
    Image.new("L", (96, 128), 255).save(mask_file_for(bob_01, masks))
    found, missing = find_masks(characters(root), masks)
    assert found[root / "1_alice" / "alice_00.png"] == MaskRef("alpha", root / "1_alice" / "alice_00.png")
    assert found[root / "1_bob" / "bob_01.png"] == MaskRef("file", masks / "1_bob" / "bob_01.png")
    assert sorted(p.name for p in missing) == ["alice_01.png", "bob_00.png"]
    with pytest.raises(DatasetError, match=r"2 image\(s\) have no alpha channel.*1_alice/alice_01.png") as caught:
        require_masks(characters(root), masks)
    assert caught.value.exit_code == 3 and "--masks DIR" in (caught.value.hint or "")
    assert mask_summary(found) == "masks: 1 from the images' alpha channel, 1 from --masks files"


def test_a_missing_masks_folder_is_a_one_line_error(kohya_dataset: Callable[..., Path], tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no such folder"):
        require_masks(characters(kohya_dataset({"alice": 1, "bob": 1})), tmp_path / "nope")


def test_mask_files_among_the_images_are_found(kohya_dataset: Callable[..., Path]) -> None:
    root = kohya_dataset({"alice": 1, "bob": 1})
    Image.new("RGB", (8, 8)).save(root / "1_alice" / "alice_00_mask.png")
    (root / "1_alice" / "alice_00_mask.txt").write_text("alice, x\n")
    assert [p.name for p in masks_in_character_folders(characters(root))] == ["alice_00_mask.png"]


def test_load_mask_follows_the_shrunk_source_and_refuses_another_size(tmp_path: Path) -> None:
    path = tmp_path / "m.png"
    Image.new("L", (200, 100), 255).save(path)
    assert load_mask(MaskRef("file", path), (200, 100), (100, 50)).size == (100, 50)
    with pytest.raises(DatasetError, match="200x100, its image 300x100"):
        load_mask(MaskRef("file", path), (300, 100), (300, 100))
    rgba = tmp_path / "a.png"
    image = Image.new("RGBA", (4, 4), (1, 2, 3, 0))
    image.putpixel((1, 1), (1, 2, 3, 200))
    image.save(rgba)
    alpha = load_mask(MaskRef("alpha", rgba), (4, 4), (4, 4))
    assert alpha.mode == "L" and alpha.getpixel((1, 1)) == 200 and alpha.getpixel((0, 0)) == 0
