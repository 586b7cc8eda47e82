"""Helpers of the end-to-end tests: the bundled example trained with the smoke preset on the tiny model, through
the real CLI (real pinned sd-scripts, real LyCORIS, CPU)."""

from __future__ import annotations

import fcntl
import importlib.util
import json
import os
import re
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from kohya_1to2.environment.tiny_model import is_complete
from kohya_1to2.environment.vendor import default_sd_scripts, pin_mismatches, repo_root

EXAMPLE = repo_root() / "examples" / "dataset"
TINY_MODEL = repo_root() / ".cache" / "tiny-model"

EVAL_SMOKE = ("--seeds", "1", "--steps", "2", "--singles", "1", "--pairs", "1", "--epochs", "all")
"""demo's evaluation on the tiny model (1 seed, 2 steps, one single and one pair per row), every final-stage epoch."""


def missing_requirement() -> str | None:
    sd = default_sd_scripts()
    if not (sd / "train_network.py").is_file():
        return f"sd-scripts not set up at {sd} (run ./bootstrap.sh)"
    if pin_mismatches(sd):
        return f"sd-scripts at {sd} is not the pin (run python -m kohya_1to2 setup)"
    for module in ("torch", "diffusers", "transformers", "accelerate", "lycoris", "open_clip"):
        if importlib.util.find_spec(module) is None:
            return f"{module} not installed (run ./bootstrap.sh)"
    return None


def cli(*args: str, timeout: float = 1500) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kohya_1to2", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=repo_root())


def require_tiny_model() -> Path:
    """Skip without the training stack; build the tiny model once (every smoke run shares it)."""
    if reason := missing_requirement():
        pytest.skip(reason)
    TINY_MODEL.parent.mkdir(parents=True, exist_ok=True)
    # pytest-xdist workers may ask at once: one builds, the others wait for it
    with (TINY_MODEL.parent / "tiny-model.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not is_complete(TINY_MODEL):
            built = cli("make-tiny-model", str(TINY_MODEL), timeout=600)
            assert built.returncode == 0, built.stderr[-3000:]
    return TINY_MODEL


def prepare_smoke(run: Path, *flags: str) -> str:
    """`prepare` the bundled example into `run` (smoke preset, tiny model); returns its output."""
    prepared = cli("prepare", str(EXAMPLE), "--out", str(run), "--preset", "smoke", "--base-model",
                   str(require_tiny_model()), *flags)
    assert prepared.returncode == 0, prepared.stdout[-3000:] + prepared.stderr[-3000:]
    return prepared.stdout


def set_key(toml_path: Path, key: str, line: str) -> None:
    """Replace the line assigning `key` (the user's hand edit, as in an editor)."""
    text = toml_path.read_text(encoding="utf-8")
    text, count = re.subn(rf"(?m)^{re.escape(key)} = .*$", lambda _: line, text)
    assert count == 1, f"{toml_path.name} sets {key} once"
    toml_path.write_text(text, encoding="utf-8")


def safetensors_header(path: Path) -> dict[str, Any]:
    """The JSON header of a .safetensors file (tensor names, dtypes, offsets, __metadata__), no torch."""
    with path.open("rb") as fh:
        (size,) = struct.unpack("<Q", fh.read(8))
        header: dict[str, Any] = json.loads(fh.read(size))
    return header


def tensor_bytes(path: Path) -> dict[str, bytes]:
    header = safetensors_header(path)
    data = path.read_bytes()
    start = 8 + struct.unpack("<Q", data[:8])[0]
    return {name: data[start + info["data_offsets"][0]: start + info["data_offsets"][1]]
            for name, info in header.items() if name != "__metadata__"}


def processes_of(run: Path) -> list[int]:
    """Live processes whose command line names the run directory (accelerate, the trainer, its loader workers)."""
    needle = os.fsencode(str(run))
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            if state != "Z" and needle in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except (OSError, IndexError):
            continue
    return found


def complete_state(folder: Path) -> Path | None:
    """A state folder accelerate has finished writing (its random states come last), if any."""
    done = [p for p in folder.glob("*-state") if (p / "train_state.json").is_file()
            and list(p.glob("random_states_*.pkl"))]
    return max(done, key=lambda p: p.stat().st_mtime) if done else None
