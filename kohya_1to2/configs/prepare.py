"""What `prepare` does, step by step: read and pre-flight the sources, plan the run, then build and write it.

Order matters: everything is validated (settings, then every source file) before a single output is written.
The steps print their progress on the console they are given; `commands/prepare.py` sequences them and maps the
outcome to its summary and exit code.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image
from rich.console import Console, RenderableType
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.text import Text

from kohya_1to2.configs.buckets import MAX_CROP
from kohya_1to2.configs.generate import check_plan, render_plan, write_run_configs
from kohya_1to2.configs.lint import lint_run
from kohya_1to2.configs.modes import mode_job, mode_replay
from kohya_1to2.configs.prompts import check_trigger
from kohya_1to2.configs.render import PlannedComposites, plan_composites
from kohya_1to2.dataset.build import BuildResult, build_composites
from kohya_1to2.dataset.captions import validate_triggers
from kohya_1to2.dataset.compose import upright_size
from kohya_1to2.dataset.masks import find_masks, mask_summary, masks_in_character_folders, require_masks
from kohya_1to2.dataset.pairing import plan_groups
from kohya_1to2.dataset.preflight import preflight, preflight_reg, raise_for_errors, sort_problems, write_fixed_sources
from kohya_1to2.dataset.replay import replay_share, write_replay
from kohya_1to2.dataset.scan import Problem, RegScan, ScanResult, reg_overlap, render_scan_table, scan_reg, scan_sources
from kohya_1to2.dataset.segment import require_segmenter
from kohya_1to2.errors import CheckError, UsageError
from kohya_1to2.fsutil import atomic_write_text
from kohya_1to2.kohya import base_model_problem, options
from kohya_1to2.models import STAGES, Character, CompositePlan, CompositeSettings, Job, ReplayPick
from kohya_1to2.rundir import RunDir, backup_stamp


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
    composites = job.composites.model_copy(update={
        key: value.expanduser().resolve() for key in ("masks", "backgrounds")
        if (value := getattr(job.composites, key)) is not None})
    return job.model_copy(update={"out": job.out.expanduser().resolve(), "sources": sources, "training": training,
                                  "composites": composites})


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


@dataclass(frozen=True)
class Sources:
    """The scanned sources and reg classes, and what the pre-flight found (no error among them)."""

    scan: ScanResult
    reg: RegScan
    problems: list[Problem]


def read_sources(job: Job, console: Console) -> Sources:
    """Scan and pre-flight every source and reg image, printing the scan and each problem; errors are raised."""
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
    workers = job.composites.worker_count
    with _progress(console) as bar:
        task = bar.add_task("pre-flight", total=scan.image_count + reg.image_count)
        checked = preflight(scan, job.sources, progress=lambda n: bar.advance(task, n), workers=workers)
        checked += preflight_reg(reg, job.sources, progress=lambda n: bar.advance(task, n), workers=workers)
    problems = sort_problems([*scan.problems, *checked])
    for problem in problems:
        console.print(Text(problem.line, style="red" if problem.severity == "error" else "yellow"), soft_wrap=True)
    raise_for_errors(problems)
    if job.composites.style == "scene":
        scene_masks_preflight(scan.characters, job.composites, RunDir(job.out).segmented_masks, console)
    return Sources(scan, reg, problems)


def scene_masks_preflight(characters: Sequence[Character], settings: CompositeSettings, segmented: Path,
                          console: Console) -> None:
    """Scene composites: where each image's mask comes from (or the error naming those without one), and any
    mask file sitting among a character's images, where sd-scripts would train it as that character. With
    --segment, the images left are the segmenter's, which must be able to run (the build segments them)."""
    for path in masks_in_character_folders(characters):
        console.print(Text(f"warning: {path} looks like a mask inside a character folder: sd-scripts trains "
                           "every image there as that character; move it to a --masks tree", style="yellow"),
                      soft_wrap=True)
    if not settings.segment:
        console.print(Text(mask_summary(require_masks(characters, settings.masks))), soft_wrap=True)
        return
    found, missing = find_masks(characters, settings.masks, segmented)
    if missing:
        require_segmenter()
    console.print(Text(mask_summary(found, to_segment=len(missing))), soft_wrap=True)


@dataclass(frozen=True)
class RunPlan:
    """Everything the build and the configs need, decided before any pixel is decoded."""

    job: Job
    """The job as the user gave it (job.json)."""
    built_job: Job
    """The job the build and configs use (a mode may set the composites' repeats, `configs.modes.mode_job`)."""
    characters: list[Character]
    """The characters stage 1 and the composites use (the corrected copies with --fix-sources)."""
    pairs: list[CompositePlan]
    replay: list[ReplayPick]
    composites: PlannedComposites

    @property
    def repeats(self) -> int:
        return self.built_job.composites.repeats

    def padding_note(self) -> Text | None:
        """The line naming the composites padded to their bucket's aspect, or None when none is."""
        padded = sum(1 for bucket in self.composites.pad_to if bucket)
        if not padded:
            return None
        return Text(f"{padded} of {len(self.pairs)} composites have an aspect stage 2's buckets would crop by more "
                    f"than {MAX_CROP:.0%}: they are padded to their bucket's aspect (--background "
                    f"{self.job.composites.background}; manifest: padded_to)", style="yellow")


