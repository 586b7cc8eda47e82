"""`demo`: the bundled example end to end: `prepare`, `launch`, then `evaluate` and `report`.

Without a GPU (or without --base-model) it uses the CPU smoke profile on the tiny random-init model, built
once into `.cache/tiny-model/` (in a child process, so this process never imports torch).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path
from typing import Any

from rich.console import Console

from kohya_1to2.environment.tiny_model import is_complete
from kohya_1to2.environment.vendor import repo_root
from kohya_1to2.errors import SetupError, UsageError
from kohya_1to2.launch.substitutions import probe_capabilities
from kohya_1to2.models import CompositeSettings, Job, SourceSettings, TrainingSettings

SMOKE_EVALUATION: dict[str, Any] = {"seeds": 1, "steps": 2, "singles": 1, "pairs": 1}
"""On the tiny CPU model: one seed, 2 sampling steps, one character alone and one pair per row."""


def tiny_model_dir() -> Path:
    return repo_root() / ".cache" / "tiny-model"


def ensure_tiny_model(console: Console) -> Path:
    """Reuse the cached tiny model, or build it in a child Python (it imports torch)."""
    out = tiny_model_dir()
    if is_complete(out):
        console.print(f"tiny model: reusing {out}")
        return out
    proc = subprocess.run([sys.executable, "-m", "kohya_1to2", "make-tiny-model", str(out)])
    if proc.returncode != 0 or not is_complete(out):
        raise SetupError("building the tiny model failed (see the output above)",
                         hint="run `python -m kohya_1to2 doctor` to check the training environment")
    return out


def run(args: argparse.Namespace, console: Console) -> int:
    # the other commands' modules load only when demo runs, not for every command's --help
    from kohya_1to2.commands.evaluate import EvaluateOptions, evaluate_run
    from kohya_1to2.commands.launch import LaunchOptions, launch
    from kohya_1to2.commands.prepare import PrepareOptions, prepare
    from kohya_1to2.commands.report import report

    example = repo_root() / "examples" / "dataset"
    if not example.is_dir():
        raise UsageError(f"bundled example {example} not found", hint="run demo from a clone of kohya-1to2")
    out = args.out.expanduser().resolve()
    cuda = probe_capabilities().cuda
    if args.base_model:
        preset, model = "seed", str(Path(args.base_model).expanduser().resolve())
        if not cuda:
            console.print("warning: no CUDA GPU; the seed preset on a real model is very slow on CPU")
    else:
        preset, model = "smoke", str(ensure_tiny_model(console))
        console.print("demo: CPU smoke profile (tiny random-init model, a few steps per stage)")
    style = getattr(args, "composite_style", "side-by-side")
    composites = CompositeSettings(style=style, masks=example.parent / "masks" if style == "scene" else None)
    job = Job(out=out, sources=SourceSettings(roots=[example]), composites=composites,
              training=TrainingSettings(preset=preset, base_model=model))
    code = prepare(job, PrepareOptions(), console)
    if code == 0:
        code = launch(LaunchOptions(run_dir=out, smoke=preset == "smoke"), console)
    if code == 0:
        # what the run learnt: fixed-seed grids of base / stage 1 / stage 2, metrics, then the HTML report
        smoke = SMOKE_EVALUATION if preset == "smoke" else {}
        code = evaluate_run(EvaluateOptions(run_dir=out, **smoke), console)
    return code if code != 0 else report(out, console)
