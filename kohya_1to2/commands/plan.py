"""`plan <run dir>`: steps, buckets and cost of a prepared run, from its TOMLs as they are now."""

from __future__ import annotations

import argparse

from rich.console import Console

from kohya_1to2.configs.generate import plans_from_run_dir
from kohya_1to2.configs.plan import check_stage_plans, render_stage_plans


def run(args: argparse.Namespace, console: Console) -> int:
    plans = plans_from_run_dir(args.run_dir.expanduser().resolve())
    console.print(render_stage_plans(plans))
    check_stage_plans(plans)
    return 0
