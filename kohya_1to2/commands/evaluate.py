"""`evaluate RUN [RUN ...]`: fixed-seed images per weights row through sd-scripts' gen_img.py, grids, metrics,
report.

The work is `evaluate.session`'s (rows, prompts, generation, metrics, comparison); this module checks the
options, holds every run directory's writer lock throughout, and writes the reports.
"""

from __future__ import annotations

import argparse
from contextlib import ExitStack

from rich.console import Console
from rich.text import Text

from kohya_1to2 import kohya
from kohya_1to2.errors import UsageError
from kohya_1to2.evaluate import compare
from kohya_1to2.evaluate.session import EvaluateOptions, comparison_dir, evaluate
from kohya_1to2.flags import model_overrides
from kohya_1to2.rundir import RunDir, writer_lock

__all__ = ["EvaluateOptions", "evaluate_run", "run"]


def run(args: argparse.Namespace, console: Console) -> int:
    first, *others = args.run_dirs
    return evaluate_run(EvaluateOptions(run_dir=first, compare=tuple(others),
                                        **model_overrides(args, "evaluate")), console)


def evaluate_run(args: EvaluateOptions, console: Console) -> int:
    """`evaluate` for callers that hold options, not a command line (`demo`)."""
    run_dirs = [path.expanduser().resolve() for path in (args.run_dir, *args.compare)]
    for run_dir in run_dirs:
        if not RunDir(run_dir).job_file.is_file():
            raise UsageError(f"{run_dir} is not a prepared run directory (no job.json)",
                             hint="run `python -m kohya_1to2 prepare ... --out <run dir>` and `launch` first")
    compare.refuse_repeated_runs(run_dirs)
    if args.seeds < 1 or (args.steps is not None and args.steps < 1):
        raise UsageError("--seeds and --steps must be at least 1", hint="e.g. --seeds 4 --steps 28")
    if args.multiplier != 1.0:
        # kohya.GEN_IMG_LYCORIS_MERGE: gen_img can only merge a LyCORIS network, and the merge ignores network_mul
        raise UsageError(f"--multiplier {args.multiplier:g}: {kohya.GEN_IMG_SCRIPT} applies LyCORIS 3.4 networks "
                         "only at 1.0",
                         hint="leave --multiplier at 1")
    with ExitStack() as locks:
        held = tuple(locks.enter_context(writer_lock(RunDir(run_dir), "evaluate")) for run_dir in run_dirs)
        evaluate(args, console, run_dirs, hold=held)
    from kohya_1to2.evaluate.report import write_report  # the report's modules only once there is one to write

    for run_dir in run_dirs:
        console.print(Text(f"report: {write_report(run_dir)}"), soft_wrap=True)
    if len(run_dirs) > 1:
        console.print(Text(f"comparison: {comparison_dir(RunDir(run_dirs[0]))} (one grid per prompt, metrics.jsonl), "
                           f"shown in {RunDir(run_dirs[0]).report}"), soft_wrap=True)
    return 0