def plan_run(job: Job, sources: Sources, *, write_fixed: bool) -> RunPlan:
    """Pairs, the mode's repeats and replay picks, and each composite's size and padding (from image headers).

    `write_fixed`: with --fix-sources, write the corrected copies into the run directory (taken by then)."""
    characters = sources.scan.characters
    if job.sources.fix_sources and write_fixed:  # stage 1 and the composites both use the corrected copies
        fixed = write_fixed_sources(sources.scan, sources.problems, job.out, job.composites.background_rgb)
        characters = fixed.characters
    pairs = plan_groups(characters, job.composites.group_size, job.composites.budget, job.composites.seed)
    built_job = mode_job(job, characters, sources.reg.sets, len(pairs))
    replay = mode_replay(job, characters, len(pairs) * built_job.composites.repeats)
    # Stage 2's buckets are chosen for the composites' own aspects; one its buckets would crop by more than
    # MAX_CROP is padded to its bucket's aspect instead.
    composites = plan_composites(built_job, header_sizes(pairs))
    return RunPlan(job, built_job, list(characters), pairs, replay, composites)


def render_dry_run(plan: RunPlan, sources: Sources) -> RenderableType:
    """The configs `prepare` would write, checked and rendered from the plan alone (nothing is written)."""
    job = plan.job
    composite_dir = RunDir(job.out).composite_subset(plan.repeats)
    common: dict[str, Any] = {"reg_sets": sources.reg.sets, "replay": plan.replay,
                              "composite_aspects": plan.composites.aspects}
    check_plan(job, sources.scan.characters, composite_dir, plan.repeats, plan.composites.sizes, **common)
    return render_plan(job, sources.scan.characters, composite_dir, plan.repeats, plan.composites.sizes, **common)


def write_run(plan: RunPlan, sources: Sources, console: Console, *, force: bool, overwrite_edits: bool) -> BuildResult:
    """Build the composites, the mode's folders and both stages' configs and job.json, printing what was written."""
    job, run_dir = plan.job, plan.job.out
    built = build_composites(plan.pairs, plan.characters, plan.built_job, run_dir, force=force, console=console,
                             pad_to=plan.composites.pad_to)
    write_mode_folders(job, plan.replay, len(plan.pairs) * plan.repeats, console, backup_stamp())
    common: dict[str, Any] = {"reg_sets": sources.reg.sets, "replay": plan.replay,
                              "composite_aspects": plan.composites.aspects}
    check_plan(job, plan.characters, built.subset_dir, plan.repeats, built.sizes, **common)
    report = write_run_configs(job, plan.characters, composite_dir=built.subset_dir, composite_repeats=plan.repeats,
                               composite_sizes=built.sizes, run_dir=run_dir, overwrite_edits=overwrite_edits,
                               **common)
    write_job(job, run_dir)
    for stray in built.strays:
        console.print(Text(f"moved {stray.name} out of the composite subset (prepare did not write it; sd-scripts "
                           f"would have trained it): now {stray}", style="yellow"), soft_wrap=True)
    console.print(report)
    console.print(render_plan(job, plan.characters, built.subset_dir, plan.repeats, built.sizes, **common))
    return built


def write_job(job: Job, run_dir: Path) -> Path:
    """Save the resolved job so plan/check/launch and regeneration use exactly these settings."""
    path = RunDir(run_dir).job_file
    payload: dict[str, Any] = json.loads(job.model_dump_json())
    atomic_write_text(path, json.dumps(payload, indent=2, ensure_ascii=False) + "\n")
    return path


def write_mode_folders(job: Job, replay: Sequence[ReplayPick], composite_samples: int, console: Console,
                       stamp: str) -> None:
    """Mirror replay's picks into <run>/replay/ (removed in other modes: it only holds links and copies), and
    move generated files of stages the mode does not train to the backups (named by `stamp`), so nothing stale
    is launched."""
    layout = RunDir(job.out)
    if replay:
        written = write_replay(replay, layout.replay)
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


def checked_next_step(run_dir: Path, console: Console) -> str:
    """What `check` says of the run just written: its problems are printed and refused (exit 4), so prepare never
    announces a run launch would refuse; a base model not set yet is the one thing left to the user."""
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


def header_sizes(plans: Sequence[CompositePlan]) -> list[tuple[tuple[int, int], ...]]:
    """The members' upright source sizes (left to right) of each composite from image headers alone (no pixel
    decode)."""
    sizes: dict[Path, tuple[int, int]] = {}

    def size_of(path: Path) -> tuple[int, int]:
        if path not in sizes:
            with Image.open(path) as image:
                sizes[path] = upright_size(image)  # compose applies the orientation: the same size
        return sizes[path]

    return [tuple(size_of(image.path) for image in p.members) for p in plans]


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        console=console, transient=True,
    )
