"""Build the stage-2 composite folder: parallel workers, atomic writes, incremental re-runs, a manifest.

Writes (paths from `RunDir`): the composite subset (images + captions named `000042_alice__bob.png`), the
manifest (one line per composite: sources, fingerprints, output size and hash), the preview, and while a build
runs its journal and the spill of decoded sources.

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
import signal
import struct
import sys
import threading
from collections import Counter, OrderedDict
from collections.abc import Callable, Hashable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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

from kohya_1to2 import errors
from kohya_1to2.dataset import captions, compose
from kohya_1to2.errors import DatasetError, Interrupted, OneToTwoError
from kohya_1to2.fsutil import TMP_PREFIX, atomic_write_bytes, atomic_write_text, remove_stale_temporaries
from kohya_1to2.models import Character, CompositePlan, CompositeSettings, Job
from kohya_1to2.rundir import RunDir

BUILD_VERSION = "compose-2"
"""Bump when compose.py's pixels or encoding change: every output is then rebuilt."""

CHUNK_SIZE = 12
"""Composites per worker task: small enough for a smooth progress bar and a quick Ctrl-C."""
SOURCE_GROUP = 8
"""Sources per scheduling group: a task's composites draw from two groups, so <= 16 distinct sources."""
CACHE_BYTES = 32 * 1024 * 1024
"""Per-worker decoded-source cache (about 10 sources of 1000x1000): bounds memory whatever the budget;
misses are cheap (a raw read from the spill, ~1 ms/MP) when the spill is on."""
PREVIEW_ITEMS = 12
SPILL_MAX_BYTES = 8 * 1024**3


# ---------------------------------------------------------------- manifest records


class SourceRecord(BaseModel):
    """One side of a composite: the source file, its pixel size and a cheap change fingerprint."""

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
    size: tuple[int, int]
    bytes: int
    sha256: str
    settings: str


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
    strays: list[Path] = field(default_factory=list)
    """Files found in subset folders that this run did not write, moved to `.1to2/strays/` (new places)."""
    entries_head: list[ManifestEntry] = field(default_factory=list)


def source_fingerprint(path: Path) -> str:
    """Size + modification time in ns: changes whenever the file is rewritten, costs one stat."""
    stat = path.stat()
    return f"{stat.st_size}:{stat.st_mtime_ns}"


def settings_fingerprint(settings: CompositeSettings) -> str:
    """Hash of everything that changes an output's bytes (not budget/seed/captions/repeats)."""
    relevant = {
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
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]


def owned_file_pattern(caption_extension: str) -> re.Pattern[str]:
    """Names this build writes (images and captions); anything else in the folder is left alone."""
    suffixes = "|".join(re.escape("." + ext) for ext in compose.EXTENSIONS.values())
    return re.compile(rf"^\d{{6,}}_.+__.+(?:{suffixes}|{re.escape(caption_extension)})$")


# ---------------------------------------------------------------- scheduling (pure)


@dataclass(frozen=True)
class WorkItem:
    """What a worker needs for one composite: paths only, never pixels."""

    index: int
    left: str
    right: str
    image_name: str
    caption_name: str
    caption: str


def schedule(
    items: Sequence[WorkItem], chunk_size: int = CHUNK_SIZE, group: int = SOURCE_GROUP
) -> list[list[WorkItem]]:
    """Chunks ordered so composites sharing sources land together and a worker's cache keeps hitting.

    Sources are ranked and cut into groups; composites are sorted by (left group, right group) in a snake
    order: in a dense plan a chunk stays within one block of 2 x `group` sources, and consecutive chunks
    share their left group.
    """
    ranks = {path: n for n, path in enumerate(sorted({p for item in items for p in (item.left, item.right)}))}

    def key(item: WorkItem) -> tuple[int, int, int]:
        left_group, right_group = ranks[item.left] // group, ranks[item.right] // group
        return (left_group, right_group if left_group % 2 == 0 else -right_group, item.index)

    ordered = sorted(items, key=key)
    return [ordered[start : start + chunk_size] for start in range(0, len(ordered), chunk_size)]


def first_items_first(chunks: Sequence[list[WorkItem]], below: int) -> list[list[WorkItem]]:
    """Composites with an index below `below` pulled into one leading chunk (the preview can then be made
    while the rest builds); the other chunks keep their order."""
    head = sorted((item for chunk in chunks for item in chunk if item.index < below), key=lambda item: item.index)
    rest = [kept for chunk in chunks if (kept := [item for item in chunk if item.index >= below])]
    return [head, *rest] if head else rest


