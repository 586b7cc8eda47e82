"""Pre-flight: find every source file that would crash or silently mistrain sd-scripts, before training.

Each check mirrors what the pinned sd-scripts does with the file (library/train_util.py): captions are
read as UTF-8 only and an empty caption file is an AssertionError (`read_caption`); images are opened
with Pillow without EXIF transposition and decoded only when their batch loads (`load_image`), so a
truncated file crashes mid-training. All problems are reported at once, each naming its file.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import warnings
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError
from rich.table import Table

from kohya_1to2 import kohya
from kohya_1to2.dataset.captions import split_tags
from kohya_1to2.dataset.compose import EXIF_ORIENTATION, RGB, has_transparent_pixels, is_sixteen_bit, load_source
from kohya_1to2.dataset.scan import Problem, RegScan, ScanResult, Severity, apply_policy, decode_caption
from kohya_1to2.errors import DatasetError
from kohya_1to2.fsutil import TMP_PREFIX, link_or_copy
from kohya_1to2.models import Character, SourceImage, SourceSettings

__all__ = ["Problem", "preflight", "raise_for_errors", "render_problems_table", "sort_problems", "write_fixed_sources"]

POOL_THRESHOLD = 64
"""Below this many images a process pool costs more to start than it saves."""

BATCH_SIZE = 16
"""Images per pool task: amortises pickling without starving the progress callback."""


FIXED_BY_FLAG = "--fix-sources trains stage 1 on a corrected copy under <run>/sources/"


# ---------------------------------------------------------------- images (run in worker processes)


def _megapixels(pixels: int) -> str:
    return f"{pixels / 1e6:.1f} MP"


def inspect_image(path: Path) -> list[Problem]:
    """Open and fully decode one image once; what sd-scripts' Pillow would choke on becomes a Problem.

    The pixel limit is Pillow's MAX_IMAGE_PIXELS, as sd-scripts runs with it: above it Pillow warns of a
    decompression bomb (and loading costs a lot of memory), above twice it refuses to open the file.
    """

    def problem(severity: Severity, code: str, message: str, fix: str, fixable: bool = False) -> Problem:
        return Problem(severity=severity, code=code, path=path, message=message, fix=fix, fixable=fixable)

    try:
        size = path.stat().st_size
    except OSError as exc:
        return [problem("error", "unreadable", f"cannot read the file ({exc.strerror or exc})",
                        "fix the file or the broken link, or remove it")]
    if size == 0:
        return [problem("error", "zero-byte", "empty file (0 bytes)", "replace it with the real image or delete it")]

    found: list[Problem] = []
    max_pixels = Image.MAX_IMAGE_PIXELS
    downscale = "downscale it, e.g. to 4096 px on the long side"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(path) as image:
                width, height = image.size
                if max_pixels is not None and width * height > max_pixels:
                    found.append(problem(
                        "warning", "very-large",
                        f"{width}x{height} = {_megapixels(width * height)} is over Pillow's "
                        f"{_megapixels(max_pixels)} decompression-bomb warning limit; loading it costs a lot of memory",
                        downscale,
                    ))
                frames = getattr(image, "n_frames", 1)
                orientation = image.getexif().get(EXIF_ORIENTATION, 1)
                image.load()
                mode, sixteen_bit, transparent = image.mode, is_sixteen_bit(image), has_transparent_pixels(image)
        except Image.DecompressionBombError as exc:
            return [problem("error", "too-large", f"too large for Pillow, sd-scripts cannot open it ({exc})",
                            downscale)]
        except UnidentifiedImageError:
            return [problem("error", "not-an-image",
                            f"Pillow cannot read it: unsupported format, or not an image despite '{path.suffix}'",
                            "convert it to PNG/JPEG/WebP or remove it")]
        except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError... for broken data
            return [problem("error", "corrupt-image",
                            f"cannot be decoded, sd-scripts would crash when its batch loads ({exc})",
                            "re-export or re-download the image, or remove it")]
    return found + _decoded_warnings(problem, frames, orientation, mode, sixteen_bit, transparent)


def _decoded_warnings(problem: Callable[..., Problem], frames: int, orientation: object, mode: str,
                      sixteen_bit: bool, transparent: bool) -> list[Problem]:
    """What a fully decoded image may still train differently from how it looks."""
    found: list[Problem] = []
    if frames > 1:
        found.append(problem("warning", "animated", f"animated image ({frames} frames): the first frame is used",
                             "save the frame you want as a still PNG"))
    if orientation not in (None, 1):
        found.append(problem(
            "warning", "exif-rotated",
            f"EXIF orientation {orientation}: sd-scripts ignores EXIF orientation, so it is trained sideways",
            "use --fix-sources (trains on a transposed copy) or re-save it upright", fixable=True,
        ))
    # sd-scripts' load_image is a bare convert("RGB"); the composites decode with compose.to_rgb instead
    if sixteen_bit:
        found.append(problem(
            "warning", "sixteen-bit",
            f"16-bit greyscale (mode {mode}): sd-scripts' convert('RGB') clips it to near white in stage 1, "
            "while the composites scale it to 8 bits",
            "use --fix-sources (stage 1 trains on an 8-bit copy, the pixels the composites show) "
            "or re-save it as 8-bit", fixable=True,
        ))
    if transparent:
        found.append(problem(
            "warning", "transparency",
            f"transparent pixels (mode {mode}): sd-scripts drops alpha and trains the colours hidden under it "
            "in stage 1, while the composites flatten it on --background",
            "use --fix-sources (stage 1 trains on a copy flattened on --background, as the composites show it) "
            "or flatten it yourself", fixable=True,
        ))
    return found


def _set_pixel_limit(max_pixels: int | None) -> None:
    """Pool initializer: a spawned worker gets the parent's Pillow limit, not the import-time default."""
    Image.MAX_IMAGE_PIXELS = max_pixels


