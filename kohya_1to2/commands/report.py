"""`report RUN`: write <run>/report.html, one page about the run that opens from disk."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console
from rich.text import Text

from kohya_1to2.errors import UsageError
from kohya_1to2.evaluate.report import write_report
from kohya_1to2.rundir import RunDir


def run(args: argparse.Namespace, console: Console) -> int:
    return report(args.run_dir, console)


def report(run_dir: Path, console: Console) -> int:
    """`report` for callers that hold a run directory, not a command line (`demo`)."""
    run_dir = run_dir.expanduser().resolve()
    if not RunDir(run_dir).job_file.is_file():
        raise UsageError(f"{run_dir} is not a prepared run directory (no job.json)",
                         hint="run `python -m kohya_1to2 prepare ... --out <run dir>` first")
    console.print(Text(f"report: {write_report(run_dir)}"), soft_wrap=True)
    return 0
