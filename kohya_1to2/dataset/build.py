"""Build the stage-2 composite folder: incremental re-runs, atomic writes, a manifest, a preview.

Writes (paths from `RunDir`): the composite subset (images + captions named `000042_alice__bob.png`, or
`000042_alice__bob__carol.png` for a group), the manifest (one line per composite: sources, fingerprints,
output size and hash), the preview, and while a build
runs its journal and the spill of decoded sources.

`build_composites` is a pipeline: tidy the subset folder -> `reuse_or_rebuild` (pure: which outputs are still
valid, which captions need rewriting, what to build) -> build the rest on workers (`pool`), journaling each
result -> write the manifest -> the preview (from thumbnails the workers made of the composites they built).

A re-run trusts an output only if its manifest (or journal) line matches the current plan, the sources'
size + mtime are unchanged and the file has the recorded size; it then never decodes an image. Encoding is
deterministic, so a build killed at any point and re-run ends byte-identical to a clean build.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import PIL
from pydantic import BaseModel, ConfigDict, ValidationError
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from kohya_1to2.dataset import captions, compose, masks, pool, scene, segment
from kohya_1to2.dataset.pool import CACHE_BYTES, ItemResult, WorkItem
from kohya_1to2.dataset.preview import Thumbnail, contact_sheet
from kohya_1to2.errors import DatasetError
from kohya_1to2.fsutil import TMP_PREFIX, atomic_write_text, file_fingerprint, remove_stale_temporaries
from kohya_1to2.imagefiles import list_images
from kohya_1to2.models import Character, CompositePlan, CompositeSettings, Job
from kohya_1to2.rundir import RunDir

BUILD_VERSION = "compose-2"
"""Bump when compose.py's pixels or encoding change: every output is then rebuilt."""

PREVIEW_ITEMS = 12


# ---------------------------------------------------------------- manifest records


class SourceRecord(BaseModel):
    """One member of a composite: the source file, its pixel size and a cheap change fingerprint."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str
    size: tuple[int, int]
    fingerprint: str


class ManifestEntry(BaseModel):
    """One line of `manifest.jsonl`. No timestamps: a resumed build writes the same bytes as a clean one."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    index: int
    file: str  # relative to the run directory, posix separators
    caption: str
    left: SourceRecord
    right: SourceRecord
    middle: tuple[SourceRecord, ...] | None = None
    """A group's members between left and right (absent for a pair, whose lines stay as they were)."""
    size: tuple[int, int]
    bytes: int
    sha256: str
    settings: str
    padded_to: tuple[int, int] | None = None
    """The stage-2 bucket whose aspect the composite was padded to (its own aspect would be cropped there)."""

    @property
    def members(self) -> tuple[SourceRecord, ...]:
        """Every source, left to right."""
        return (self.left, *(self.middle or ()), self.right)


@dataclass(frozen=True)
class BuildResult:
    subset_dir: Path
    manifest_path: Path
    count: int
    sizes: list[tuple[int, int]]
    reused: int
    written: int
    removed: int
    preview_path: Path | None = None
    padded: int = 0
    """Composites padded to their bucket's aspect (see `pad_to`)."""
    strays: list[Path] = field(default_factory=list)
    """Files found in subset folders that this run did not write, moved to `.1to2/strays/` (new places)."""
    entries_head: list[ManifestEntry] = field(default_factory=list)


def settings_fingerprint(settings: CompositeSettings) -> str:
    """Hash of everything that changes an output's bytes (not budget/seed/captions/repeats)."""
    relevant: dict[str, object] = {
        "build": BUILD_VERSION,
        "pillow": PIL.__version__,
        "png_encoder": compose.png_encoder() if settings.format == "png" else None,
        "layout": settings.layout,
        "background": settings.background,
        "gap": settings.gap,
        "format": settings.format,
        "quality": None if settings.format == "png" else settings.quality,
        "max_side": settings.max_side,
    }
    if settings.style == "scene":  # only then: side-by-side runs keep their fingerprint (and their files)
        relevant["scene"] = {"seed": settings.seed, "background": settings.scene_background,
                             "backgrounds": str(settings.backgrounds), "max_overlap": settings.max_overlap,
                             "flip": settings.flip, "loss_weight": settings.background_loss_weight}
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]


def owned_file_pattern(caption_extension: str) -> re.Pattern[str]:
    """Names this build writes (images and captions); anything else in the folder is left alone."""
    suffixes = "|".join(re.escape("." + ext) for ext in compose.EXTENSIONS.values())
    return re.compile(rf"^\d{{6,}}_.+__.+(?:{suffixes}|{re.escape(caption_extension)})$")


