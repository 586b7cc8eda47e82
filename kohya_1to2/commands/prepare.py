"""`prepare`: scan and pre-flight the sources, build the composites, write both stages' configs.

Order matters: everything is validated (settings, then every source file) before a single output is written.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from contextlib import ExitStack

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from rich.console import Console
from rich.table import Table

from kohya_1to2.errors import UsageError
from kohya_1to2.flags import model_overrides
from kohya_1to2.models import (
    CaptionRules,
    CompositeSettings,
    Job,
    SourceSettings,
    TrainingSettings,
    validation_message,
)
from kohya_1to2.rundir import RunDir, check_out_dir, claim, refuse_foreign_files, writer_lock


def job_from_args(args: argparse.Namespace) -> Job:
    """The job the command line describes; a bad value is a one-line UsageError naming the flag."""
    try:
        return Job(
            out=args.out,
            sources=SourceSettings(roots=args.roots, **model_overrides(args, "sources")),
            composites=CompositeSettings(
                **model_overrides(args, "composites"), captions=CaptionRules(**model_overrides(args, "captions"))
            ),
            training=TrainingSettings(**model_overrides(args, "training")),
        )
    except ValidationError as exc:
        message = validation_message(exc, as_flags=True)
        raise UsageError(message, hint="see `python -m kohya_1to2 prepare --help`") from None


def _of_groups(job: Job) -> str:
    """` of 3 characters each (--group-size 3)`, or nothing for the method's pairs."""
    size = job.composites.group_size
    return "" if size == 2 else f" of {size} characters each (--group-size {size})"


def _summary_table(rows: list[tuple[str, str]]) -> Table:
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")  # paths wrap whole, never end in an ellipsis
    for key, value in rows:
        table.add_row(key, value)
    return table


class PrepareOptions(BaseModel):
    """How `prepare` treats what is already in the run directory (the job itself is a `Job`)."""

    model_config = ConfigDict(frozen=True)

    force: bool = Field(False, description="rebuild every composite")
    overwrite_edits: bool = Field(False, description="discard hand edits in generated TOMLs (a backup is kept)")
    dry_run: bool = Field(False, description="scan, check and print the plan; write nothing")


def run(args: argparse.Namespace, console: Console) -> int:
    return prepare(job_from_args(args), PrepareOptions(**model_overrides(args, "prepare")), console)


def prepare(job: Job, args: PrepareOptions, console: Console) -> int:
    """`prepare` for callers that hold a job, not a command line (`demo`)."""
    from kohya_1to2.configs.prepare import require_inputs, with_absolute_paths  # light --help, as in prepare_run

    job = with_absolute_paths(job)
    run_dir = job.out
    layout = RunDir(run_dir)
    require_inputs(job)
    check_out_dir(run_dir)
    refuse_foreign_files(layout)  # before the pre-flight; claimed (marked) once the run dir is locked
    with ExitStack() as stack:

        def take_run_dir() -> None:
            """Called once the sources passed the pre-flight, before the first write."""
            run_dir.mkdir(parents=True, exist_ok=True)
            stack.enter_context(writer_lock(layout, "prepare"))
            claim(layout, "prepare")

        return prepare_run(args, console, job, take_run_dir)


def prepare_run(args: PrepareOptions, console: Console, job: Job, take_run_dir: Callable[[], None]) -> int:
    """Read the sources, then (not on a dry run) take the run directory and build and write into it."""
    # imported here, not at the top: cli imports this module for PrepareOptions, and `--help` stays light
    from kohya_1to2.configs import prepare as steps
    from kohya_1to2.environment.tokens import print_caption_length_warnings

    sources = steps.read_sources(job, console)
    if not args.dry_run:
        take_run_dir()
    plan = steps.plan_run(job, sources, write_fixed=not args.dry_run)
    print_caption_length_warnings(console, plan.characters, plan.pairs, job)
    if note := plan.padding_note():
        console.print(note, soft_wrap=True)
    if args.dry_run:
        console.print(steps.render_dry_run(plan, sources))
        console.print(f"[bold]dry run:[/] {len(plan.pairs)} composites{_of_groups(job)} planned; nothing written "
                      f"to {job.out}")
        return 0
    built = steps.write_run(plan, sources, console, force=args.force, overwrite_edits=args.overwrite_edits)
    next_step = steps.checked_next_step(job.out, console)
    console.print(_summary_table([
        ("run directory", str(job.out)),
        ("mode", job.mode.summary),
        ("composites", f"{built.count}{_of_groups(job)} in {built.subset_dir} ({built.written} new, "
                       f"{built.reused} reused, {built.removed} stale removed)"),
        ("manifest", str(built.manifest_path)),
        ("preview", str(RunDir(job.out).preview)),
        ("next", next_step),
    ]))
    return 0
