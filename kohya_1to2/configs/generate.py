"""The configs shell: render both stages' files, merge them with hand edits on disk, keep records and backups,
and build the plan preview. `prepare` calls `check_plan`, `write_run_configs` and `render_plan`.

Inputs are the job and the scanned characters only (no dataset-module imports), so this can be reused by
`plan` and `check` from a run directory's `job.json`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import toml
import tomlkit
import tomlkit.exceptions
from pydantic import BaseModel, ConfigDict
from rich.console import Group
from rich.table import Table
from rich.text import Text

from kohya_1to2 import kohya
from kohya_1to2.configs.buckets import BucketSettings
from kohya_1to2.configs.lint import read_toml
from kohya_1to2.configs.merge import Conflict, merge_toml
from kohya_1to2.configs.modes import stage_datasets
from kohya_1to2.configs.presets import effective_settings, load_preset
from kohya_1to2.configs.prompts import parse_size, sample_prompts_text
from kohya_1to2.configs.render import (
    SAMPLE_PROMPTS_FILE,
    SubsetSpec,
    dataset_document,
    file_names,
    resolved_family,
    subset_role,
    training_document,
)
from kohya_1to2.configs.stage_plans import (
    StagePlan,
    SubsetPlan,
    check_stage_plans,
    plan_dataset,
    plan_stage_datasets,
    render_stage_plans,
)
from kohya_1to2.errors import OneToTwoError
from kohya_1to2.fsutil import atomic_write_text
from kohya_1to2.imagefiles import image_sizes, list_images
from kohya_1to2.kohya import flatten_training_config
from kohya_1to2.models import Character, Job, RegSet, ReplayPick
from kohya_1to2.rundir import RunDir, backup_stamp, load_job, run_stages

Status = Literal["written", "updated", "unchanged", "merged", "kept", "overwritten"]


class FileResult(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    status: Status
    conflicts: tuple[Conflict, ...] = ()
    kept_edits: tuple[str, ...] = ()
    backup: Path | None = None
    note: str = ""


class GenerateReport(BaseModel):
    """What `write_run_configs` did to each file; printable with rich."""

    model_config = ConfigDict(frozen=True)

    files: tuple[FileResult, ...]

    @property
    def conflicts(self) -> list[tuple[str, Conflict]]:
        return [(f.name, c) for f in self.files for c in f.conflicts]

    @property
    def backups(self) -> list[Path]:
        return [f.backup for f in self.files if f.backup]

    def status_of(self, name: str) -> Status:
        return next(f.status for f in self.files if f.name == name)

    def __rich__(self) -> Group:
        table = Table(title="configs", title_justify="left", show_edge=False)
        for column in ("file", "status", "notes"):
            table.add_column(column, overflow="fold")  # paths wrap whole, never end in an ellipsis
        for f in self.files:
            notes = []
            if f.kept_edits:
                notes.append(f"kept your edits: {', '.join(f.kept_edits)}")
            if f.backup:
                notes.append(f"backup: {f.backup}")
            if f.note:
                notes.append(f.note)
            table.add_row(Text(f.name), f.status, Text("; ".join(notes)))
        parts: list[Any] = [table]
        for name, c in self.conflicts:
            parts.append(Text.assemble(
                ("conflict ", "bold yellow"),
                f"{name}: {c.key}: kept your {c.user} (generated now: {c.generated}, before: {c.previous})",
            ))
        return Group(*parts)


# ------------------------------------------------------------------------------------------- rendering


def render_run_files(
    job: Job, characters: Sequence[Character], *, composite_dir: Path, composite_repeats: int,
    composite_count: int, run_dir: Path, composite_aspects: Sequence[float] = (), reg_sets: Sequence[RegSet] = (),
    replay: Sequence[ReplayPick] = (),
) -> dict[str, str]:
    """File name -> text of every generated file of the job's stages (pure apart from reading the preset)."""
    preset = load_preset(job.training.preset)
    composites = SubsetSpec(name="composite", image_dir=composite_dir.expanduser().resolve(),
                            num_repeats=composite_repeats, images=composite_count, role="composites",
                            alpha_mask=job.composites.style == "scene")
    blocks = stage_datasets(job, characters, composites, reg_sets=reg_sets, replay=replay,
                            replay_root=RunDir(run_dir).replay)
    files: dict[str, str] = {}
    for stage, stage_blocks in blocks.items():
        dataset_name, train_name = file_names(stage)
        files[dataset_name] = tomlkit.dumps(dataset_document(job, preset, stage, stage_blocks, composite_aspects))
        files[train_name] = tomlkit.dumps(training_document(job, preset, stage, run_dir))
    triggers = [(c.name, c.trigger) for c in characters]
    files[SAMPLE_PROMPTS_FILE] = sample_prompts_text(triggers, effective_settings(job, preset),
                                                     job.composites.captions, pairs=job.training.sample_pairs,
                                                     pair_size=parse_size(job.training.sample_pair_size)
                                                     if job.training.sample_pair_size else None,
                                                     group_size=job.composites.group_size)
    return files