# ---------------------------------------------------------------- reuse (pure)


@dataclass(frozen=True)
class Reuse:
    """What `reuse_or_rebuild` decided for a plan."""

    entries: dict[int, ManifestEntry]
    """Still-valid outputs by index, their caption and file updated where the plan changed them."""
    captions: list[tuple[str, str]]
    """(caption file name, caption) to rewrite beside a reused image."""
    to_build: list[WorkItem]
    expected_names: frozenset[str]
    """Every image and caption file name the plan owns in the subset folder."""
    preview_stale: bool
    """One of the preview's composites (or its caption) changed."""


def reuse_or_rebuild(
    plans: Sequence[CompositePlan],
    characters: Sequence[Character],
    settings: CompositeSettings,
    caption_extension: str,
    *,
    subset: str,
    settings_id: str,
    previous: Mapping[int, ManifestEntry],
    fingerprints: Mapping[Path, str],
    on_disk: Mapping[str, int],
    pad_to: Sequence[tuple[int, int] | None] = (),
) -> Reuse:
    """Decide, without touching the disk, which planned composites are reused and which are built.

    `subset` is the subset folder relative to the run directory (posix), `previous` the manifest and journal
    entries by index, `fingerprints` every source's `fsutil.file_fingerprint`, `on_disk` the subset folder's files
    (name -> size in bytes), `pad_to` each composite's bucket to pad to (None: its own aspect). An output is
    reused only if its entry names the same file, settings, padding and sources, the sources' fingerprints are
    unchanged and the file has the recorded size.
    """
    by_name = {c.name: c for c in characters}
    entries: dict[int, ManifestEntry] = {}
    rewrites: list[tuple[str, str]] = []
    to_build: list[WorkItem] = []
    expected: set[str] = set()
    preview_stale = False
    interned: dict[str, str] = {}  # one string per source path, however many composites use it
    for position, plan in enumerate(plans):
        if plan.index != position:
            raise ValueError(f"plans must be in index order; plan {plan.index} at position {position}")
        try:
            members = [by_name[image.character] for image in plan.members]
        except KeyError as exc:
            raise DatasetError(f"composite {plan.index} names an unknown character {exc.args[0]!r}") from exc
        name = compose.group_name(plan.index, [c.name for c in members], settings.format)
        caption_name = Path(name).with_suffix(caption_extension).name
        expected.update((name, caption_name))
        caption = captions.group_caption(members, plan.members, settings.captions)
        old = previous.get(plan.index)
        padded = pad_to[plan.index] if plan.index < len(pad_to) else None
        if old is not None and _reusable(old, plan, name, settings_id, padded, fingerprints, on_disk):
            rel_file = f"{subset}/{name}"
            caption_ok = on_disk.get(caption_name) == len((caption + "\n").encode("utf-8"))
            if old.caption != caption or old.file != rel_file or not caption_ok:
                rewrites.append((caption_name, caption))
                old = old.model_copy(update={"caption": caption, "file": rel_file})
                preview_stale |= plan.index < PREVIEW_ITEMS
            entries[plan.index] = old
            continue
        preview_stale |= plan.index < PREVIEW_ITEMS
        paths = [interned.setdefault(str(image.path), str(image.path)) for image in plan.members]
        to_build.append(WorkItem(
            index=plan.index, left=paths[0], right=paths[-1], middle=tuple(paths[1:-1]), image_name=name,
            caption_name=caption_name, caption=caption, thumbnail=plan.index < PREVIEW_ITEMS, pad_to=padded,
        ))
    return Reuse(entries, rewrites, to_build, frozenset(expected), preview_stale)


def _reusable(old: ManifestEntry, plan: CompositePlan, name: str, settings_id: str, padded: tuple[int, int] | None,
              fingerprints: Mapping[Path, str], on_disk: Mapping[str, int]) -> bool:
    """The recorded output is this plan's: same file, settings, padding and sources, unchanged sources and size."""
    recorded = old.members
    return (
        Path(old.file).name == name
        and old.settings == settings_id
        and old.padded_to == padded
        and len(recorded) == len(plan.members)
        and all(record.path == str(image.path) and record.fingerprint == fingerprints[image.path]
                for record, image in zip(recorded, plan.members, strict=True))
        and on_disk.get(name) == old.bytes
    )


