"""Identity scores: the pure scoring, the offline availability check, and the child process that runs the models."""

from __future__ import annotations

import socket
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from kohya_1to2.evaluate import identity
from kohya_1to2.evaluate.identity import (
    Availability,
    Figure,
    ScoredImage,
    both_present,
    check_availability,
    identity_records,
    is_clone,
    recognised,
    row_identity,
)
from kohya_1to2.evaluate.prompts import EvalPrompt, image_name
from kohya_1to2.evaluate.rows import Row
from kohya_1to2.models import Character, SourceImage

THRESHOLD = 0.2


def figure(confidence: float, **differences: float | tuple[float, ...]) -> Figure:
    return Figure(confidence=confidence, differences={
        c: d if isinstance(d, tuple) else (d,) for c, d in differences.items()})


def pair(row: str, *figures: Figure) -> ScoredImage:
    return ScoredImage(row=row, kind="pair", characters=("alice", "bob"), figures=figures)


# --- pure scoring ---------------------------------------------------------------------------------------------

def test_a_figures_difference_is_the_mean_over_the_sources_and_its_closest_character_the_least() -> None:
    f = figure(0.9, alice=(0.1, 0.3), bob=(0.15, 0.15))
    assert f.difference("alice") == pytest.approx(0.2)
    assert f.closest() == "bob"


def test_a_figure_is_recognised_only_within_the_threshold() -> None:
    assert recognised(figure(0.9, alice=0.1, bob=0.5), THRESHOLD) == "alice"
    assert recognised(figure(0.9, alice=0.3, bob=0.5), THRESHOLD) is None  # closest, but not the same character


def test_both_present_needs_every_named_character_recognised() -> None:
    a, b = figure(0.9, alice=0.1, bob=0.5), figure(0.8, alice=0.5, bob=0.1)
    assert both_present(pair("r", a, b), THRESHOLD)
    assert not both_present(pair("r", a, a), THRESHOLD)
    assert not both_present(pair("r", a, figure(0.8, alice=0.5, bob=0.3)), THRESHOLD)  # bob too far
    assert not both_present(pair("r"), THRESHOLD)


def test_a_clone_is_two_most_confident_figures_closest_to_one_character() -> None:
    a, b = figure(0.9, alice=0.1, bob=0.5), figure(0.8, alice=0.5, bob=0.1)
    a_far = figure(0.7, alice=0.35, bob=0.6)  # closest to alice though not recognised: still a clone
    assert is_clone(pair("r", a, a_far))
    assert not is_clone(pair("r", a, b))
    assert not is_clone(pair("r", a))
    assert not is_clone(pair("r", a, b, figure(0.1, alice=0.1, bob=0.9)))  # a third, less confident figure


def test_row_identity_rates_over_pair_images_and_similarity_per_character() -> None:
    a, b = figure(0.9, alice=0.1, bob=0.5), figure(0.8, alice=0.5, bob=0.3)
    images = [
        pair("r", a, b),  # alice recognised, bob not: neither both-present nor a clone
        pair("r", a, figure(0.8, alice=0.4, bob=0.1)),  # both present
        pair("r", a, a),  # clone
        pair("r"),  # nothing detected: counts as neither
        ScoredImage(row="r", kind="single", characters=("alice",), figures=(figure(0.9, alice=0.3, bob=0.6),)),
        pair("other", a, a),
    ]
    scores = row_identity("r", images, ["alice", "bob"], THRESHOLD)
    assert (scores.images, scores.pair_images, scores.figures) == (5, 4, 7)
    assert scores.both_present_rate == 0.25 and scores.clone_rate == 0.25
    # alice: best figure per image naming her: 0.9, 0.9, 0.9 (pairs with figures), 0.7 (the single)
    assert scores.similarity["alice"] == pytest.approx((0.9 * 3 + 0.7) / 4)
    # bob: best figure per pair with figures: 1-0.3, 1-0.1, 1-0.5
    assert scores.similarity["bob"] == pytest.approx((0.7 + 0.9 + 0.5) / 3)


