"""The composite build's workers: chunk scheduling, the process pool, per-worker state, the spill, stopping.

The parent hands out chunks of `WorkItem`s (paths only, never pixels) and gets back `ItemResult`s; a worker
writes each composite and its caption itself (atomically). A user-facing error in a worker comes back as a
`WorkerFailure` record (plain data), and the parent raises it as the matching `OneToTwoError` class.

Memory per worker is bounded: a byte-bounded LRU of decoded sources (`CACHE_BYTES`), one chunk of composites
at a time, and the heap trimmed after each chunk. Pool start-up does not grow with the worker count: the
forkserver imports this module (and the PNG encoder) once, workers fork from it on demand, and nothing heavy
is imported per worker. This module's imports stay free of pydantic (`models`): the forkserver imports them
before the first worker can start.
"""

from __future__ import annotations

import ctypes
import hashlib
import itertools
import multiprocessing
import os
import shutil
import signal
import struct
import sys
from collections import Counter, OrderedDict
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from kohya_1to2.dataset import compose, preview, scene
from kohya_1to2.errors import (
    CheckError,
    DatasetError,
    Interrupted,
    OneToTwoError,
    SetupError,
    TrainingError,
    UsageError,
)
from kohya_1to2.fsutil import atomic_write_bytes, atomic_write_text

CHUNK_SIZE = 12
"""Composites per worker task: small enough for a smooth progress bar and a quick Ctrl-C."""
SOURCE_GROUP = 8
"""Sources per scheduling group: a task's composites draw from two groups, so <= 16 distinct sources."""
CACHE_BYTES = 32 * 1024 * 1024
"""Per-worker decoded-source cache (about 10 sources of 1000x1000): bounds a worker's memory whatever the
budget; misses are cheap (a raw read from the spill) when the spill is on."""
SPILL_MAX_BYTES = 8 * 1024**3
WINDOW_PER_WORKER = 4
"""Chunks in flight per worker: keeps every worker fed while memory does not grow with the number of chunks."""

FORKSERVER_PRELOAD = ["kohya_1to2.dataset.forkserver_guard", "kohya_1to2.dataset.pool"]
"""Imported once by the forkserver, inherited by every worker. The guard must come first (it arms the
forkserver's death with prepare) and must never be imported by prepare itself."""
ENCODER_PRELOAD = ["numpy", "cv2"]
"""Also preloaded when OpenCV is the PNG encoder: each worker would otherwise import it on its first
composite (CPU and private memory per worker); prepare itself never imports it."""


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
    thumbnail: bool = False
    """On the preview: the worker also returns its thumbnail, made from the pixels it has (for PNG)."""
    pad_to: tuple[int, int] | None = None
    """A bucket (w, h) whose aspect the composite is padded to (compose.pad_to_aspect), or its own aspect."""
    middle: tuple[str, ...] = ()
    """A group's members between `left` and `right` (none for a pair)."""

    @property
    def members(self) -> tuple[str, ...]:
        """Every source, left to right."""
        return (self.left, *self.middle, self.right)


ItemResult = tuple[int, tuple[int, int], int, str, tuple[int, int], tuple[int, int], preview.Thumbnail | None,
                   tuple[tuple[int, int], ...]]
"""(index, output size, output bytes, sha256, left source size, right source size, thumbnail or None, the middle
members' source sizes)"""


