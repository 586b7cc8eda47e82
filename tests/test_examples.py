"""The bundled example is what tools/make_example.py draws, and a valid 3-character kohya dataset."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from PIL import Image, ImageChops

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "dataset"


def load_tool():
    spec = importlib.util.spec_from_file_location("make_example", REPO / "tools" / "make_example.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_committed_example_matches_the_generator(tmp_path):
    load_tool().write_example(tmp_path)
    generated = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    committed = sorted(p.relative_to(EXAMPLE) for p in EXAMPLE.rglob("*") if p.is_file())
    assert generated == committed
    for rel in generated:
        if rel.suffix == ".png":
            with Image.open(tmp_path / rel) as new, Image.open(EXAMPLE / rel) as old:
                assert ImageChops.difference(new.convert("RGB"), old.convert("RGB")).getbbox() is None, rel
        else:
            assert (tmp_path / rel).read_text(encoding="utf-8") == (EXAMPLE / rel).read_text(encoding="utf-8")


def test_example_is_small_and_has_three_characters_with_triggers_first():
    folders = sorted(p for p in EXAMPLE.iterdir() if p.is_dir())
    assert len(folders) == 3
    assert sum(p.stat().st_size for p in EXAMPLE.rglob("*") if p.is_file()) < 300_000
    for folder in folders:
        trigger = folder.name.split("_", 1)[1]
        captions = list(folder.glob("*.txt"))
        assert len(captions) == len(list(folder.glob("*.png"))) > 0
        for caption in captions:
            assert caption.read_text(encoding="utf-8").split(",")[0] == trigger


MASKS = REPO / "examples" / "masks"


def test_committed_masks_match_the_generator_and_cover_exactly_each_figure(tmp_path):
    load_tool().write_example(tmp_path / "dataset", tmp_path / "masks")
    generated = sorted(p.relative_to(tmp_path / "masks") for p in (tmp_path / "masks").rglob("*.png"))
    committed = sorted(p.relative_to(MASKS) for p in MASKS.rglob("*.png"))
    images = sorted(p.relative_to(EXAMPLE) for p in EXAMPLE.rglob("*.png"))
    assert generated == committed == images, "one mask per image, mirroring the character folders"
    for rel in committed:
        with Image.open(tmp_path / "masks" / rel) as new, Image.open(MASKS / rel) as old, \
                Image.open(EXAMPLE / rel) as image:
            assert ImageChops.difference(new, old).getbbox() is None, rel
            assert old.mode == "L" and not any(old.histogram()[1:255]), "a mask is black and white only"
            # outside the mask the image is its flat background colour; inside, the figure
            background = image.convert("RGB").getpixel((0, 0))
            outside = Image.new("RGB", image.size, background)
            shown = Image.composite(image.convert("RGB"), outside, old)
            assert ImageChops.difference(shown, image.convert("RGB")).getbbox() is None, rel
