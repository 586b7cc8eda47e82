"""`launch RUN_DIR`: check, then train stage 1 and stage 2 through accelerate and the pinned sd-scripts.

The work is `launch.session`'s; this module maps options to it and its results to output. The parent never
imports torch: machine facts come from a fast probe, the training runs in the child.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from rich.console import Console
from rich.table import Table
from rich.text import Text

from kohya_1to2.environment.install import install_snapshot, interpreter_of, resolve_install
from kohya_1to2.environment.vendor import require_sd_scripts
from kohya_1to2.flags import model_overrides
from kohya_1to2.launch.argv import AccelerateOptions
from kohya_1to2.launch.pipeline import StageResult, dry_run_text, select_stages
from kohya_1to2.launch.session import LaunchOptions, plan_launch, require_checked, run_planned
from kohya_1to2.rundir import RunDir, require_run_dir, run_stages, writer_lock

__all__ = ["LaunchOptions", "launch", "run"]


def options_from_args(args: argparse.Namespace) -> LaunchOptions:
    accelerate = model_overrides(args, "accelerate")
    if accelerate.get("config_file"):
        accelerate["config_file"] = Path(accelerate["config_file"]).expanduser().resolve()
    return LaunchOptions(run_dir=args.run_dir, accelerate=AccelerateOptions(**accelerate),
                         **model_overrides(args, "launch"))


def summary_table(results: list[StageResult]) -> Table:
    table = Table(title="1to2 launch summary")
    for column in ("stage", "status", "time", "final weights", "samples"):
        table.add_column(column, overflow="fold")
    for result in results:
        table.add_row(
            str(result.stage),
            result.status,
            f"{result.seconds:.0f} s" if result.seconds else "-",
            Text(str(result.weights or "-")),
            Text(f"{len(result.samples)} in {result.samples[0].parent}" if result.samples else "-"),
        )
    return table


def run(args: argparse.Namespace, console: Console) -> int:
    return launch(options_from_args(args), console)


def launch(args: LaunchOptions, console: Console) -> int:
    """`launch` for callers that hold options, not a command line (`demo`)."""
    run_dir = require_run_dir(args.run_dir)
    selected = select_stages(args.stage, args.from_stage, run_stages(run_dir))
    if args.dry_run:
        return launch_stages(args, console, run_dir, selected)
    with writer_lock(RunDir(run_dir), "launch") as lock:
        return launch_stages(args, console, run_dir, selected, hold=(lock,))


def launch_stages(args: LaunchOptions, console: Console, run_dir: Path, selected: tuple[int, ...],
                  hold: tuple[int, ...] = ()) -> int:
    """Check (against the options of the sd-scripts that will run), decide, print the commands (--dry-run) or run
    them, then write the run's report."""
    install = resolve_install(args.sd_scripts, args.python, os.environ, pinned=require_sd_scripts)
    if not install.pinned:
        console.print(Text(f"{install.label}, run by {install.python}"), soft_wrap=True)
    for warning in require_checked(run_dir, install_snapshot(install, os.environ), console):
        console.print(Text(f"warning: {warning}", style="yellow"), soft_wrap=True)
    plan = plan_launch(args, run_dir, selected, install.path, console, interpreter_of(install, os.environ))
    if args.dry_run:
        console.print(Text(dry_run_text(list(plan.commands.values()))), soft_wrap=True)
        return 0
    console.print(summary_table(run_planned(plan, console, hold)))
    from kohya_1to2.evaluate.report import write_report  # the report's modules only after a training

    try:  # the run's report (evaluate adds its grids); training succeeded even if this fails
        console.print(Text(f"report: {write_report(run_dir)}"), soft_wrap=True)
    except Exception as exc:
        console.print(Text(f"report not written: {type(exc).__name__}: {exc}", style="yellow"), soft_wrap=True)
    return 0