def taper(chunks: Sequence[list[WorkItem]], workers: int) -> list[list[WorkItem]]:
    """The same items in the same order, the last chunks cut smaller (guided scheduling): each chunk is at
    most 1/(2 x workers) of what is left, so workers finish together instead of one running a whole last
    chunk while the others idle. Early chunks keep their size (and cache locality)."""
    split = max(0, len(chunks) - 2 * workers) if workers > 1 else len(chunks)
    result = list(chunks[:split])
    remaining = [item for chunk in chunks[split:] for item in chunk]
    while remaining:
        size = max(1, min(CHUNK_SIZE, -(-len(remaining) // (2 * workers))))
        result.append(remaining[:size])
        remaining = remaining[size:]
    return result


# ---------------------------------------------------------------- worker side


@dataclass(frozen=True)
class WorkerConfig:
    background: tuple[int, int, int]
    gap: int
    max_side: int | None
    format: str
    quality: int
    cache_bytes: int = CACHE_BYTES
    subset_dir: str = "."
    spill_dir: str | None = None
    spill_sources: frozenset[str] = frozenset()


ItemResult = tuple[int, tuple[int, int], int, str, tuple[int, int], tuple[int, int]]
"""(index, output size, output bytes, sha256, left source size, right source size)"""


class SourceCache:
    """Bounded LRU of decoded sources, by bytes of pixels: memory stays flat however many composites."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[Hashable, Any] = OrderedDict()
        self._bytes = 0
        self.loads = 0

    def get(self, key: Hashable, loader: Callable[[Any], Any]) -> Any:
        """`loader(key)` -> (image, extra), computed once while the entry stays in the cache."""
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        value = loader(key)
        self.loads += 1
        self._items[key] = value
        self._bytes += _pixel_bytes(value[0])
        while self._bytes > self.max_bytes and len(self._items) > 1:
            _, (evicted, _) = self._items.popitem(last=False)
            self._bytes -= _pixel_bytes(evicted)
        return value


def _pixel_bytes(image: Any) -> int:
    return int(image.width * image.height * len(image.getbands()))


_worker_config: WorkerConfig | None = None
_worker_cache: SourceCache | None = None
_worker_stop: Any = None


def _init_worker(config: WorkerConfig, stop: Any = None, ignore_sigint: bool = True) -> None:
    """Per-process state; SIGINT is left to the parent, which stops workers through `stop`."""
    global _worker_config, _worker_cache, _worker_stop
    if ignore_sigint:  # a pool worker (in-process builds run in prepare itself)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        _die_with_parent()
    _worker_config, _worker_cache, _worker_stop = config, SourceCache(config.cache_bytes), stop


def _die_with_parent() -> None:
    """Linux: the kernel kills this worker when its parent (the forkserver, see forkserver_guard) dies.

    Without it a `kill -9` of prepare leaves workers writing composites into a run nobody owns any more.
    """
    if _libc is not None and hasattr(_libc, "prctl"):
        _libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG (not imported: forkserver_guard arms on import)
        if os.getppid() == 1:  # the parent died before the call took effect
            os._exit(1)


def _release_freed_memory() -> None:
    """Give freed image buffers back to the OS between chunks.

    glibc raises its mmap threshold after the first big free, so later multi-MB buffers live on the heap and
    stay there once freed (worker RSS grew by ~80 MB). Trimming per chunk costs far less than forcing every
    buffer through mmap (which cost ~18% CPU).
    """
    if _libc is not None:
        _libc.malloc_trim(0)


def _load_libc() -> Any:
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim  # noqa: B018  (glibc only)
        return libc
    except (OSError, AttributeError):
        return None


_libc = _load_libc() if sys.platform.startswith("linux") else None


_SPILL_HEADER = struct.Struct("<4I")


def _spill_path(key: str) -> Path | None:
    """Where a decoded source (key = path) or a resized one (path + size) is shared; None: not shared."""
    if _worker_config is None or _worker_config.spill_dir is None:
        return None
    if key.split("\n", 1)[0] not in _worker_config.spill_sources:
        return None  # used by one composite only: writing it would cost more than it saves
    return Path(_worker_config.spill_dir) / (hashlib.sha1(key.encode("utf-8")).hexdigest() + ".rgb")


def _spilled(key: str, make: Callable[[], tuple[Any, tuple[int, int]]]) -> tuple[Any, tuple[int, int]]:
    """Decoded pixels shared by all workers through raw files: each source is decoded (and each pair
    height resized) once per build instead of once per worker and cache miss; a read costs ~1 ms/MP."""
    from PIL import Image

    path = _spill_path(key)
    if path is not None:
        try:
            data = path.read_bytes()
            width, height, source_w, source_h = _SPILL_HEADER.unpack_from(data)
            image = Image.frombytes("RGB", (width, height), data[_SPILL_HEADER.size :])
            return image, (source_w, source_h)
        except (FileNotFoundError, struct.error, ValueError):
            pass
    image, source_size = make()
    if path is not None:
        atomic_write_bytes(path, _SPILL_HEADER.pack(*image.size, *source_size) + image.tobytes())
    return image, source_size


def _init_worker_reset() -> None:
    global _worker_config, _worker_cache, _worker_stop
    _worker_config, _worker_cache, _worker_stop = None, None, None


def _load(path: str) -> tuple[Any, tuple[int, int]]:
    def decode() -> tuple[Any, tuple[int, int]]:
        assert _worker_config is not None
        image = compose.load_source(Path(path), _worker_config.background, _worker_config.max_side)
        return image, image.info.get(compose.SOURCE_SIZE_KEY, image.size)

    return _spilled(path, decode)


def _build_one(item: WorkItem) -> ItemResult:
    assert _worker_config is not None and _worker_cache is not None
    config = _worker_config
    left, left_size = _worker_cache.get(item.left, _load)
    right, right_size = _worker_cache.get(item.right, _load)
    layout = compose.pair_layout(left.size, right.size, config.gap, config.max_side)
    halves = [_fitted(_worker_cache, path, image, size)
              for path, image, size in ((item.left, left, layout.left), (item.right, right, layout.right))]
    data = compose.encode_pair(halves[0], halves[1], layout, config.background, config.format, config.quality)
    atomic_write_bytes(Path(config.subset_dir, item.image_name), data)
    atomic_write_text(Path(config.subset_dir, item.caption_name), item.caption + "\n")
    return (item.index, layout.size, len(data), hashlib.sha256(data).hexdigest(), left_size, right_size)


def _fitted(cache: SourceCache, path: str, image: Any, size: tuple[int, int]) -> Any:
    """A source resized for one pair height; cached too, since a source meets the same few heights often."""
    if image.size == size:
        return image
    key = f"{path}\n{size[0]}x{size[1]}"
    return cache.get(key, lambda _: _spilled(key, lambda: (compose.fit(image, size), size)))[0]


ChunkError = tuple[str, str, str | None]
"""(error class name in kohya_1to2.errors, message, hint): picklable, raised again in the parent."""


def _build_chunk(chunk: list[WorkItem]) -> tuple[list[ItemResult], ChunkError | None]:
    """Build a chunk; stop early if the parent asked; a user-facing error is returned, not raised."""
    assert _worker_config is not None
    results: list[ItemResult] = []
    for item in chunk:
        if _worker_stop is not None and _worker_stop.is_set():
            break
        try:
            results.append(_build_one(item))
        except OneToTwoError as exc:
            return results, (type(exc).__name__, exc.message, exc.hint)
        except OSError as exc:  # disk full, permissions: the run directory, not the data, is the problem
            where = Path(_worker_config.subset_dir, item.image_name)
            return results, ("SetupError", f"cannot write composite {where}: {exc.strerror or exc}",
                             "check free disk space and write permission of the run directory")
    _release_freed_memory()
    return results, None


# ---------------------------------------------------------------- main side


class _RateColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:.1f} composites/s" if speed else "- composites/s", style="progress.data.speed")


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


def _default_workers(settings: CompositeSettings) -> int:
    if settings.workers:
        return settings.workers
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def _prepare_subset_dir(run_dir: Path, subset: Path, pattern: re.Pattern[str]) -> int:
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
        removed += _remove_owned(old, pattern, keep=set())
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


def _remove_owned(folder: Path, pattern: re.Pattern[str], keep: set[str]) -> int:
    """Delete files this build owns that the plan no longer names; return how many images went."""
    removed = 0
    for child in folder.iterdir():
        if child.name not in keep and pattern.match(child.name) and child.is_file():
            child.unlink()
            removed += child.suffix.lstrip(".") in compose.EXTENSIONS.values()
    return removed


def _shared_sources(items: Sequence[WorkItem]) -> frozenset[str]:
    uses = Counter(p for item in items for p in (item.left, item.right))
    return frozenset(path for path, count in uses.items() if count > 1)


def _spill_fits(items: Sequence[WorkItem], max_side: int | None, run_dir: Path) -> bool:
    """Spill decoded sources to disk only if (pixels of every source + one resized copy) fit the budget."""
    from PIL import Image

    total = 0
    for path in sorted({p for item in items for p in (item.left, item.right)}):
        try:
            with Image.open(path) as image:
                width, height = image.size
        except (OSError, ValueError):
            continue  # the worker reports it properly
        if max_side is not None and max(width, height) > max_side:
            scale = max_side / max(width, height)
            width, height = int(width * scale) + 1, int(height * scale) + 1
        total += 2 * 3 * width * height
    free = shutil.disk_usage(run_dir).free
    return total <= min(SPILL_MAX_BYTES, free // 4)


def _caption_ok(path: Path, caption: str) -> bool:
    try:
        return path.stat().st_size == len((caption + "\n").encode("utf-8"))
    except FileNotFoundError:
        return False


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
) -> BuildResult:
    """Make `run_dir/composites/{repeats}_composite/` match `plans`, reusing what is still valid."""
    settings = job.composites
    run_dir = run_dir.resolve()
    layout = RunDir(run_dir)
    subset = layout.composite_subset(settings.repeats)
    caption_ext = job.sources.caption_extension
    pattern = owned_file_pattern(caption_ext)
    manifest_path = layout.manifest
    journal_path = layout.journal
    settings_id = settings_fingerprint(settings)
    by_name = {c.name: c for c in characters}

    strays = move_strays(layout, subset, pattern)
    removed = _prepare_subset_dir(run_dir, subset, pattern)
    remove_stale_temporaries(subset)
    remove_stale_temporaries(run_dir)

    candidates: dict[int, ManifestEntry] = {}
    if force:
        journal_path.unlink(missing_ok=True)
    else:
        candidates = _read_lines(manifest_path)
        candidates.update(_read_lines(journal_path))

    fingerprints: dict[Path, str] = {}

    def fingerprint(path: Path) -> str:
        if path not in fingerprints:
            try:
                fingerprints[path] = source_fingerprint(path)
            except FileNotFoundError as exc:
                raise DatasetError(
                    f"source image {path} disappeared during prepare", hint="re-run prepare"
                ) from exc
        return fingerprints[path]

    lines: list[str | None] = [None] * len(plans)
    sizes: list[tuple[int, int]] = [(0, 0)] * len(plans)
    to_build: list[WorkItem] = []
    expected_names: set[str] = set()
    reused = 0
    preview_stale = False
    interned: dict[str, str] = {}  # one string per source path, however many composites use it

    for position, plan in enumerate(plans):
        if plan.index != position:
            raise ValueError(f"plans must be in index order; plan {plan.index} at position {position}")
        try:
            left, right = by_name[plan.left.character], by_name[plan.right.character]
        except KeyError as exc:
            raise DatasetError(f"composite {plan.index} names an unknown character {exc.args[0]!r}") from exc
        name = compose.composite_name(plan.index, left.name, right.name, settings.format)
        caption_name = Path(name).with_suffix(caption_ext).name
        expected_names.update((name, caption_name))
        caption = captions.composite_caption(left, right, plan.left, plan.right, settings.captions)
        rel_file = f"{subset.relative_to(run_dir).as_posix()}/{name}"
        old = candidates.get(plan.index)
        if (
            old is not None
            and Path(old.file).name == name
            and old.settings == settings_id
            and old.left.path == str(plan.left.path)
            and old.right.path == str(plan.right.path)
            and old.left.fingerprint == fingerprint(plan.left.path)
            and old.right.fingerprint == fingerprint(plan.right.path)
            and (subset / name).is_file()
            and (subset / name).stat().st_size == old.bytes
        ):
            entry = old
            if old.caption != caption or old.file != rel_file or not _caption_ok(subset / caption_name, caption):
                atomic_write_text(subset / caption_name, caption + "\n")
                entry = old.model_copy(update={"caption": caption, "file": rel_file})
                preview_stale |= plan.index < PREVIEW_ITEMS
            lines[position] = entry.model_dump_json()
            sizes[position] = entry.size
            reused += 1
            continue
        preview_stale |= plan.index < PREVIEW_ITEMS
        to_build.append(
            WorkItem(
                index=plan.index,
                left=interned.setdefault(str(plan.left.path), str(plan.left.path)),
                right=interned.setdefault(str(plan.right.path), str(plan.right.path)),
                image_name=name,
                caption_name=caption_name,
                caption=caption,
            )
        )
    del candidates

    removed += _remove_owned(subset, pattern, keep=expected_names)

    preview_path = layout.preview
    want_preview = bool(plans) and (preview_stale or force or not preview_path.is_file())
    head_count = min(PREVIEW_ITEMS, len(plans))
    early_preview: _Background | None = None

    def preview_when_ready() -> None:
        """Called as results come in (pool only): once the first composites exist, make the preview in a
        background thread while the workers go on, instead of serially after the last chunk."""
        nonlocal early_preview
        if want_preview and early_preview is None and all(line is not None for line in lines[:head_count]):
            from kohya_1to2.dataset.preview import contact_sheet

            entries = [ManifestEntry.model_validate_json(line) for line in lines[:head_count] if line is not None]

            def make_preview() -> None:
                contact_sheet(entries, preview_path, max_items=PREVIEW_ITEMS)
                _release_freed_memory()  # the decoded composites' buffers, or the main process keeps ~20 MB

            early_preview = _Background(make_preview)

    if to_build:
        journal_path.parent.mkdir(parents=True, exist_ok=True)
        with journal_path.open("a", encoding="utf-8") as journal:

            def record(results: Iterable[ItemResult]) -> int:
                done = 0
                for index, size, nbytes, digest, left_size, right_size in results:
                    plan = plans[index]
                    entry = ManifestEntry(
                        index=index,
                        file=f"{subset.relative_to(run_dir).as_posix()}/{items_by_index[index].image_name}",
                        caption=items_by_index[index].caption,
                        left=SourceRecord(path=str(plan.left.path), size=left_size,
                                          fingerprint=fingerprint(plan.left.path)),
                        right=SourceRecord(path=str(plan.right.path), size=right_size,
                                           fingerprint=fingerprint(plan.right.path)),
                        size=size,
                        bytes=nbytes,
                        sha256=digest,
                        settings=settings_id,
                    )
                    line = entry.model_dump_json()
                    journal.write(line + "\n")
                    lines[index] = line
                    sizes[index] = size
                    done += 1
                journal.flush()
                return done

            items_by_index = {item.index: item for item in to_build}
            spill = layout.spill
            shutil.rmtree(spill, ignore_errors=True)  # a killed run's leftovers
            use_spill = _spill_fits(to_build, settings.max_side, run_dir)
            config = WorkerConfig(
                background=settings.background_rgb,
                gap=settings.gap,
                max_side=settings.max_side,
                format=settings.format,
                quality=settings.quality,
                cache_bytes=cache_bytes,
                subset_dir=str(subset),
                spill_dir=str(spill) if use_spill else None,
                spill_sources=_shared_sources(to_build),
            )
            try:
                _run_work(to_build, config, workers or _default_workers(settings), record, console, reused,
                          len(plans), preview_when_ready if want_preview else None)
            except BaseException:
                if early_preview is not None:
                    early_preview.join(reraise=False)
                raise
            finally:
                shutil.rmtree(spill, ignore_errors=True)

    atomic_write_text(manifest_path, "".join(line + "\n" for line in lines if line is not None))
    journal_path.unlink(missing_ok=True)

    head = [ManifestEntry.model_validate_json(line) for line in lines[:PREVIEW_ITEMS] if line is not None]
    if early_preview is not None:
        early_preview.join()
    elif head and want_preview:
        from kohya_1to2.dataset.preview import contact_sheet

        contact_sheet(head, preview_path, max_items=PREVIEW_ITEMS)
    return BuildResult(
        subset_dir=subset,
        manifest_path=manifest_path,
        count=len(plans),
        sizes=sizes,
        reused=reused,
        written=len(to_build),
        removed=removed,
        preview_path=preview_path if head else None,
        entries_head=head,
        strays=strays,
    )


class _Background:
    """A function run on a thread; `join` waits and raises what it raised."""

    def __init__(self, target: Callable[[], object]) -> None:
        self._target = target
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="1to2-preview", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._target()
        except BaseException as exc:  # handed to the joining thread
            self._error = exc

    def join(self, reraise: bool = True) -> None:
        self._thread.join()
        if reraise and self._error is not None:
            raise self._error


def _run_work(
    items: list[WorkItem],
    config: WorkerConfig,
    workers: int,
    record: Callable[[Iterable[ItemResult]], int],
    console: Console | None,
    already: int,
    total: int,
    on_results: Callable[[], None] | None = None,
) -> None:
    """Run the chunks in-process (one worker or a tiny job) or on a process pool, with a progress bar.

    On the pool, the first composites (the preview's) go first and `on_results` is called after each
    finished chunk; the last chunks are cut smaller so the workers finish together.
    """
    chunks = schedule(items)
    progress = Progress(
        TextColumn("composites"),
        BarColumn(),
        MofNCompleteColumn(),
        _RateColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=console is None,
        transient=False,
    )
    error: ChunkError | None = None
    with progress:
        task = progress.add_task("build", total=total, completed=already)
        if workers <= 1 or len(chunks) <= 2:
            _init_worker(config, None, ignore_sigint=False)
            try:
                for chunk in chunks:
                    results, error = _build_chunk(chunk)
                    progress.advance(task, record(results))
                    if error:
                        break
            except KeyboardInterrupt:
                raise _interrupted() from None
            finally:
                _init_worker_reset()  # drop the cached images: this is the caller's process
        else:
            chunks = taper(first_items_first(chunks, PREVIEW_ITEMS) if on_results else chunks, workers)

            def advance(results: Iterable[ItemResult]) -> None:
                progress.advance(task, record(results))
                if on_results is not None:
                    on_results()

            error = _run_pool(chunks, config, workers, advance)
    if error:
        kind, message, hint = error
        raise getattr(errors, kind, OneToTwoError)(message, hint=hint)


def _run_pool(
    chunks: list[list[WorkItem]],
    config: WorkerConfig,
    workers: int,
    record: Callable[[Iterable[ItemResult]], object],
) -> ChunkError | None:
    import multiprocessing

    # Never plain fork (the parent runs a progress-bar thread). forkserver: one clean process imports this
    # module and the encoder once, and workers fork from it; spawn where forkserver does not exist.
    context: Any
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["kohya_1to2.dataset.forkserver_guard", "kohya_1to2.dataset.build"])
    else:
        context = multiprocessing.get_context("spawn")
    stop = context.Event()
    executor = ProcessPoolExecutor(
        max_workers=min(workers, len(chunks)), mp_context=context, initializer=_init_worker, initargs=(config, stop)
    )
    error: ChunkError | None = None
    pending: set[Future[Any]] = set()
    try:
        # Keep a bounded window of tasks in flight so memory does not grow with the number of chunks.
        queue = iter(chunks)
        window = workers * 4
        for chunk in queue:
            pending.add(executor.submit(_build_chunk, chunk))
            if len(pending) >= window:
                break
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                results, chunk_error = future.result()
                record(results)
                error = error or chunk_error
            if error:
                stop.set()
                continue
            for chunk in queue:
                pending.add(executor.submit(_build_chunk, chunk))
                if len(pending) >= window:
                    break
    except KeyboardInterrupt:
        stop.set()
        for future in pending:
            future.cancel()
        # Running chunks stop after their current composite; keep what they finished.
        for future in pending:
            if not future.cancelled():
                try:
                    results, _ = future.result()
                    record(results)
                except Exception:
                    pass
        executor.shutdown(wait=True, cancel_futures=True)
        raise _interrupted() from None
    finally:
        executor.shutdown(wait=True, cancel_futures=True)
    return error


def _interrupted() -> Interrupted:
    return Interrupted(
        "composite build interrupted; finished composites are kept",
        hint="re-run the same prepare command to continue where it stopped",
    )


def read_manifest(run_dir: Path) -> list[ManifestEntry]:
    """The manifest of a built run directory, in index order."""
    entries = _read_lines(RunDir(run_dir).manifest)
    return [entries[index] for index in sorted(entries)]