def _inspect_batch(paths: Sequence[Path]) -> list[list[Problem]]:
    return [inspect_image(path) for path in paths]


def inspect_images(
    paths: Sequence[Path], progress: Callable[[int], None] | None = None, workers: int = 1
) -> list[list[Problem]]:
    """Problems per image, in input order; a spawn process pool when there are many images."""
    results: list[list[Problem]] = [[] for _ in paths]
    if len(paths) <= POOL_THRESHOLD or workers < 2:
        for index, path in enumerate(paths):
            results[index] = inspect_image(path)
            if progress:
                progress(1)
        return results
    batches = [range(start, min(start + BATCH_SIZE, len(paths))) for start in range(0, len(paths), BATCH_SIZE)]
    # spawn, not fork: the caller may be running progress-bar threads, which fork would copy mid-state
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_set_pixel_limit, initargs=(Image.MAX_IMAGE_PIXELS,)) as pool:
        futures = {pool.submit(_inspect_batch, [paths[i] for i in batch]): batch for batch in batches}
        try:
            for future in as_completed(futures):
                batch = futures[future]
                for index, found in zip(batch, future.result(), strict=True):
                    results[index] = found
                if progress:
                    progress(len(batch))
        except BaseException:  # Ctrl-C: do not wait for the queued batches
            pool.shutdown(wait=False, cancel_futures=True)
            raise
    return results


# ---------------------------------------------------------------- captions (cheap, in this process)


def inspect_caption(image: SourceImage, settings: SourceSettings, trigger: str) -> list[Problem]:
    """What sd-scripts' `read_caption` does with this image's caption (or its absence)."""
    fixed = settings.fix_sources
    if image.caption_path is None:
        return [Problem(
            severity="warning", code="missing-caption", path=image.path, fixable=True,
            message=f"no caption file {image.path.stem}{settings.caption_extension}: "
                    "trained with an empty caption, without its trigger",
            fix=FIXED_BY_FLAG + f" with the caption '{trigger}'" if fixed
            else f"write one starting with '{trigger}', or use --fix-sources to add the trigger "
                 "(taken from the folder name with --trigger-from folder)",
        )]
    path = image.caption_path
    try:
        data = path.read_bytes()
    except OSError as exc:
        return [Problem(severity="error", code="caption-unreadable", path=path,
                        message=f"cannot read the caption ({exc.strerror or exc})", fix="fix the file permissions")]
    if not data:
        return [Problem(severity="error", code="empty-caption", path=path,
                        message="empty caption file: sd-scripts stops with AssertionError "
                                f"'{kohya.EMPTY_CAPTION_ASSERTION}'",
                        fix=f"write the tags into it, starting with '{trigger}'")]
    text = decode_caption(data, settings.caption_encoding)
    if text is None:
        return [Problem(
            severity="error", code="caption-encoding", path=path,
            message=f"caption is not valid UTF-8 nor {settings.caption_encoding} (UnicodeDecodeError)",
            fix="re-save it as UTF-8, or pass --caption-encoding with its real encoding (e.g. cp1252) "
                "together with --fix-sources",
        )]
    problems = []
    if decode_caption(data, kohya.CAPTION_ENCODING) is None:
        # sd-scripts opens captions with encoding="utf-8" whatever we were told
        problems.append(Problem(
            severity="warning" if fixed else "error", code="caption-not-utf8", path=path, fixable=True,
            message=f"caption is not UTF-8 (read as --caption-encoding {settings.caption_encoding}), but sd-scripts "
                    "reads captions as UTF-8 only (UnicodeDecodeError)",
            fix=FIXED_BY_FLAG + " re-encoded as UTF-8" if fixed else "re-save it as UTF-8, or add --fix-sources",
        ))
    if not split_tags(text, settings.caption_separator):
        # sd-scripts v0.10.1 read_caption: the file has a line, so no assertion; lines[0].strip() is "" and the
        # image trains with an empty caption (tests/integration/test_captions_sd_scripts.py): as wrong as the
        # empty file, only silent
        blank = not text.strip()
        problems.append(Problem(
            severity="error", code="empty-caption" if blank else "caption-no-tags", path=path,
            message=("caption file holds only whitespace" if blank else "the caption's first line has no tags")
                    + ": sd-scripts reads only its first line and trains the image with none of its tags (an "
                      "empty caption)",
            fix=f"put the tags on the first line, starting with '{trigger}'",
        ))
    return problems