def schedule(
    items: Sequence[WorkItem], chunk_size: int = CHUNK_SIZE, group: int = SOURCE_GROUP
) -> list[list[WorkItem]]:
    """Chunks ordered so composites sharing sources land together and a worker's cache keeps hitting.

    Sources are ranked and cut into groups; composites are sorted by (left group, right group) in a snake
    order (then by the middle members' groups): in a dense plan a chunk stays within one block of 2 x `group`
    sources, and consecutive chunks share their left group.
    """
    ranks = {path: n for n, path in enumerate(sorted({p for item in items for p in item.members}))}

    def key(item: WorkItem) -> tuple[int, ...]:
        left_group, right_group = ranks[item.left] // group, ranks[item.right] // group
        middle = (ranks[path] // group for path in item.middle)
        return (left_group, right_group if left_group % 2 == 0 else -right_group, *middle, item.index)

    ordered = sorted(items, key=key)
    return [ordered[start : start + chunk_size] for start in range(0, len(ordered), chunk_size)]


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


def shared_sources(items: Sequence[WorkItem]) -> frozenset[str]:
    """Sources used by more than one composite: only these are worth spilling."""
    uses = Counter(p for item in items for p in item.members)
    return frozenset(path for path, count in uses.items() if count > 1)


def spill_fits(items: Sequence[WorkItem], max_side: int | None, run_dir: Path) -> bool:
    """Spill decoded sources to disk only if (pixels of every source + one resized copy) fit the budget."""
    total = 0
    for path in sorted({p for item in items for p in item.members}):
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


# ---------------------------------------------------------------- errors as data


ERROR_BY_EXIT_CODE: dict[int, type[OneToTwoError]] = {
    cls.exit_code: cls for cls in (UsageError, DatasetError, CheckError, SetupError, TrainingError, Interrupted)
}
"""Each error class has its own exit code, so the code alone says which class to raise again."""


@dataclass(frozen=True)
class WorkerFailure:
    """A user-facing error raised in a worker, as plain picklable data (the exception classes need not be)."""

    exit_code: int
    message: str
    hint: str | None = None

    @classmethod
    def of(cls, error: OneToTwoError) -> WorkerFailure:
        return cls(error.exit_code, error.message, error.hint)

    def error(self) -> OneToTwoError:
        """The exception to raise in the parent."""
        return ERROR_BY_EXIT_CODE.get(self.exit_code, OneToTwoError)(self.message, hint=self.hint)


def interrupted() -> Interrupted:
    return Interrupted(
        "composite build interrupted; finished composites are kept",
        hint="re-run the same prepare command to continue where it stopped",
    )


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
    scene: scene.SceneConfig | None = None
    """Set for scene composites (`--composite-style scene`): cut-outs on one canvas instead of halves."""


class SourceCache:
    """Bounded LRU of decoded sources, by bytes of pixels: memory stays flat however many composites."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[Hashable, Any] = OrderedDict()
        self._bytes = 0
        self.loads = 0
        self.sizes: dict[str, tuple[tuple[int, int], tuple[int, int]]] = {}
        """(decoded size, source size) per source, kept whatever is evicted: a few bytes each."""

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
    """Bytes of pixels of a Pillow image or a numpy array (a half kept in OpenCV's form)."""
    nbytes = getattr(image, "nbytes", None)
    return int(nbytes) if nbytes is not None else int(image.width * image.height * len(image.getbands()))


_worker_config: WorkerConfig | None = None
_worker_cache: SourceCache | None = None
_worker_stop: Any = None


def _init_worker(config: WorkerConfig, stop: Any = None, pool_worker: bool = True) -> None:
    """Per-process state; SIGINT is left to the parent, which stops pool workers through `stop`."""
    global _worker_config, _worker_cache, _worker_stop
    if pool_worker:  # in-process builds run in prepare itself: never arm its death, never ignore its Ctrl-C
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        _die_with_parent()
        _one_thread_per_worker()
    _worker_config, _worker_cache, _worker_stop = config, SourceCache(config.cache_bytes), stop


def _one_thread_per_worker() -> None:
    """The pool already runs one worker per core: OpenCV's own thread pool in every worker would start
    workers x cores threads that fight for the same cores. Threads do not change the encoded bytes."""
    cv2 = sys.modules.get("cv2")  # preloaded by the forkserver when it is the encoder
    if cv2 is not None and hasattr(cv2, "setNumThreads"):
        cv2.setNumThreads(1)


def _reset_worker() -> None:
    global _worker_config, _worker_cache, _worker_stop
    _worker_config, _worker_cache, _worker_stop = None, None, None


def _die_with_parent() -> None:
    """Linux: the kernel kills this worker when its parent (the forkserver, see forkserver_guard) dies.

    Without it a `kill -9` of prepare leaves workers writing composites into a run nobody owns any more.
    """
    if _libc is not None and hasattr(_libc, "prctl"):
        _libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG (not imported: forkserver_guard arms on import)
        if os.getppid() == 1:  # the parent died before the call took effect
            os._exit(1)


def release_freed_memory() -> None:
    """Give freed image buffers back to the OS between chunks.

    glibc raises its mmap threshold after the first big free, so later multi-MB buffers live on the heap and
    stay there once freed. Trimming per chunk costs far less than forcing every buffer through mmap.
    """
    if _libc is not None:
        _libc.malloc_trim(0)


def _load_libc() -> Any:
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim  # noqa: B018  (glibc only)
        return libc
    except (OSError, AttributeError):
        return None


_libc = _load_libc() if sys.platform.startswith("linux") else None


_SPILL_HEADER = struct.Struct("<4I")
"""A spilled RGB source: width, height, source width, source height; then the pixels."""
_CUTOUT_HEADER = struct.Struct("<5I")
"""A spilled RGBA cut-out: width, height, source width, source height, touches the bottom edge; then the pixels."""


def _spill_path(key: str) -> Path | None:
    """Where a decoded source (key = path), a resized one (path + size) or a cut-out (path + "cutout") is
    shared; None: not shared."""
    if _worker_config is None or _worker_config.spill_dir is None:
        return None
    if key.split("\n", 1)[0] not in _worker_config.spill_sources:
        return None  # used by one composite only: writing it would cost more than it saves
    return Path(_worker_config.spill_dir) / (hashlib.sha1(key.encode("utf-8")).hexdigest() + ".rgb")


def _resized_key(path: str, size: tuple[int, int]) -> str:
    return f"{path}\n{size[0]}x{size[1]}"


def _read_raw(path: Path | None, header: struct.Struct, channels: int) -> tuple[bytes, tuple[int, ...]] | None:
    """(file bytes, header fields) of a spill file whose first two fields are its pixel size, or None if there
    is none (yet) or it is cut short."""
    if path is None:
        return None
    try:
        data = path.read_bytes()
        fields = header.unpack_from(data)
    except (FileNotFoundError, struct.error):
        return None
    if len(data) != header.size + channels * fields[0] * fields[1]:
        return None
    return data, fields


def _read_spill(path: Path | None) -> tuple[bytes, tuple[int, int], tuple[int, int]] | None:
    """(file bytes, pixel size, source size) of a spilled RGB source, or None if there is none (yet)."""
    hit = _read_raw(path, _SPILL_HEADER, 3)
    if hit is None:
        return None
    data, (width, height, source_w, source_h) = hit
    return data, (width, height), (source_w, source_h)


def _write_spill(path: Path, size: tuple[int, int], source_size: tuple[int, int], pixels: bytes) -> None:
    atomic_write_bytes(path, _SPILL_HEADER.pack(*size, *source_size) + pixels)


def _spilled(key: str, make: Callable[[], tuple[Any, tuple[int, int]]]) -> tuple[Any, tuple[int, int]]:
    """Decoded pixels shared by all workers through raw files: each source is decoded (and each pair
    height resized) once per build instead of once per worker and cache miss."""
    path = _spill_path(key)
    hit = _read_spill(path)
    if hit is not None:
        data, pixel_size, source_size = hit
        return Image.frombytes("RGB", pixel_size, data[_SPILL_HEADER.size :]), source_size
    image, source_size = make()
    if path is not None:
        _write_spill(path, image.size, source_size, image.tobytes())
    return image, source_size


def _load(path: str) -> tuple[Any, tuple[int, int]]:
    def decode() -> tuple[Any, tuple[int, int]]:
        assert _worker_config is not None
        image = compose.load_source(Path(path), _worker_config.background, _worker_config.max_side)
        return image, image.info.get(compose.SOURCE_SIZE_KEY, image.size)

    return _spilled(path, decode)


def _fitted(cache: SourceCache, path: str, image: Any, size: tuple[int, int]) -> Any:
    """A source resized for one pair height; cached too, since a source meets the same few heights often."""
    if image.size == size:
        return image
    key = _resized_key(path, size)
    return cache.get(key, lambda _: _spilled(key, lambda: (compose.fit(image, size), size)))[0]


def _sizes(cache: SourceCache, path: str) -> tuple[tuple[int, int], tuple[int, int]]:
    """(decoded size, source size) of a source: remembered, else from its spill file, else decoded."""
    known = cache.sizes.get(path)
    if known is None:
        hit = _read_spill(_spill_path(path))
        if hit is not None:
            known = hit[1], hit[2]
        else:
            image, source_size = cache.get(path, _load)
            known = image.size, source_size
        cache.sizes[path] = known
    return known


def _bgr_half(cache: SourceCache, path: str, decoded: tuple[int, int], size: tuple[int, int]) -> Any:
    """A half as OpenCV's BGR array, cached: converted once per cache entry, not once per composite. From the
    spill it goes raw bytes -> array (no Pillow image on the way); only a miss there decodes or resizes."""
    resized = size != decoded
    key = _resized_key(path, size) if resized else path

    def make(_: object) -> tuple[Any, tuple[int, int]]:
        spill = _spill_path(key)
        hit = _read_spill(spill)
        if hit is not None:
            return compose.bgr_from_rgb(compose.rgb_array(hit[0], hit[1], _SPILL_HEADER.size)), size
        image = cache.get(path, _load)[0]
        if not resized:
            return compose.as_bgr(image), size
        pixels = compose.fit(image, size).tobytes()
        if spill is not None:
            _write_spill(spill, size, size, pixels)
        return compose.bgr_from_rgb(compose.rgb_array(pixels, size)), size

    return cache.get(("bgr", key), make)[0]


def _layout(item: WorkItem, sizes: Sequence[tuple[int, int]], config: WorkerConfig) -> compose.PairLayout:
    if item.pad_to is None:
        return compose.row_layout(sizes, config.gap, config.max_side)
    return compose.pad_row_to_aspect(sizes, config.gap, config.max_side, item.pad_to)


def _build_one(item: WorkItem) -> ItemResult:
    assert _worker_config is not None and _worker_cache is not None
    config, cache = _worker_config, _worker_cache
    if config.scene is not None:
        return _build_scene(item, config, cache)
    paths = item.members
    halves: list[Any]
    if compose.uses_opencv(config.format):
        sizes = [_sizes(cache, path) for path in paths]
        layout = _layout(item, [decoded for decoded, _ in sizes], config)
        halves = [_bgr_half(cache, path, decoded, size)
                  for path, (decoded, _), size in zip(paths, sizes, layout.members, strict=True)]
        source_sizes = [source_size for _, source_size in sizes]
    else:
        loaded = [cache.get(path, _load) for path in paths]
        layout = _layout(item, [image.size for image, _ in loaded], config)
        halves = [_fitted(cache, path, image, size)
                  for path, (image, _), size in zip(paths, loaded, layout.members, strict=True)]
        source_sizes = [source_size for _, source_size in loaded]
    canvas = compose.row_canvas(halves, layout, config.background, config.format)
    data = compose.encode_canvas(canvas, config.format, config.quality)
    thumbnail = None
    if item.thumbnail and compose.is_lossless(config.format):  # else the file's pixels differ: the parent decodes it
        thumbnail = preview.thumbnail_data(compose.canvas_image(canvas))
    atomic_write_bytes(Path(config.subset_dir, item.image_name), data)
    atomic_write_text(Path(config.subset_dir, item.caption_name), item.caption + "\n")
    return (item.index, layout.size, len(data), hashlib.sha256(data).hexdigest(), source_sizes[0], source_sizes[-1],
            thumbnail, tuple(source_sizes[1:-1]))


def _cutout_entry(path: str, settings: scene.SceneConfig) -> tuple[Any, scene.Cutout]:
    """A source's cut-out, shared by all workers through the spill like a decoded source: a cache miss reads
    its raw RGBA back instead of decoding the image and its mask again."""
    spill = _spill_path(f"{path}\ncutout")
    hit = _read_raw(spill, _CUTOUT_HEADER, 4)
    if hit is not None:
        data, (width, height, source_w, source_h, bottom) = hit
        image = Image.frombytes("RGBA", (width, height), data[_CUTOUT_HEADER.size:])
        cutout = scene.Cutout(image, (source_w, source_h), bool(bottom))
    else:
        cutout = scene.load_cutout(path, settings)
        if spill is not None:
            atomic_write_bytes(spill, _CUTOUT_HEADER.pack(*cutout.image.size, *cutout.source_size, cutout.bottom)
                               + cutout.image.tobytes())
    return cutout.image, cutout  # the cache counts the first item's pixels


def _build_scene(item: WorkItem, config: WorkerConfig, cache: SourceCache) -> ItemResult:
    """One scene composite: each member's cut-out (cached like a source), placed and encoded with its alpha."""
    assert config.scene is not None
    settings = config.scene
    members = [cache.get(("cutout", path), lambda key: _cutout_entry(key[1], settings))[1] for path in item.members]
    picture = scene.render_scene(members, item.image_name, settings, item.pad_to)
    data = compose.encode(picture, config.format, config.quality)
    thumbnail = preview.thumbnail_data(picture.convert("RGB")) if item.thumbnail and compose.is_lossless(
        config.format) else None
    atomic_write_bytes(Path(config.subset_dir, item.image_name), data)
    atomic_write_text(Path(config.subset_dir, item.caption_name), item.caption + "\n")
    return (item.index, picture.size, len(data), hashlib.sha256(data).hexdigest(), members[0].source_size,
            members[-1].source_size, thumbnail, tuple(m.source_size for m in members[1:-1]))


def build_chunk(chunk: list[WorkItem]) -> tuple[list[ItemResult], WorkerFailure | None]:
    """Build a chunk; stop early if the parent asked; a user-facing error is returned as data, not raised."""
    assert _worker_config is not None
    results: list[ItemResult] = []
    for item in chunk:
        if _worker_stop is not None and _worker_stop.is_set():
            break
        try:
            results.append(_build_one(item))
        except OneToTwoError as exc:
            return results, WorkerFailure.of(exc)
        except OSError as exc:  # disk full, permissions: the run directory, not the data, is the problem
            where = Path(_worker_config.subset_dir, item.image_name)
            return results, WorkerFailure(
                SetupError.exit_code,
                f"cannot write composite {where}: {exc.strerror or exc}",
                "check free disk space and write permission of the run directory",
            )
    release_freed_memory()
    return results, None


# ---------------------------------------------------------------- parent side


Record = Callable[[Iterable[ItemResult]], object]
"""Called in the parent with each finished chunk's results, in completion order."""


def run_chunks(
    items: list[WorkItem],
    config: WorkerConfig,
    workers: int,
    record: Record,
) -> None:
    """Build `items` in-process (one worker or a tiny job) or on a process pool; raise what a worker hit.

    On the pool the last chunks are cut smaller so the workers finish together.
    """
    chunks = schedule(items)
    if workers <= 1 or len(chunks) <= 2:
        failure = _run_in_process(chunks, config, record)
    else:
        failure = _run_pool(taper(chunks, workers), config, workers, record)
    if failure is not None:
        raise failure.error()


def _run_in_process(chunks: list[list[WorkItem]], config: WorkerConfig, record: Record) -> WorkerFailure | None:
    _init_worker(config, None, pool_worker=False)
    try:
        for chunk in chunks:
            results, failure = build_chunk(chunk)
            record(results)
            if failure is not None:
                return failure
    except KeyboardInterrupt:
        raise interrupted() from None
    finally:
        _reset_worker()  # drop the cached images: this is the caller's process
    return None


def _submit(executor: ProcessPoolExecutor, queue: Iterator[list[WorkItem]], count: int) -> set[Future[Any]]:
    return {executor.submit(build_chunk, chunk) for chunk in itertools.islice(queue, max(0, count))}


def _pool_context() -> Any:
    """forkserver: one clean process imports the worker code once and workers fork from it on demand (never
    plain fork: the parent runs a progress-bar thread); spawn where forkserver does not exist."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(FORKSERVER_PRELOAD + (ENCODER_PRELOAD if compose.opencv_version() else []))
    return context


def _run_pool(chunks: list[list[WorkItem]], config: WorkerConfig, workers: int, record: Record) -> WorkerFailure | None:
    context = _pool_context()
    stop = context.Event()
    executor = ProcessPoolExecutor(
        max_workers=min(workers, len(chunks)), mp_context=context, initializer=_init_worker, initargs=(config, stop)
    )
    failure: WorkerFailure | None = None
    pending: set[Future[Any]] = set()
    queue = iter(chunks)
    window = workers * WINDOW_PER_WORKER
    try:
        pending = _submit(executor, queue, window)
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                results, chunk_failure = future.result()
                record(results)
                failure = failure or chunk_failure
            if failure:
                stop.set()
            else:
                pending |= _submit(executor, queue, window - len(pending))
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
        raise interrupted() from None
    finally:
        executor.shutdown(wait=True, cancel_futures=True)
    return failure
