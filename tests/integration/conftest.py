"""The trained smoke runs that several integration tests read: each is trained once per session.

`trained_run`: the method as published (sequential, both stages, sampling on). `evaluated_run`: the same run after
`evaluate`. `killed_joint_run`: joint mode with `--reg`, its `launch` killed with SIGKILL once a state was saved,
then resumed. Tests only read them (a test that changes a run makes its own)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from contextlib import suppress
from pathlib import Path
from typing import Any

import pytest
from sample_images import write_image
from smoke_runs import EVAL_SMOKE, cli, complete_state, prepare_smoke, processes_of, set_key

from kohya_1to2.environment.vendor import repo_root
from kohya_1to2.rundir import RunDir, current_writer

KILL_GONE_S = 5.0
"""Issue 19: after `kill -9` of launch, no process of the run may be alive after this long."""


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    # spaces, quotes and unicode in the run directory: they must survive TOML and argv
    run = tmp_path_factory.mktemp("e2e") / "run 'one' ü"
    prepare_smoke(run)
    # The smoke preset caps sampling at one character alone and one pair: sampling stays on in both stages,
    # at a cost a CPU run can afford.
    prompts = [line.split(" --", 1)[0] for line in (run / "sample_prompts.txt").read_text(encoding="utf-8").splitlines()
               if line and not line.startswith("#")]
    assert len(prompts) == 2 and "/" not in prompts[0] and "/" in prompts[1]
    for stage in (1, 2):  # a hand edit, as a user would make: one step per stage (the preset's 2, less a minute)
        set_key(RunDir(run).train_toml(stage), "max_train_steps", "max_train_steps = 1")
    launched = cli("launch", str(run))
    assert launched.returncode == 0, launched.stdout[-5000:] + launched.stderr[-3000:]
    return {"run": run, "launch": launched}


@pytest.fixture(scope="session")
def evaluated_run(trained_run: dict[str, Any]) -> dict[str, Any]:
    run = trained_run["run"]
    done = cli("evaluate", str(run), *EVAL_SMOKE)
    assert done.returncode == 0, done.stdout[-5000:] + done.stderr[-3000:]
    summary = json.loads((run / "eval" / "evaluation.json").read_text(encoding="utf-8"))
    return {"run": run, "evaluate": done, "summary": summary}


def _wait_gone(run: Path, within: float) -> tuple[list[int], str | None]:
    """Poll until no process of `run` runs and its lock is free, for at most `within` seconds; returns what was
    still there at the end (empty and None: all gone)."""
    deadline = time.monotonic() + within
    while True:
        left, holder = processes_of(run), current_writer(RunDir(run))
        if (not left and holder is None) or time.monotonic() > deadline:
            return left, holder
        time.sleep(0.1)


@pytest.fixture(scope="session")
def killed_joint_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """joint + --reg + scene composites: `launch` is killed (SIGKILL) once the stage saved a state; what was left
    running 5 s later and the next `launch --dry-run` are recorded; then `launch --resume` finishes the stage."""
    tmp = tmp_path_factory.mktemp("joint")
    for i in range(2):  # class images without captions: sd-scripts captions them with the class token
        write_image(tmp / "reg" / "1_person" / f"p{i}.png", size=(256, 256))
    run = tmp / "run joint"
    # sampling stays on, as in `trained_run`: both runs then sample (and evaluate) with the preset's sampler, and
    # their base-model rows are the same images
    # scene composites (issue 20): the joint stage trains them with the masked loss, beside the singles and reg
    prepared = prepare_smoke(run, "--mode", "joint", "--reg", str(tmp / "reg"), "--composite-style", "scene",
                             "--masks", str(repo_root() / "examples" / "masks"))
    train_toml = RunDir(run).train_toml(1)
    # a long stage that saves its state every step, so it can be killed after a state (not a finished stage)
    set_key(train_toml, "max_train_steps", "max_train_steps = 500")
    set_key(train_toml, "save_last_n_epochs_state", "save_last_n_epochs_state = 2\nsave_every_n_steps = 1")
    output = run / "output" / "stage1"
    console = tmp / "launch.out"  # a file, not a pipe: an undrained pipe would stall the training
    with console.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "kohya_1to2", "launch", str(run)], cwd=repo_root(),
                                stdout=out, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 900
        while (state := complete_state(output)) is None and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
        assert state is not None, (proc.poll(), (run / "logs" / "stage1.log").read_text(errors="replace")[-3000:])
        trainers = processes_of(run)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        left, holder = _wait_gone(run, KILL_GONE_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if left:  # clean up for the tests after this one, which then fail on `left`
        for pid in left:
            with suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        _wait_gone(run, 30)
    after_kill = cli("launch", str(run), "--dry-run", timeout=300)
    saved_step = json.loads((state / "train_state.json").read_text())["current_step"]
    final_before_resume = (output / "1to2.safetensors").exists()
    # one more step than the state holds (sd-scripts asserts max_train_steps > the resumed step)
    set_key(train_toml, "max_train_steps", f"max_train_steps = {saved_step + 1}")
    resumed = cli("launch", str(run), "--resume")
    assert resumed.returncode == 0, resumed.stdout[-5000:] + resumed.stderr[-3000:]
    return {"run": run, "prepare": prepared, "trainers": trainers, "left": left, "holder": holder,
            "after_kill": after_kill, "state": state, "saved_step": saved_step,
            "final_before_resume": final_before_resume, "resumed": resumed}