# ---------------------------------------------------------------- the whole pre-flight


def dataset_problems(result: ScanResult) -> list[Problem]:
    """Problems of the dataset as a whole."""
    if len(result.characters) >= 2:
        return []
    names = ", ".join(c.name for c in result.characters) or "none"
    roots = ", ".join(str(root) for root in result.settings.roots)
    return [Problem(
        severity="error", code="nothing-to-pair", path=None,
        message=f"nothing to pair: {len(result.characters)} character(s) with images ({names}) in {roots}; "
                "composites need at least 2",
        fix="add another N_name/ character folder (e.g. 1_bob/) with images and captions",
    )]


def preflight(
    result: ScanResult,
    settings: SourceSettings,
    progress: Callable[[int], None] | None = None,
    workers: int = 1,
) -> list[Problem]:
    """Every problem of every image and caption, and of the dataset as a whole, errors first.

    The scan's own problems stay in `result.problems` (show both). Each image is decoded exactly once;
    `progress(n)` is called as n more images are done.
    """
    pairs = [(image, character.trigger) for character in result.characters for image in character.images]
    per_image = inspect_images([image.path for image, _ in pairs], progress=progress, workers=workers)
    problems = dataset_problems(result)
    for (image, trigger), found in zip(pairs, per_image, strict=True):
        problems += found
        problems += inspect_caption(image, settings, trigger)
    return sort_problems(apply_policy(problems, settings))


def preflight_reg(
    reg: RegScan, settings: SourceSettings, progress: Callable[[int], None] | None = None, workers: int = 1,
) -> list[Problem]:
    """The `--reg` images and captions checked like the sources; an image without a caption is fine (sd-scripts
    gives it the class as its caption)."""
    images = [image for reg_set in reg.sets for image in reg_set.images]
    per_image = inspect_images([image.path for image in images], progress=progress, workers=workers)
    problems: list[Problem] = [*reg.problems]
    for image, found, owner in zip(images, per_image, (s.name for s in reg.sets for _ in s.images), strict=True):
        problems += found
        if image.caption_path is not None:
            problems += inspect_caption(image, settings, owner)
    return sort_problems(apply_policy(problems, settings))


def sort_problems(problems: Iterable[Problem]) -> list[Problem]:
    """Errors first, then by file, so the first line printed is the first thing to fix."""
    return sorted(problems, key=lambda p: (p.severity != "error", str(p.path or "")))


def raise_for_errors(problems: Sequence[Problem]) -> None:
    """One-line DatasetError (count + first error) if any problem is an error; the caller prints the list."""
    errors = [problem for problem in problems if problem.severity == "error"]
    if errors:
        first = errors[0]
        where = f"{first.path}: " if first.path is not None else ""
        more = f" ({len(errors) - 1} more listed above)" if len(errors) > 1 else ""
        raise DatasetError(f"{len(errors)} dataset error(s): {where}{first.message}{more}", hint=first.fix or None)


def render_problems_table(problems: Sequence[Problem]) -> Table:
    """All problems, one row each, for the terminal."""
    table = Table(title=f"{len(problems)} source problem(s)")
    for column in ("severity", "file", "problem", "fix"):
        table.add_column(column, overflow="fold")  # a file's path wraps whole
    for problem in problems:
        style = "red" if problem.severity == "error" else "yellow"
        table.add_row(f"[{style}]{problem.severity}[/]", str(problem.path or ""), problem.message, problem.fix)
    return table


# ---------------------------------------------------------------- --fix-sources


def _write_transposed(source: Path, target: Path) -> None:
    with Image.open(source) as image:
        upright = ImageOps.exif_transpose(image)
        fmt = image.format or "PNG"
        options = {"quality": 95} if fmt in ("JPEG", "WEBP") else {}
        upright.save(target, format=fmt, exif=upright.getexif(), **options)


