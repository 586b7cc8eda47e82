"""`prepare`: scan and pre-flight the sources, build the composites, write both stages' configs.

Order matters: everything is validated (settings, then every source file) before a single output is written.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from kohya_1to2.dataset.pairing import plan_pairs
from kohya_1to2.errors import CheckError, UsageError
from kohya_1to2.flags import model_overrides
from kohya_1to2.fsutil import atomic_write_text
from kohya_1to2.kohya import base_model_problem
from kohya_1to2.models import (
    STAGES,
    CaptionRules,
    Character,
    CompositePlan,
    CompositeSettings,
    Job,
    RegSet,
    ReplayPick,
    SourceSettings,
    TrainingSettings,
    validation_message,
)
from kohya_1to2.rundir import RunDir, backup_stamp, check_out_dir, claim, refuse_foreign_files, writer_lock


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


def with_absolute_paths(job: Job) -> Job:
    """sd-scripts runs with its own folder as cwd, so every local path written into a TOML must be absolute.

    A base model that does not exist here is kept as typed: it may be a Hugging Face id, or a path on the
    training machine (`check`/`launch` verify it there).
    """
    base = job.training.base_model
    training = job.training
    if base and Path(base).expanduser().exists():
        training = training.model_copy(update={"base_model": str(Path(base).expanduser().resolve())})
    sources = job.sources.model_copy(update={"roots": [r.expanduser().resolve() for r in job.sources.roots],
                                             "reg": [r.expanduser().resolve() for r in job.sources.reg]})
    return job.model_copy(update={"out": job.out.expanduser().resolve(), "sources": sources, "training": training})


def write_job(job: Job, run_dir: Path) -> Path:
    """Save the resolved job so plan/check/launch and regeneration use exactly these settings."""
    path = RunDir(run_dir).job_file
    payload: dict[str, Any] = json.loads(job.model_dump_json())
    atomic_write_text(path, json.dumps(payload, indent=2, ensure_ascii=False) + "\n")
    return path


def _summary_table(rows: list[tuple[str, str]]) -> Table:
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
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


def require_inputs(job: Job) -> None:
    """What the command line names must exist before any scanning: source roots first, then the base model;
    no --reg folder may hold (or be) training images of a source root."""
    for root in job.sources.roots:
        if not root.is_dir():
            what = "is a file, not a folder" if root.exists() else "does not exist"
            raise UsageError(f"source root {root} {what}",
                             hint="pass the folder that holds your N_name/ character folders")
    for reg in job.sources.reg:
        for root in job.sources.roots:
            if problem := reg_overlap(reg.expanduser().resolve(), root.expanduser().resolve()):
                raise UsageError(f"--reg {reg} {problem} {root}: the same images would be trained as "
                                 "regularisation of themselves", hint="pass a folder of other (class) images")
    if job.training.base_model:
        problem = base_model_problem(job.training.base_model)
        if problem:
            raise UsageError(f"--base-model: {problem}",
                             hint="pass an existing .safetensors/.ckpt file, a diffusers folder or a Hub id")


def reg_overlap(reg: Path, root: Path) -> str | None:
    """How a (resolved) --reg folder overlaps a (resolved) source root's training images, or None. A reg folder
    inside the root is fine where the scan skips it: under a `reg/`-like or non-`N_name` folder."""
    from kohya_1to2.dataset.scan import is_reg_name, parse_folder_name

    if reg == root:
        return "is the source root"
    if reg in root.parents:
        return "contains the source root"
    if root in reg.parents:
        top = reg.relative_to(root).parts[0]
        if not is_reg_name(top) and not isinstance(parse_folder_name(top), str):
            return f"is (inside) the character folder {top} of the source root"
    return None


def prepare_run(args: PrepareOptions, console: Console, job: Job, take_run_dir: Callable[[], None]) -> int:
    """Scan, pre-flight, then (not on a dry run) take the run directory and build and write into it."""
    from kohya_1to2.configs.buckets import MAX_CROP
    from kohya_1to2.configs.generate import check_plan, render_plan, write_run_configs
    from kohya_1to2.configs.prompts import check_trigger
    from kohya_1to2.configs.render import plan_composites
    from kohya_1to2.dataset.build import build_composites
    from kohya_1to2.dataset.captions import validate_triggers
    from kohya_1to2.dataset.preflight import (
        preflight,
        preflight_reg,
        raise_for_errors,
        sort_problems,
        write_fixed_sources,
    )
    from kohya_1to2.dataset.scan import render_scan_table, scan_reg, scan_sources
    from kohya_1to2.environment.tokens import print_caption_length_warnings

    run_dir = job.out
    scan = scan_sources(job.sources)
    reg = scan_reg(job.sources.reg, job.sources)
    validate_triggers(scan.characters, job.composites.captions, job.sources.caption_separator)
    for character in scan.characters:  # sample prompts need them too: refused before any build
        check_trigger(character.trigger, character.name)
    console.print(render_scan_table(scan))
    for ignored in (*scan.ignored, *reg.ignored):
        reason = escape(ignored.reason)
        console.print(f"[dim]ignored[/] {escape(str(ignored.path))} [dim]({reason})[/]", highlight=False)
    if reg.sets:
        console.print(Text("regularisation: " + ", ".join(f"{s.name} ({len(s.images)} images x {s.repeats}, "
                                                          f"{s.folder})" for s in reg.sets)), soft_wrap=True)

    with _progress(console) as bar:
        task = bar.add_task("pre-flight", total=scan.image_count + reg.image_count)
        checked = preflight(scan, job.sources, progress=lambda n: bar.advance(task, n),
                            workers=job.composites.worker_count)
        checked += preflight_reg(reg, job.sources, progress=lambda n: bar.advance(task, n),
                                 workers=job.composites.worker_count)
    problems = sort_problems([*scan.problems, *checked])
    for problem in problems:
        style = "red" if problem.severity == "error" else "yellow"
        console.print(Text(problem.line, style=style), soft_wrap=True)
    raise_for_errors(problems)
    if not args.dry_run:
        take_run_dir()

    characters = scan.characters
    if job.sources.fix_sources and not args.dry_run:
        # Stage 1 and the composites both use the corrected copies.
        characters = write_fixed_sources(scan, problems, run_dir, job.composites.background_rgb).characters
    plans = plan_pairs(characters, job.composites.budget, job.composites.seed)
    print_caption_length_warnings(console, characters, plans, job)
    built_job = mode_job(job, characters, reg.sets, len(plans))
    repeats = built_job.composites.repeats
    replay = mode_replay(job, characters, len(plans) * repeats)
    # Stage 2's buckets are chosen for the composites' own aspects; one its buckets would crop by more than
    # MAX_CROP is padded to its bucket's aspect instead (both from image headers, before any pixel is decoded).
    planned = plan_composites(built_job, _header_sizes(plans))
    aspects, pad_to = planned.aspects, planned.pad_to
    if any(pad_to):
        console.print(Text(f"{sum(1 for b in pad_to if b)} of {len(plans)} composites have an aspect stage 2's "
                           f"buckets would crop by more than {MAX_CROP:.0%}: they are padded to their bucket's aspect "
                           f"(--background {job.composites.background}; manifest: padded_to)", style="yellow"),
                      soft_wrap=True)
    if args.dry_run:
        sizes = planned.sizes
        composite_dir = RunDir(run_dir).composite_subset(repeats)
        check_plan(job, scan.characters, composite_dir, repeats, sizes, reg_sets=reg.sets, replay=replay,
                   composite_aspects=aspects)
        console.print(render_plan(job, scan.characters, composite_dir, repeats, sizes, reg_sets=reg.sets,
                                  replay=replay, composite_aspects=aspects))
        console.print(f"[bold]dry run:[/] {len(plans)} composites planned; nothing written to {run_dir}")
        return 0

    built = build_composites(plans, characters, built_job, run_dir, force=args.force, console=console, pad_to=pad_to)
    write_mode_folders(job, replay, len(plans) * repeats, console, backup_stamp())
    check_plan(job, characters, built.subset_dir, repeats, built.sizes, reg_sets=reg.sets, replay=replay,
               composite_aspects=aspects)
    report = write_run_configs(
        job,
        characters,
        composite_dir=built.subset_dir,
        composite_repeats=repeats,
        composite_sizes=built.sizes,
        run_dir=run_dir,
        overwrite_edits=args.overwrite_edits,
        reg_sets=reg.sets,
        replay=replay,
        composite_aspects=aspects,
    )
    write_job(job, run_dir)
    for stray in built.strays:
        console.print(Text(f"moved {stray.name} out of the composite subset (prepare did not write it; sd-scripts "
                           f"would have trained it): now {stray}", style="yellow"), soft_wrap=True)
    console.print(report)
    console.print(render_plan(job, characters, built.subset_dir, repeats, built.sizes, reg_sets=reg.sets,
                              replay=replay, composite_aspects=aspects))
    next_step = checked_next_step(run_dir, console)
    console.print(
        _summary_table(
            [
                ("run directory", str(run_dir)),
                ("mode", MODE_SUMMARY[job.training.mode]),
                ("composites", f"{built.count} in {built.subset_dir} ({built.written} new, {built.reused} reused, "
                 f"{built.removed} stale removed)"),
                ("manifest", str(built.manifest_path)),
                ("preview", str(RunDir(run_dir).preview)),
                ("next", next_step),
            ]
        )
    )
    return 0


def checked_next_step(run_dir: Path, console: Console) -> str:
    """What `check` says of the run just written: its problems are printed and refused (exit 4), so prepare never
    announces a run launch would refuse; a base model not set yet is the one thing left to the user."""
    from kohya_1to2.configs.lint import lint_run
    from kohya_1to2.kohya import options

    problems = lint_run(run_dir)
    for problem in problems:
        style = "red" if problem.severity == "error" else "yellow"
        console.print(Text.assemble((f"{problem.severity}: ", style), problem.line), soft_wrap=True)
    errors = [p for p in problems if p.severity == "error"]
    if refused := [p for p in errors if p.key != options.PRETRAINED_MODEL]:
        raise CheckError(f"prepared {run_dir}, but check finds {len(errors)} problem(s) launch would refuse: "
                         f"{refused[0].line}", hint="fix them as shown (or re-run prepare with --overwrite-edits), "
                                                   f"then: python -m kohya_1to2 check {run_dir}")
    if errors:
        return (f"set the base model ({options.PRETRAINED_MODEL} in both stage TOMLs, or re-run prepare with "
                f"--base-model PATH), then: python -m kohya_1to2 launch {run_dir}")
    return f"edit the TOMLs if you like, then: python -m kohya_1to2 launch {run_dir}"


MODE_SUMMARY = {
    "sequential": "sequential: stage 1 on the single-character images, stage 2 on the composites",
    "joint": "joint: one stage on the single-character images and the composites together",
    "replay": "replay: stage 1 on the singles, stage 2 on the composites and a share of the singles",
}


def mode_job(job: Job, characters: Sequence[Character], reg_sets: Sequence[RegSet], composites: int) -> Job:
    """The job the composite build and the configs use: in joint mode the composites' repeats follow
    --composite-share (job.json keeps what the user gave)."""
    if job.training.mode != "joint":
        return job
    from kohya_1to2.configs.modes import joint_composite_repeats

    repeats = joint_composite_repeats(characters, reg_sets, composites, job.training.composite_share)
    return job.model_copy(update={"composites": job.composites.model_copy(update={"repeats": repeats})})


def mode_replay(job: Job, characters: Sequence[Character], composite_samples: int) -> list[ReplayPick]:
    """The single images replay mode adds to stage 2 (none in the other modes)."""
    if job.training.mode != "replay":
        return []
    from kohya_1to2.dataset.replay import plan_replay

    return plan_replay(characters, composite_samples, job.training.replay_share, job.composites.seed)


def write_mode_folders(job: Job, replay: Sequence[ReplayPick], composite_samples: int, console: Console,
                       stamp: str) -> None:
    """Mirror replay's picks into <run>/replay/ (removed in other modes: it only holds links and copies), and
    move generated files of stages the mode does not train to the backups (named by `stamp`), so nothing stale
    is launched."""
    import shutil

    from kohya_1to2.dataset.replay import write_replay

    layout = RunDir(job.out)
    if replay:
        written = write_replay(replay, layout.replay)
        from kohya_1to2.dataset.replay import replay_share

        total = sum(len(p.images) for p in replay)
        console.print(f"replay: {total} single images in {layout.replay} ({written} files linked or copied), "
                      f"{replay_share(replay, composite_samples):.0%} of stage 2's images per epoch "
                      f"(--replay-share {job.training.replay_share:g})")
    elif layout.replay.is_dir():
        shutil.rmtree(layout.replay)
    for stage in STAGES:
        if stage in job.stages:
            continue
        for path in (layout.train_toml(stage), layout.dataset_toml(stage)):
            if path.is_file():
                layout.backups.mkdir(parents=True, exist_ok=True)
                target = layout.backup_path(path.name, stamp)
                path.replace(target)
                (layout.generated / path.name).unlink(missing_ok=True)
                console.print(Text(f"{job.training.mode} mode trains no stage {stage}: moved {path.name} to {target}",
                                   style="yellow"), soft_wrap=True)


def _header_sizes(plans: list[CompositePlan]) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """(left, right) upright source sizes of each composite from image headers alone (no pixel decode)."""
    from PIL import Image

    from kohya_1to2.dataset.compose import upright_size

    header_sizes: dict[Path, tuple[int, int]] = {}

    def size_of(path: Path) -> tuple[int, int]:
        if path not in header_sizes:
            with Image.open(path) as image:
                header_sizes[path] = upright_size(image)  # compose applies the orientation: the same size
        return header_sizes[path]

    return [(size_of(p.left.path), size_of(p.right.path)) for p in plans]


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        console=console, transient=True,
    )