# ---------------------------------------------------------------- the pipeline


def build_composites(
    plans: Sequence[CompositePlan],
    characters: Sequence[Character],
    job: Job,
    run_dir: Path,
    *,
    force: bool = False,
    console: Console | None = None,
    workers: int | None = None,
    cache_bytes: int = CACHE_BYTES,
    pad_to: Sequence[tuple[int, int] | None] = (),
) -> BuildResult:
    """Make `run_dir/composites/{repeats}_composite/` match `plans`, reusing what is still valid; `pad_to`: per
    composite, the bucket to pad it to (configs.render.plan_composites), None for its own aspect."""
    settings = job.composites
    layout = RunDir(run_dir.resolve())
    subset = layout.composite_subset(settings.repeats)
    pattern = owned_file_pattern(job.sources.caption_extension)
    strays, removed = _tidy_subset_folders(layout, subset, pattern)
    if force:
        layout.journal.unlink(missing_ok=True)
    settings_id = settings_fingerprint(settings)
    scene_config = scene_settings(settings, characters, layout.segmented_masks, console)
    fingerprints = _source_fingerprints(plans, scene_config.masks if scene_config else {})

    reuse = reuse_or_rebuild(
        plans, characters, settings, job.sources.caption_extension,
        subset=subset.relative_to(layout.root).as_posix(),
        settings_id=settings_id,
        previous={} if force else _previous_entries(layout),
        fingerprints=fingerprints,
        on_disk=_file_sizes(subset),
        pad_to=pad_to,
    )
    for caption_name, caption in reuse.captions:
        atomic_write_text(subset / caption_name, caption + "\n")
    removed += _remove_owned(subset, pattern, keep=reuse.expected_names)
    manifest = _Manifest(plans, fingerprints, settings_id, subset.relative_to(layout.root).as_posix())
    manifest.add_reused(reuse.entries.values())
    to_build, preview_stale = reuse.to_build, reuse.preview_stale
    del reuse  # the previous entries: the manifest's lines are all that is needed from here on

    preview_wanted = bool(plans) and (preview_stale or force or not layout.preview.is_file())
    if to_build:
        _build(to_build, layout, subset, settings, manifest, console, workers or settings.worker_count, cache_bytes,
               scene_config)

    atomic_write_text(layout.manifest, manifest.text())
    layout.journal.unlink(missing_ok=True)
    head = head_entries(manifest.lines)
    if head and preview_wanted:
        contact_sheet(head, layout.preview, max_items=PREVIEW_ITEMS, thumbnails=manifest.thumbnails)
    return BuildResult(
        subset_dir=subset, manifest_path=layout.manifest, count=len(plans), sizes=manifest.sizes,
        reused=len(plans) - len(to_build), written=len(to_build), removed=removed,
        preview_path=layout.preview if head else None, entries_head=head, strays=strays,
        padded=sum(1 for bucket in pad_to if bucket is not None),
    )


def _build(
    items: list[WorkItem],
    layout: RunDir,
    subset: Path,
    settings: CompositeSettings,
    manifest: _Manifest,
    console: Console | None,
    workers: int,
    cache_bytes: int,
    scene_config: scene.SceneConfig | None = None,
) -> None:
    """Build `items` on workers, journaling each result so a killed build resumes where it stopped."""
    shutil.rmtree(layout.spill, ignore_errors=True)  # a killed run's leftovers
    config = pool.WorkerConfig(
        background=settings.background_rgb,
        gap=settings.gap,
        max_side=settings.max_side,
        format=settings.format,
        quality=settings.quality,
        cache_bytes=cache_bytes,
        subset_dir=str(subset),
        spill_dir=str(layout.spill) if pool.spill_fits(items, settings.max_side, layout.root) else None,
        spill_sources=pool.shared_sources(items),
        scene=scene_config,
    )
    layout.journal.parent.mkdir(parents=True, exist_ok=True)
    with layout.journal.open("a", encoding="utf-8") as journal, \
            _progress_bar(console, len(manifest.lines), len(manifest.lines) - len(items)) as advance:

        def record(results: Iterable[ItemResult]) -> None:
            advance(manifest.add_built(results, items, journal))

        try:
            pool.run_chunks(items, config, workers, record)
        finally:
            shutil.rmtree(layout.spill, ignore_errors=True)