def test_a_row_without_pair_images_has_no_rates_and_unseen_characters_no_similarity() -> None:
    single = ScoredImage(row="r", kind="single", characters=("alice",), figures=())
    scores = row_identity("r", [single], ["alice", "bob"], THRESHOLD)
    assert scores.both_present_rate is None and scores.clone_rate is None
    assert scores.similarity == {"alice": None, "bob": None}


# --- availability, offline -------------------------------------------------------------------------------------

@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_args: Any, **_kwargs: Any) -> None:
        raise AssertionError("the availability check tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


@pytest.fixture
def installed_imgutils(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Importable `imgutils` and `onnxruntime` (empty): what the check sees when the extra is installed."""
    root = tmp_path / "site"
    (root / "imgutils").mkdir(parents=True)
    (root / "imgutils" / "__init__.py").write_text("")
    (root / "onnxruntime").mkdir()
    (root / "onnxruntime" / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(root))
    for name in ("imgutils", "onnxruntime"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    return root


def cache_files(cache: Path, files: tuple[tuple[str, str], ...]) -> None:
    """Files laid out as huggingface_hub's cache holds them (refs/main -> snapshots/<commit>/<path>)."""
    commit = "0" * 40
    for repo, filename in files:
        folder = cache / f"models--{repo.replace('/', '--')}"
        (folder / "refs").mkdir(parents=True, exist_ok=True)
        (folder / "refs" / "main").write_text(commit)
        path = folder / "snapshots" / commit / filename
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"model")


def test_without_the_package_identity_is_unavailable(monkeypatch: pytest.MonkeyPatch, no_network: None) -> None:
    monkeypatch.setitem(sys.modules, "imgutils", None)  # import imgutils fails, find_spec finds nothing
    found = check_availability()
    assert not found.available and "not installed" in found.reason


def test_the_package_without_onnxruntime_is_unavailable(tmp_path: Path, installed_imgutils: Path,
                                                        monkeypatch: pytest.MonkeyPatch, no_network: None) -> None:
    cache_files(tmp_path / "hub", identity.MODEL_FILES)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # imgutils would pip-install it on import
    found = check_availability(tmp_path / "hub")
    assert not found.available and "onnxruntime is not" in found.reason


def test_the_package_without_cached_models_is_unavailable_offline(tmp_path: Path, installed_imgutils: Path,
                                                                   no_network: None) -> None:
    cache_files(tmp_path / "hub", identity.MODEL_FILES[:2])
    found = check_availability(tmp_path / "hub")
    assert not found.available and "not in the local Hugging Face cache" in found.reason
    for repo, filename in identity.MODEL_FILES[2:]:
        assert f"{repo}/{filename}" in found.reason
    assert identity.MODEL_FILES[0][1] not in found.reason


def test_the_package_with_every_model_cached_is_available(tmp_path: Path, installed_imgutils: Path,
                                                          no_network: None) -> None:
    cache_files(tmp_path / "hub", identity.MODEL_FILES)
    found = check_availability(tmp_path / "hub")
    assert found.available and identity.CCIP_MODEL in found.reason and identity.PERSON_MODEL in found.reason


# --- records: never a number without a measurement ---------------------------------------------------------------

ROWS = [Row(id="base", label="base model"), Row(id="s2e1", label="stage 2 epoch 1", stage=2, epoch=1)]
PROMPTS = [EvalPrompt(id="pair_red_blue", kind="pair", text="red, blue", width=64, height=32,
                      characters=("red", "blue")),
           EvalPrompt(id="single_red", kind="single", text="red", width=32, height=32, characters=("red",))]
SEEDS = [1, 2]


def characters(tmp_path: Path) -> list[Character]:
    out = []
    for name, colour in (("red", (255, 0, 0)), ("blue", (0, 0, 255))):
        folder = tmp_path / "sources" / f"1_{name}"
        folder.mkdir(parents=True)
        images = []
        for i in range(2):
            path = folder / f"{i}.png"
            Image.new("RGB", (32, 32), colour).save(path)
            images.append(SourceImage(path=path, character=name, tags=(name,)))
        out.append(Character(name=name, trigger=name, repeats=1, folder=folder, images=tuple(images)))
    return out


def generated(tmp_path: Path) -> Path:
    """base: every pair image is a red/blue scene; s2e1: every pair image is red twice (a clone)."""
    images = tmp_path / "eval" / "images"
    for row, right in (("base", (0, 0, 255)), ("s2e1", (255, 0, 0))):
        (images / row).mkdir(parents=True)
        for seed in SEEDS:
            scene = Image.new("RGB", (64, 32), (255, 0, 0))
            scene.paste(Image.new("RGB", (32, 32), right), (32, 0))
            scene.save(images / row / image_name(PROMPTS[0], seed))
            Image.new("RGB", (32, 32), (255, 0, 0)).save(images / row / image_name(PROMPTS[1], seed))
    return images


def test_unavailable_gives_the_reason_and_no_number(tmp_path: Path) -> None:
    def measure(*_args: Any) -> Any:
        raise AssertionError("nothing may run when identity is unavailable")

    records = identity_records(ROWS, PROMPTS, SEEDS, characters(tmp_path), generated(tmp_path),
                               availability=Availability(available=False, reason="identity scores unavailable: x"),
                               measure=measure)
    assert [r.model_dump() for r in records] == [
        {"metric": "identity", "available": False, "status": "identity scores unavailable: x", "run": None}]


def test_models_that_fail_give_the_reason_and_no_number(tmp_path: Path) -> None:
    def measure(*_args: Any) -> Any:
        raise RuntimeError("onnxruntime: bad model")

    records = identity_records(ROWS, PROMPTS, SEEDS, characters(tmp_path), generated(tmp_path),
                               availability=Availability(available=True, reason="ok"), measure=measure)
    [record] = records
    assert record.available is False and "onnxruntime: bad model" in record.status


FAKE_IMGUTILS = '''
"""A stand-in for dghs-imgutils' four pinned functions: figures are image halves, a feature is the mean colour."""
import os
import numpy as np
from PIL import Image

assert os.environ.get("HF_HUB_OFFLINE") == "1", "the models must run offline"

def _image(x):
    return (x if isinstance(x, Image.Image) else Image.open(x)).convert("RGB")

def detect_person(image, level="m", version="v1.1", **kwargs):
    w, h = image.size
    if w <= h:
        return [((0, 0, w, h), "person", 0.9)]
    return [((0, 0, w // 2, h), "person", 0.9), ((w // 2, 0, w, h), "person", 0.8)]

def ccip_batch_extract_features(images, size=384, model="m"):
    return np.stack([np.asarray(_image(i), dtype=np.float32).mean(axis=(0, 1)) / 255.0 for i in images])

def ccip_batch_differences(images, size=384, model="m"):
    x = np.stack(images)
    return np.sqrt(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)) / np.sqrt(3.0)

def ccip_default_threshold(model="m"):
    return 0.1
'''


def test_the_models_run_offline_in_a_child_and_give_rates_per_row(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "fake" / "imgutils"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    for module in ("detect", "metrics"):
        (package / f"{module}.py").write_text(textwrap.dedent(FAKE_IMGUTILS))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "fake"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    records = identity_records(ROWS, PROMPTS, SEEDS, characters(tmp_path), generated(tmp_path),
                               availability=Availability(available=True, reason="identity scores: fake"))
    status, base, clone = (r.model_dump(exclude={"run"}) for r in records)
    assert status == {"metric": "identity", "available": True, "status": "identity scores: fake (0.1)"}
    assert (base["metric"], base["row"], clone["row"]) == ("identity_scores", "base", "s2e1")
    assert (base["pair_images"], base["both_present_rate"], base["clone_rate"]) == (2, 1.0, 0.0)
    assert (clone["pair_images"], clone["both_present_rate"], clone["clone_rate"]) == (2, 0.0, 1.0)
    assert base["similarity"] == {"red": 1.0, "blue": 1.0}  # a figure identical in colour to each
    assert clone["similarity"]["red"] == 1.0 and clone["similarity"]["blue"] < 0.5
    assert base["images"] == 4 and base["figures"] == 6 and base["ccip_threshold"] == 0.1
