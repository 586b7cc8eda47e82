"""`joint` mode with `--reg` really trains, and survives `kill -9`: bundled example -> `prepare --mode joint --reg`
(smoke preset, tiny model) -> `launch` killed with SIGKILL after a saved state -> nothing of it left
running -> `launch --resume` finishes the stage from that state. Then `evaluate` compares the joint run with the
sequential one (`trained_run`). Real sd-scripts and LyCORIS on CPU; the runs are trained once (conftest.py)."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path
from typing import Any

import pytest
from smoke_runs import EVAL_SMOKE, cli, safetensors_header

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _pixels(path: Path) -> bytes:
    from PIL import Image

    with Image.open(path) as image:
        return image.convert("RGB").tobytes()


def test_kill_9_of_launch_leaves_nothing_running_and_the_next_launch_says_what_happened(
        killed_joint_run: dict[str, Any]) -> None:
    assert killed_joint_run["trainers"], "the trainer ran under the run directory before the kill"
    assert killed_joint_run["left"] == [], "processes of the run outlived launch by 5 s"
    assert killed_joint_run["holder"] is None, "the run directory's lock is still held 5 s after the kill"
    assert not killed_joint_run["final_before_resume"], "killed before the end: no final weights"
    after = killed_joint_run["after_kill"]
    assert after.returncode == 0, after.stderr[-3000:]
    said = " ".join(after.stdout.split())
    assert "was interrupted" in said and "`--resume` continues from its saved state" in said, said[-2000:]


def test_resume_continues_the_killed_stage_from_its_newest_saved_state(killed_joint_run: dict[str, Any]) -> None:
    run, resumed = killed_joint_run["run"], killed_joint_run["resumed"]
    assert "resuming from" in resumed.stdout and killed_joint_run["state"].name in resumed.stdout
    log = (run / "logs" / "stage1.log").read_text(encoding="utf-8", errors="replace")
    compact = re.sub(r"\s+", "", log)  # sd-scripts' rich log wraps its messages over several lines
    assert "resumetrainingfromlocal" in compact and "loadtrainstatefrom" in compact
    assert f"'current_step':{killed_joint_run['saved_step']}" in compact
    assert (run / "output" / "stage1" / "1to2.safetensors").is_file()
    again = cli("launch", str(run), timeout=120)
    assert again.returncode == 0 and "stage 1: skipped" in again.stdout, again.stdout[-2000:]


def test_joint_trains_one_loha_on_singles_composites_and_reg_images(killed_joint_run: dict[str, Any]) -> None:
    run = killed_joint_run["run"]
    assert not (run / "stage2.train.toml").exists() and not (run / "output" / "stage2").exists()
    header = safetensors_header(run / "output" / "stage1" / "1to2.safetensors")
    names = [n for n in header if n != "__metadata__"]
    assert names and all(".hada_w" in n or n.endswith(".alpha") for n in names)
    meta = header["__metadata__"]
    assert meta["ss_network_module"] == "lycoris.kohya" and int(meta["ss_num_reg_images"]) == 2
    log = (run / "logs" / "stage1.log").read_text(encoding="utf-8")
    assert "composites/" in log and "1_person" in log, "both blocks and the reg class were loaded"
    assert "is_reg: True" in log
    # the scene composites' block is read with its alpha masks: apply_masked_loss weights their loss
    compact = re.sub(r"\s+", "", log)  # sd-scripts' rich log wraps its messages over several lines
    composite_subset = compact[compact.rindex("composites/"):]  # its entry in the dataset listing
    assert composite_subset.split("alpha_mask:")[1].startswith("True"), "the composite subset has alpha_mask"
    assert compact.count("alpha_mask:True") == 1, "and only it: singles and reg images train everywhere"


def test_evaluate_compares_the_joint_and_sequential_runs_in_one_grid(killed_joint_run: dict[str, Any],
                                                                     evaluated_run: dict[str, Any]) -> None:
    joint, sequential = killed_joint_run["run"], evaluated_run["run"]
    done = cli("evaluate", str(joint), str(sequential), *EVAL_SMOKE)
    assert done.returncode == 0, done.stdout[-5000:] + done.stderr[-3000:]
    said = " ".join(done.stdout.split())
    assert f"{sequential.name}: 0 image(s) generated" in said, "the evaluated run's images are reused"
    summary = json.loads((joint / "eval" / "compare" / "comparison.json").read_text(encoding="utf-8"))
    labels = [row["label"] for row in summary["rows"]]
    assert labels[0] == "base model" and labels.count("base model") == 1, labels  # the shared base row once
    assert any(label.endswith("joint epoch 1 (final)") for label in labels), labels
    assert any("(sequential)" in label and "stage 1 final" in label for label in labels), labels
    assert any("(sequential)" in label and "stage 2 epoch" in label for label in labels), labels
    for grid in summary["grids"].values():
        assert (joint / grid).is_file()
    # the joint run generated its own base-model images: the same base model, prompts and seeds as the
    # sequential run's, so the same pixels (what lets the comparison show one base row)
    own = json.loads((joint / "eval" / "evaluation.json").read_text(encoding="utf-8"))["images"]["base"]
    theirs = evaluated_run["summary"]["images"]["base"]
    assert own.keys() == theirs.keys() and all(
        _pixels(joint / own[name]) == _pixels(sequential / theirs[name]) for name in own)
    page = (joint / "report.html").read_text(encoding="utf-8")
    assert '<section id="comparison">' in page and html.escape(f"{sequential.name} (sequential)") in page