class _Manifest:
    """The manifest's lines in index order (JSON strings: compact however many composites)."""

    def __init__(self, plans: Sequence[CompositePlan], fingerprints: Mapping[Path, str], settings_id: str,
                 subset: str) -> None:
        self.plans, self.fingerprints, self.settings_id, self.subset = plans, fingerprints, settings_id, subset
        self.lines: list[str | None] = [None] * len(plans)
        self.sizes: list[tuple[int, int]] = [(0, 0)] * len(plans)
        self._items: dict[int, WorkItem] | None = None
        self.thumbnails: dict[str, Thumbnail] = {}
        """Thumbnails the workers made of the preview's composites, by manifest `file`."""

    def add_reused(self, entries: Iterable[ManifestEntry]) -> None:
        for entry in entries:
            self.lines[entry.index] = entry.model_dump_json(exclude_none=True)
            self.sizes[entry.index] = entry.size

    def add_built(self, results: Iterable[ItemResult], items: Sequence[WorkItem], journal: IO[str]) -> int:
        """Record workers' results and append them to the journal; return how many."""
        if self._items is None:
            self._items = {item.index: item for item in items}
        done = 0
        for index, size, nbytes, digest, left_size, right_size, thumbnail, middle_sizes in results:
            plan, item = self.plans[index], self._items[index]
            file = f"{self.subset}/{item.image_name}"
            if thumbnail is not None:
                self.thumbnails[file] = thumbnail
            records = [SourceRecord(path=str(image.path), size=source_size, fingerprint=self.fingerprints[image.path])
                       for image, source_size in zip(plan.members, (left_size, *middle_sizes, right_size),
                                                     strict=True)]
            entry = ManifestEntry(
                index=index,
                file=file,
                caption=item.caption,
                left=records[0],
                right=records[-1],
                middle=tuple(records[1:-1]) or None,
                size=size,
                bytes=nbytes,
                sha256=digest,
                settings=self.settings_id,
                padded_to=item.pad_to,
            )
            line = entry.model_dump_json(exclude_none=True)
            journal.write(line + "\n")
            self.lines[index] = line
            self.sizes[index] = size
            done += 1
        journal.flush()
        return done

    def text(self) -> str:
        return "".join(line + "\n" for line in self.lines if line is not None)


def head_entries(lines: Sequence[str | None]) -> list[ManifestEntry]:
    """The preview's entries: the first `PREVIEW_ITEMS` composites that exist."""
    return [ManifestEntry.model_validate_json(line) for line in lines[:PREVIEW_ITEMS] if line is not None]


@contextmanager
def _progress_bar(console: Console | None, total: int, done: int,
                  what: str = "composites") -> Iterator[Callable[[int], None]]:
    progress = Progress(
        TextColumn(what),
        BarColumn(),
        MofNCompleteColumn(),
        _RateColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=console is None,
        transient=False,
        refresh_per_second=4,  # rich's 10 redraws a second cost ~3% of a core, taken from the workers on few cores
    )
    with progress:
        task = progress.add_task("build", total=total, completed=done)
        yield lambda count: progress.advance(task, count)


class _RateColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:.1f} composites/s" if speed else "- composites/s", style="progress.data.speed")


# ---------------------------------------------------------------- disk: what is there before the build


def scene_settings(settings: CompositeSettings, characters: Sequence[Character], segmented: Path,
                   console: Console | None = None) -> scene.SceneConfig | None:
    """The workers' scene settings, with every source's mask found (or the error naming those without); with
    --segment, the images without one are segmented first, into `segmented`."""
    if settings.style != "scene":
        return None
    if settings.segment and (jobs := masks.to_segment(characters, settings.masks, segmented)):
        segment.require_segmenter()
        with _progress_bar(console, len(jobs), 0, "masks") as advance:
            segment.segment_images(jobs, advance)
    refs = masks.require_masks(characters, settings.masks, segmented if settings.segment else None)
    backgrounds = tuple(list_images(settings.backgrounds)) if settings.backgrounds else ()
    if settings.backgrounds and not backgrounds:
        raise DatasetError(f"--backgrounds {settings.backgrounds}: no images there",
                           hint="pass a folder of .png/.jpg/.webp background images")
    return scene.SceneConfig(
        masks={str(path): ref for path, ref in refs.items()}, background=settings.background_rgb,
        kind=settings.scene_background, backgrounds=backgrounds, max_overlap=settings.max_overlap,
        flip=settings.flip, background_weight=settings.background_loss_weight, max_side=settings.max_side,
        seed=settings.seed)