LOSSLESS_SAVE: dict[str, dict[str, object]] = {"PNG": {}, "WEBP": {"lossless": True, "exact": True}, "BMP": {}}
"""Formats a flattened copy keeps (same file name), with the options that store its pixels exactly."""

PIXEL_FIXES = frozenset({"sixteen-bit", "transparency"})


def _write_flattened(source: Path, target: Path, background: RGB) -> None:
    """The source exactly as the composites decode it (`compose.load_source`), saved losslessly as 8-bit RGB,
    so sd-scripts' `load_image` of the copy returns the same pixels as the composite half before resizing."""
    with Image.open(source) as image:
        fmt = image.format if image.format in LOSSLESS_SAVE else "PNG"
    rgb = load_source(source, background)
    rgb.info.clear()  # no ICC profile: compose would apply it to the copy, sd-scripts would not
    rgb.save(target, format=fmt, **LOSSLESS_SAVE[fmt])


def _fixed_character(character: Character, fixable: dict[Path, set[str]], settings: SourceSettings,
                     background: RGB, staging: Path, final: Path) -> Character:
    """Write the corrected folder into `staging`; the returned character points into `final`."""
    staging.mkdir(parents=True)
    images = []
    for image in character.images:
        new_path = staging / image.path.name
        codes = fixable.get(image.path, set())
        if codes & PIXEL_FIXES or "exif-rotated" in codes:
            try:
                if codes & PIXEL_FIXES:  # load_source also turns it upright
                    _write_flattened(image.path, new_path, background)
                else:
                    _write_transposed(image.path, new_path)
            except Exception as exc:  # decoded fine in pre-flight, so this is rare (disk full, file changed)
                raise DatasetError(f"{image.path}: cannot write its corrected copy ({exc})",
                                   hint="run prepare again, or fix the image by hand") from None
        else:
            link_or_copy(image.path, new_path)
        new_caption: Path | None = None
        if image.caption_path is not None:
            new_caption = staging / image.caption_path.name
            if "caption-not-utf8" in fixable.get(image.caption_path, set()):
                text = image.caption_path.read_bytes().decode(settings.caption_encoding)
                new_caption.write_bytes(text.encode("utf-8"))
            else:
                link_or_copy(image.caption_path, new_caption)
        elif "missing-caption" in fixable.get(image.path, set()):
            new_caption = staging / (new_path.stem + settings.caption_extension)
            new_caption.write_text(character.trigger + "\n", encoding="utf-8")
        images.append(image.model_copy(update={
            "path": final / new_path.name,
            "caption_path": None if new_caption is None else final / new_caption.name,
        }))
    return character.model_copy(update={"folder": final, "images": tuple(images)})


def write_fixed_sources(result: ScanResult, problems: Sequence[Problem], run_dir: Path,
                        background: RGB) -> ScanResult:
    """With `fix_sources`, copy each affected character folder to `<run>/sources/N_name/`, corrected.

    16-bit and transparent images are flattened on `background` (the composites' colour). Originals are
    only read. Unaffected files are hardlinked (or copied), so a subset stays one folder.
    Returns the scan result with those characters pointing at the copies.
    """
    if not result.settings.fix_sources:
        return result
    fixable: dict[Path, set[str]] = {}
    for problem in problems:
        if problem.fixable and problem.path is not None:
            fixable.setdefault(problem.path, set()).add(problem.code)
    sources_dir = run_dir / "sources"
    real_sources = Path(os.path.realpath(sources_dir))
    characters = []
    wanted: set[str] = set()
    for character in result.characters:
        paths = {p for image in character.images for p in (image.path, image.caption_path) if p is not None}
        if not paths & fixable.keys():
            characters.append(character)
            continue
        real_folder = Path(os.path.realpath(character.folder))
        if real_folder == real_sources or real_sources in real_folder.parents:
            raise DatasetError(f"source folder {character.folder} is inside the run's sources/ copy folder",
                               hint="choose an --out directory outside the source dataset")
        final = sources_dir / character.folder.name
        staging = sources_dir / (TMP_PREFIX + character.folder.name)
        shutil.rmtree(staging, ignore_errors=True)
        fixed = _fixed_character(character, fixable, result.settings, background, staging, final)
        if final.exists():
            shutil.rmtree(final)
        os.replace(staging, final)
        wanted.add(final.name)
        characters.append(fixed)
    if sources_dir.is_dir():
        for stale in sources_dir.iterdir():  # copies from an earlier run that no longer need fixing
            if stale.is_dir() and stale.name not in wanted:
                shutil.rmtree(stale)
    return result.model_copy(update={"characters": tuple(characters)})