# ------------------------------------------------------------------------------------------- writing


def _backup(run_dir: Path, name: str, text: str, stamp: str) -> Path:
    path = RunDir(run_dir).backup_path(name, stamp)
    atomic_write_text(path, text)
    return path


def write_generated_file(run_dir: Path, name: str, new_text: str, *, overwrite_edits: bool, stamp: str,
                         ) -> FileResult:
    """Write one generated file without losing hand edits; record what was generated."""
    target = run_dir / name
    record = RunDir(run_dir).generated / name
    current = target.read_text(encoding="utf-8") if target.is_file() else None
    base = record.read_text(encoding="utf-8") if record.is_file() else None
    result: FileResult
    if current is None:
        atomic_write_text(target, new_text)
        result = FileResult(name=name, status="written")
    elif current == new_text:
        result = FileResult(name=name, status="unchanged")
    elif base is not None and current == base:
        atomic_write_text(target, new_text)
        result = FileResult(name=name, status="updated")
    elif overwrite_edits:
        backup = _backup(run_dir, name, current, stamp)
        atomic_write_text(target, new_text)
        result = FileResult(name=name, status="overwritten", backup=backup, note="your edits were discarded")
    elif not name.endswith(".toml"):
        changed = base is None or base != new_text
        conflicts = (Conflict(key="(whole file)", user="your edited file", generated=str(record.relative_to(run_dir)),
                              previous="(generated before)"),) if changed else ()
        result = FileResult(name=name, status="kept", conflicts=conflicts, note="edited by you: left as is")
    else:
        try:
            merged = merge_toml(base, current, new_text)
        except tomlkit.exceptions.ParseError as exc:
            conflict = Conflict(key="(whole file)", user=f"not valid TOML ({exc})",
                                generated=str(record.relative_to(run_dir)), previous="")
            result = FileResult(name=name, status="kept", conflicts=(conflict,),
                                note="fix the syntax, then re-run prepare")
        else:
            if merged.text == current:
                result = FileResult(name=name, status="kept", conflicts=merged.conflicts,
                                    kept_edits=merged.kept_edits)
            else:
                backup = _backup(run_dir, name, current, stamp)
                atomic_write_text(target, merged.text)
                result = FileResult(name=name, status="merged", conflicts=merged.conflicts,
                                    kept_edits=merged.kept_edits, backup=backup)
    atomic_write_text(record, new_text)
    return result


def write_run_configs(
    job: Job,
    characters: Sequence[Character],
    *,
    composite_dir: Path,
    composite_repeats: int,
    composite_sizes: Sequence[tuple[int, int]],
    run_dir: Path,
    overwrite_edits: bool = False,
    reg_sets: Sequence[RegSet] = (),
    replay: Sequence[ReplayPick] = (),
    composite_aspects: Sequence[float] | None = None,
) -> GenerateReport:
    """Render and write the job's stage TOMLs and the sample prompts into the run directory. `composite_aspects`:
    the composites' natural aspects the bucket keys are chosen for (default: `composite_sizes`' own)."""
    run_dir = run_dir.expanduser().resolve()
    files = render_run_files(job, characters, composite_dir=composite_dir, composite_repeats=composite_repeats,
                             composite_count=len(composite_sizes), run_dir=run_dir,
                             composite_aspects=_aspects(composite_sizes, composite_aspects), reg_sets=reg_sets,
                             replay=replay)
    stamp = backup_stamp()
    results = [
        write_generated_file(run_dir, name, text, overwrite_edits=overwrite_edits, stamp=stamp)
        for name, text in files.items()
    ]
    return GenerateReport(files=tuple(results))


# ------------------------------------------------------------------------------------------- plan


Known = Mapping[Path, tuple[int, tuple[tuple[int, int], ...]]]


def _resolution(value: Any) -> tuple[int, int]:
    if isinstance(value, int) and not isinstance(value, bool):
        return (value, value)
    if isinstance(value, list) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return (value[0], value[1])
    return (512, 512)