def _source_fingerprints(plans: Sequence[CompositePlan], mask_refs: Mapping[str, masks.MaskRef] | None = None,
                         ) -> dict[Path, str]:
    """Each source's fingerprint; a scene source's includes its mask file's, so an edited mask rebuilds."""
    fingerprints: dict[Path, str] = {}
    for plan in plans:
        for path in (image.path for image in plan.members):
            if path not in fingerprints:
                try:
                    fingerprints[path] = file_fingerprint(path)
                    ref = (mask_refs or {}).get(str(path))
                    if ref is not None and ref.kind != "alpha":
                        fingerprints[path] += "+" + file_fingerprint(ref.path)
                except FileNotFoundError as exc:
                    raise DatasetError(
                        f"source image {path} disappeared during prepare", hint="re-run prepare"
                    ) from exc
    return fingerprints


def _file_sizes(folder: Path) -> dict[str, int]:
    with os.scandir(folder) as entries:
        return {entry.name: entry.stat().st_size for entry in entries if entry.is_file()}


def _previous_entries(layout: RunDir) -> dict[int, ManifestEntry]:
    """The last manifest's entries, overridden by a killed build's journal."""
    entries = _read_lines(layout.manifest)
    entries.update(_read_lines(layout.journal))
    return entries


def _read_lines(path: Path) -> dict[int, ManifestEntry]:
    """Entries by index from a manifest or journal; torn or foreign lines (after kill -9) are skipped."""
    found: dict[int, ManifestEntry] = {}
    if not path.is_file():
        return found
    with path.open("rb") as fh:
        for raw in fh:
            try:
                entry = ManifestEntry.model_validate_json(raw)
            except (ValidationError, ValueError):
                continue
            found[entry.index] = entry
    return found


def _tidy_subset_folders(layout: RunDir, subset: Path, pattern: re.Pattern[str]) -> tuple[list[Path], int]:
    """Strays out, the subset folder in place, a killed run's temporaries gone: (strays, images removed)."""
    strays = move_strays(layout, subset, pattern)
    removed = _prepare_subset_dir(subset, pattern)
    remove_stale_temporaries(subset)
    remove_stale_temporaries(layout.root)
    return strays, removed


def _prepare_subset_dir(subset: Path, pattern: re.Pattern[str]) -> int:
    """Move a previous `{k}_composite/` to the new repeats name (outputs stay reusable); clear other ones."""
    removed = 0
    composites = subset.parent
    others = (
        sorted(p for p in composites.iterdir() if p.is_dir() and p != subset and re.fullmatch(r"\d+_composite", p.name))
        if composites.is_dir()
        else []
    )
    if others and not subset.exists():
        others[0].rename(subset)
        others = others[1:]
    for old in others:
        removed += _remove_owned(old, pattern, keep=frozenset())
        remove_stale_temporaries(old)
        if not any(old.iterdir()):
            old.rmdir()
    subset.mkdir(parents=True, exist_ok=True)
    return removed


def move_strays(layout: RunDir, subset: Path, pattern: re.Pattern[str]) -> list[Path]:
    """Move every file of a composite subset folder that this build would not write to `.1to2/strays/`.

    sd-scripts trains every image in the folder: a file the manifest does not own must never ride along.
    """
    composites = subset.parent
    folders = [p for p in composites.iterdir() if p.is_dir() and re.fullmatch(r"\d+_composite", p.name)] \
        if composites.is_dir() else []
    moved: list[Path] = []
    for folder in sorted(folders):
        for child in sorted(folder.iterdir()):
            if pattern.match(child.name) or child.name.startswith(TMP_PREFIX):
                continue
            target = layout.strays / folder.name / child.name
            counter = 1
            while target.exists():
                target = layout.strays / folder.name / f"{child.stem}.{counter}{child.suffix}"
                counter += 1
            target.parent.mkdir(parents=True, exist_ok=True)
            child.rename(target)
            moved.append(target)
    return moved


def _remove_owned(folder: Path, pattern: re.Pattern[str], keep: frozenset[str]) -> int:
    """Delete files this build owns that the plan no longer names; return how many images went."""
    removed = 0
    for child in folder.iterdir():
        if child.name not in keep and pattern.match(child.name) and child.is_file():
            child.unlink()
            removed += child.suffix.lstrip(".") in compose.EXTENSIONS.values()
    return removed


def read_manifest(run_dir: Path) -> list[ManifestEntry]:
    """The manifest of a built run directory, in index order."""
    entries = _read_lines(RunDir(run_dir).manifest)
    return [entries[index] for index in sorted(entries)]
