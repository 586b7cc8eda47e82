"""`plan <run dir>`: steps, buckets and cost of a prepared run, from its TOMLs as they are now."""

from __future__ import annotations

import argparse

from rich.console import Console
from rich.text import Text

from kohya_1to2.configs.generate import plans_from_run_dir
from kohya_1to2.configs.plan import check_stage_plans, render_stage_plans
from kohya_1to2.rundir import RunDir, current_writer


def run(args: argparse.Namespace, console: Console) -> int:
    run_dir = args.run_dir.expanduser().resolve()
    writer = current_writer(RunDir(run_dir))
    if writer:
        console.print(Text(f"warning: {run_dir} is being written by {writer}; the plan may change",
                           style="yellow"), soft_wrap=True)
    plans = plans_from_run_dir(run_dir)
    console.print(render_stage_plans(plans))
    check_stage_plans(plans)
    return 0
