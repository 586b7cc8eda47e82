"""`joint` (with `--reg`) and `replay` really train: bundled example -> `prepare --mode ...` (smoke preset, tiny
model, one step per stage, no sampling) -> `launch` on CPU, real sd-scripts and LyCORIS; the stage chaining is
checked as in test_e2e.py."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from conftest import write_image
from test_e2e import EXAMPLE, TINY_MODEL, cli, missing_requirement, safetensors_header, tensor_bytes

from kohya_1to2.environment.tiny_model import is_complete
from kohya_1to2.kohya import parse_weights_report

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _one_step(toml_path: Path) -> None:
    """A hand edit, as a user would make: one training step keeps the CPU run short."""
    text = toml_path.read_text(encoding="utf-8")
    text, count = re.subn(r"(?m)^max_train_steps = \d+$", "max_train_steps = 1", text)
    assert count == 1, "the smoke preset sets max_train_steps"
    toml_path.write_text(text, encoding="utf-8")


def _train(tmp_path: Path, name: str, *flags: str) -> dict[str, Any]:
    if reason := missing_requirement():
        pytest.skip(reason)
    if not is_complete(TINY_MODEL):
        built = cli("make-tiny-model", str(TINY_MODEL), timeout=600)
        assert built.returncode == 0, built.stderr[-3000:]
    run = tmp_path / name
    prepared = cli("prepare", str(EXAMPLE), "--out", str(run), "--preset", "smoke", "--base-model",
                   str(TINY_MODEL), "--no-sample", *flags)
    assert prepared.returncode == 0, prepared.stdout[-3000:] + prepared.stderr[-3000:]
    for toml_path in sorted(run.glob("stage*.train.toml")):
        _one_step(toml_path)
    launched = cli("launch", str(run))
    assert launched.returncode == 0, launched.stdout[-5000:] + launched.stderr[-3000:]
    return {"run": run, "prepare": prepared.stdout, "launch": launched.stdout}


@pytest.fixture(scope="module")
def joint_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("joint")
    for i in range(2):  # class images without captions: sd-scripts captions them with the class token
        write_image(tmp / "reg" / "1_person" / f"p{i}.png", size=(256, 256))
    return _train(tmp, "run joint", "--mode", "joint", "--reg", str(tmp / "reg"))


@pytest.fixture(scope="module")
def replay_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return _train(tmp_path_factory.mktemp("replay"), "run replay", "--mode", "replay")


def test_joint_trains_one_loha_on_singles_composites_and_reg_images(joint_run: dict[str, Any]) -> None:
    run = joint_run["run"]
    assert not (run / "stage2.train.toml").exists() and not (run / "output" / "stage2").exists()
    final = run / "output" / "stage1" / "1to2.safetensors"
    header = safetensors_header(final)
    names = [n for n in header if n != "__metadata__"]
    assert names and all(".hada_w" in n or n.endswith(".alpha") for n in names)
    meta = header["__metadata__"]
    assert meta["ss_network_module"] == "lycoris.kohya" and int(meta["ss_num_reg_images"]) == 2
    log = (run / "logs" / "stage1.log").read_text(encoding="utf-8")
    assert "composites/" in log and "1_person" in log, "both blocks and the reg class were loaded"
    assert "is_reg: True" in log
    again = cli("launch", str(run))
    assert again.returncode == 0 and "stage 1: skipped" in again.stdout, again.stdout[-2000:]


def test_replay_stage_2_continues_stage_1_on_composites_and_replayed_singles(replay_run: dict[str, Any]) -> None:
    run = replay_run["run"]
    one = run / "output" / "stage1" / "1to2_stage1.safetensors"
    two = run / "output" / "stage2" / "1to2.safetensors"
    log = (run / "logs" / "stage2.log").read_text(encoding="utf-8")
    report = parse_weights_report(log)
    assert report is not None and report.clean and Path(report.file) == one
    first, second = tensor_bytes(one), tensor_bytes(two)
    assert first.keys() == second.keys() and any(first[k] != second[k] for k in first)
    replayed = sorted(p.name for p in (run / "replay").iterdir())
    assert replayed == ["akari", "bluebell", "clover"]
    assert all(f"replay/{name}" in log.replace("\n", "").replace(" ", "") for name in replayed)
    said = " ".join(replay_run["prepare"].split())  # rich wraps at 80 columns in a pipe
    assert "of stage 2's images per epoch (--replay-share 0.25)" in said


def test_evaluate_compares_the_joint_and_replay_runs_in_one_grid(joint_run: dict[str, Any],
                                                                  replay_run: dict[str, Any]) -> None:
    joint, replay = joint_run["run"], replay_run["run"]
    done = cli("evaluate", str(joint), str(replay), "--seeds", "1", "--steps", "2", "--singles", "1", "--pairs", "1")
    assert done.returncode == 0, done.stdout[-5000:] + done.stderr[-3000:]
    summary = json.loads((joint / "eval" / "compare" / "comparison.json").read_text(encoding="utf-8"))
    labels = [row["label"] for row in summary["rows"]]
    assert labels[0] == "base model" and len(labels) == 4, labels  # the shared base row once
    assert any(label.endswith("joint epoch 1 (final)") for label in labels)
    assert any("(replay)" in label and "stage 1 final" in label for label in labels)
    assert any("(replay)" in label and "stage 2 epoch 1 (final)" in label for label in labels)
    for grid in summary["grids"].values():
        assert (joint / grid).is_file()
    page = (joint / "report.html").read_text(encoding="utf-8")
    assert '<section id="comparison">' in page and "run replay (replay)" in page
