"""`prepare --segment` (dataset/segment.py): masks from the optional segmenter for the scene images that have no
alpha channel and no --masks file, only when the package, onnxruntime and the model are already here (offline),
run in a child with HF_HUB_OFFLINE=1, written once into the run directory and reused."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_identity import cache_files
from test_prepare_command import _figures  # opaque ellipses on grey (90, 90, 90), two per character

from kohya_1to2.cli import main
from kohya_1to2.dataset import segment
from kohya_1to2.dataset.masks import MaskRef, find_masks, mask_file_for, to_segment
from kohya_1to2.dataset.scan import scan_sources
from kohya_1to2.models import SourceSettings

FAKE_SEGMENTER = '''
import os
import numpy as np

def get_isnetis_mask(image, scale=1024):
    """A stand-in for isnetis: 0.9 where the pixel is not the grey background, 0.2 at its edge rows (below the
    threshold), 0 elsewhere; (H, W, 1) as imgutils' older releases return it."""
    assert os.environ.get("HF_HUB_OFFLINE") == "1", "the model must run offline"
    if os.environ.get("FAKE_SEGMENT_FAIL"):
        raise RuntimeError("the model broke")
    pixels = np.asarray(image, dtype=np.int16)
    mask = np.where(np.abs(pixels - 90).sum(axis=2) > 0, 0.9, 0.0).astype(np.float32)
    mask[0, :] = 0.2
    return mask[..., None]
'''


@pytest.fixture
def segmenter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The extra installed (a fake imgutils.segment, an empty onnxruntime) and isnetis.onnx in a local HF cache,
    for this process (find_spec) and the child (PYTHONPATH, HF_HUB_CACHE)."""
    site = tmp_path / "site"
    (site / "imgutils" / "segment").mkdir(parents=True)
    (site / "imgutils" / "__init__.py").write_text("")
    (site / "imgutils" / "segment" / "__init__.py").write_text(FAKE_SEGMENTER)
    (site / "onnxruntime").mkdir()
    (site / "onnxruntime" / "__init__.py").write_text("")
    cache_files(tmp_path / "hub", segment.MODEL_FILES)
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("PYTHONPATH", str(site))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    for name in ("imgutils", "imgutils.segment", "onnxruntime"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    return site


def argv(src: Path, out: Path) -> list[str]:
    return ["prepare", str(src), "--out", str(out), "--composite-style", "scene", "--segment", "--workers", "1"]


def test_without_the_extra_segment_is_a_one_line_setup_error_and_nothing_is_written(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "imgutils", None)  # find_spec finds nothing
    src = _figures(tmp_path / "src", ("alice", "bob"), alpha=False)
    assert main(argv(src, tmp_path / "run")) == 5
    err = capsys.readouterr().err
    assert "--segment: the segmenter cannot run: dghs-imgutils is not installed (pip install '.[segment]')" in \
        " ".join(err.split()) and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_without_the_model_in_the_cache_nothing_is_downloaded(tmp_path: Path, segmenter: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    why = segment.unavailable()
    assert why is not None and "skytnt/anime-seg/isnetis.onnx" in why and "nothing is downloaded" in why


def test_segmented_masks_are_written_once_used_as_the_scene_alpha_and_reused(
        tmp_path: Path, segmenter: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src, out = _figures(tmp_path / "src", ("alice", "bob"), alpha=False), tmp_path / "run"
    characters = scan_sources(SourceSettings(roots=[src])).characters
    assert main(argv(src, out)) == 0
    assert "masks: 4 to segment with imgutils isnetis (skytnt/anime-seg) (--segment)" in capsys.readouterr().out
    for image in (i for c in characters for i in c.images):
        mask_path = mask_file_for(image, out / "masks")
        with Image.open(image.path) as source, Image.open(mask_path) as mask:
            expected = np.where(np.abs(np.asarray(source, dtype=np.int16) - 90).sum(axis=2) > 0, 255, 0)
            expected[0, :] = 0  # 0.2: under the threshold
            assert mask.mode == "L" and (np.asarray(mask) == expected).all(), mask_path
    found, missing = find_masks(characters, None, out / "masks")
    assert not missing and all(ref.kind == "segmented" for ref in found.values())
    for composite in sorted((out / "composites").rglob("*.png")):
        with Image.open(composite) as picture:
            assert picture.mode == "RGBA" and picture.getchannel("A").getextrema() == (0, 255)
    assert "masks/" not in (out / "stage2.dataset.toml").read_text(), "masks are never a training subset"
    mtimes = {p: p.stat().st_mtime_ns for p in (out / "masks").rglob("*.png")}
    assert main(argv(src, out)) == 0
    assert "masks: 4 segmented earlier by imgutils isnetis" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes, "reused, not segmented again"


def test_alpha_and_mask_files_come_first_and_only_the_rest_is_segmented(tmp_path: Path, segmenter: Path) -> None:
    src = _figures(tmp_path / "src", ("alice", "bob"), alpha=False)
    first = src / "1_alice" / "alice_0.png"
    with Image.open(first) as opened:
        rgba = opened.convert("RGBA")
    rgba.putalpha(Image.eval(rgba.convert("L"), lambda v: 0 if v == 90 else 255))  # transparent background
    rgba.save(first)
    characters = scan_sources(SourceSettings(roots=[src])).characters
    jobs = to_segment(characters, None, tmp_path / "seg")
    assert sorted(image.name for image, _ in jobs) == ["alice_1.png", "bob_0.png", "bob_1.png"]
    segment.segment_images(jobs)
    found, missing = find_masks(characters, None, tmp_path / "seg")
    assert found[first] == MaskRef("alpha", first) and not missing


def test_a_failing_model_names_the_image_it_stopped_at(tmp_path: Path, segmenter: Path,
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("FAKE_SEGMENT_FAIL", "1")
    src = _figures(tmp_path / "src", ("alice", "bob"), alpha=False)
    assert main(argv(src, tmp_path / "run")) == 3
    err = " ".join(capsys.readouterr().err.split())
    assert "--segment: the segmenter failed at" in err and "alice_0.png: RuntimeError: the model broke" in err
    assert not list((tmp_path / "run").glob("composites/*/*.png")), "no scene without its masks"