def plans_from_documents(
    documents: Mapping[int, tuple[Mapping[str, Any], Mapping[str, Any]]], known: Known, group_size: int = 2
) -> list[StagePlan]:
    """Stage plans from (dataset, training) TOML contents; image folders not in `known` are read from disk;
    `group_size`: characters per composite (the TOMLs do not say)."""
    plans = []
    for stage, (dataset_doc, training_doc) in sorted(documents.items()):
        flat = flatten_training_config(training_doc)
        batch = flat.get(kohya.TRAIN_BATCH_SIZE, 1)
        subset_values = kohya.subset_scopes(dataset_doc)
        datasets = []
        for index, scope in kohya.dataset_scopes(dataset_doc):
            subsets: list[SubsetPlan] = []
            for _, _, values in (v for v in subset_values if v[0] == index):
                image_dir = Path(str(values.get(kohya.IMAGE_DIR, "")))
                repeats = values.get(kohya.NUM_REPEATS, 1)
                if image_dir in known:
                    count, sizes = known[image_dir]
                else:
                    images = list_images(image_dir)
                    count, sizes = len(images), image_sizes(images) or ()
                role = subset_role(values)
                subsets.append(SubsetPlan(name="composite" if role == "composites" else image_dir.name,
                                          image_dir=image_dir, images=count, role=role, group_size=group_size,
                                          repeats=repeats if isinstance(repeats, int) else 1, sizes=sizes))
            settings = BucketSettings(
                resolution=_resolution(scope.get(kohya.RESOLUTION, flat.get(kohya.RESOLUTION))),
                **{k: scope[k] for k in (kohya.MIN_BUCKET_RESO, kohya.MAX_BUCKET_RESO, kohya.BUCKET_RESO_STEPS)
                   if isinstance(scope.get(k), int)},
            )
            block_batch = scope.get(kohya.BATCH_SIZE, batch)
            datasets.append(plan_dataset(subsets, settings, block_batch if isinstance(block_batch, int) else 1))
        plans.append(plan_stage_datasets(stage, datasets, flat))
    return plans


def _aspects(sizes: Sequence[tuple[int, int]], aspects: Sequence[float] | None) -> Sequence[float]:
    return aspects if aspects is not None else [w / h for w, h in sizes if h]


def _in_memory_plans(
    job: Job, characters: Sequence[Character], composite_dir: Path, composite_repeats: int,
    composite_sizes: Sequence[tuple[int, int]], reg_sets: Sequence[RegSet] = (), replay: Sequence[ReplayPick] = (),
    composite_aspects: Sequence[float] | None = None,
) -> list[StagePlan]:
    run_dir = job.out.expanduser().resolve()
    files = render_run_files(job, characters, composite_dir=composite_dir, composite_repeats=composite_repeats,
                             composite_count=len(composite_sizes), run_dir=run_dir,
                             composite_aspects=_aspects(composite_sizes, composite_aspects), reg_sets=reg_sets,
                             replay=replay)
    known: dict[Path, tuple[int, tuple[tuple[int, int], ...]]] = {
        composite_dir.expanduser().resolve(): (len(composite_sizes), tuple(composite_sizes))
    }
    folders = [(c.folder, [i.path for i in c.images]) for c in characters]
    folders += [(r.folder, [i.path for i in r.images]) for r in reg_sets]
    folders += [(RunDir(run_dir).replay / p.character.name, [i.path for i in p.images]) for p in replay]
    for folder, paths in folders:
        known[folder.expanduser().resolve()] = (len(paths), tuple(image_sizes(paths) or ()))
    documents: dict[int, tuple[Mapping[str, Any], Mapping[str, Any]]] = {}
    for stage in job.stages:
        dataset_name, train_name = file_names(stage)
        documents[stage] = (toml.loads(files[dataset_name]), toml.loads(files[train_name]))
    return plans_from_documents(documents, known, job.composites.group_size)


def render_plan(job: Job, characters: Sequence[Character], composite_dir: Path, composite_repeats: int,
                composite_sizes: Sequence[tuple[int, int]], reg_sets: Sequence[RegSet] = (),
                replay: Sequence[ReplayPick] = (), composite_aspects: Sequence[float] | None = None) -> Group:
    """The plan preview printed by `prepare` (also for --dry-run)."""
    family = resolved_family(job, load_preset(job.training.preset))
    plans = _in_memory_plans(job, characters, composite_dir, composite_repeats, composite_sizes, reg_sets, replay,
                             composite_aspects)
    return render_stage_plans(plans, family=family)


def check_plan(job: Job, characters: Sequence[Character], composite_dir: Path, composite_repeats: int,
               composite_sizes: Sequence[tuple[int, int]], reg_sets: Sequence[RegSet] = (),
               replay: Sequence[ReplayPick] = (), composite_aspects: Sequence[float] | None = None) -> None:
    """Raise DatasetError when a subset has no images or a stage would train on nothing."""
    check_stage_plans(_in_memory_plans(job, characters, composite_dir, composite_repeats, composite_sizes,
                                       reg_sets, replay, composite_aspects))


def plans_from_run_dir(run_dir: Path) -> list[StagePlan]:
    """The plan of a prepared run directory, from its TOMLs as they are now (hand edits included)."""
    documents: dict[int, tuple[Mapping[str, Any], Mapping[str, Any]]] = {}
    for stage in run_stages(run_dir):
        dataset_name, train_name = file_names(stage)
        documents[stage] = (read_toml(run_dir / dataset_name), read_toml(run_dir / train_name))
    try:
        group_size = load_job(run_dir).composites.group_size
    except OneToTwoError:  # a run dir without a readable job.json still has its TOMLs to plan from
        group_size = 2
    return plans_from_documents(documents, {}, group_size)
