"""`plan <run dir>`: steps, buckets and cost of a prepared run, from its TOMLs as they are now; once a stage
has run, its measured s/step (from its log) beside the estimate."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from kohya_1to2.configs.generate import plans_from_run_dir
from kohya_1to2.configs.stage_plans import check_stage_plans, render_stage_plans
from kohya_1to2.kohya import measured_seconds_per_step
from kohya_1to2.rundir import RunDir, run_family, run_stages


def measured_steps(run_dir: Path) -> dict[int, tuple[float, int]]:
    """Stage -> (mean s/step, steps) of every stage whose log shows a training step."""
    run = RunDir(run_dir)
    measured: dict[int, tuple[float, int]] = {}
    for stage in run_stages(run_dir):
        log = run.log(stage)
        if log.is_file():
            found = measured_seconds_per_step(log.read_text(encoding="utf-8", errors="replace"))
            if found:
                measured[stage] = found
    return measured


def run(args: argparse.Namespace, console: Console) -> int:
    run_dir = args.run_dir.expanduser().resolve()
    plans = plans_from_run_dir(run_dir)
    console.print(render_stage_plans(plans, family=run_family(run_dir), measured=measured_steps(run_dir)))
    check_stage_plans(plans)
    return 0
