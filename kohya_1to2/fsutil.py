"""Small filesystem helpers of the imperative shell: atomic writes, free names, hashing."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from kohya_1to2.errors import SetupError

TMP_PREFIX = ".tmp-1to2-"

_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
MACHINE_ERRNOS = (*_FULL, errno.EROFS)
"""OS errors that are never the data's or the program's fault: the CLI reports them as environment errors."""


def write_error(path: Path | str, exc: OSError) -> SetupError:
    """An OS error while writing `path` as the one-line environment error the CLI prints (exit 5): disk full,
    quota, read-only or permission problems belong to the machine, not to the data."""
    reason = exc.strerror or str(exc)
    if exc.errno in _FULL:
        hint = "free some space on that drive (or --out a run directory on another one), then re-run"
    elif exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        hint = "make the folder writable (or --out a run directory elsewhere), then re-run"
    else:
        hint = "check the drive, then re-run (finished work is kept)"
    return SetupError(f"cannot write {path}: {reason}", hint=hint)


def _create_temporary(final: Path) -> tuple[int, Path]:
    """A new, empty temporary file beside `final` (its folder made if missing): (open fd, path)."""
    while True:
        tmp = final.parent / f"{TMP_PREFIX}{secrets.token_hex(6)}{final.suffix}"
        try:
            # 0o666 filtered by the umask, like any normal file (mkstemp would force 0o600).
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp
        except FileExistsError:
            continue
        except FileNotFoundError:
            final.parent.mkdir(parents=True, exist_ok=True)


@contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """Yield a temporary path beside `final`; rename it over `final` only if the block succeeds.

    A reader (or a re-run after kill -9) therefore never sees a partial file under its final name.
    """
    fd, tmp = _create_temporary(final)
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(final: Path, data: bytes) -> None:
    """`atomic_path`'s guarantee in the fewest system calls (a build writes two files per composite)."""
    try:
        fd, tmp = _create_temporary(final)
    except OSError as exc:
        raise write_error(final, exc) from exc
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, final)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise write_error(final, exc) from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(final: Path, text: str) -> None:
    atomic_write_bytes(final, text.encode("utf-8"))


def file_fingerprint(path: Path) -> str:
    """Size + modification time in ns: changes whenever the file is rewritten, costs one stat (the reuse key
    of composites, stage inputs, seam scores, thumbnails and base models)."""
    stat = path.stat()
    return f"{stat.st_size}:{stat.st_mtime_ns}"


def jsonl_records(text: str) -> list[dict[str, Any]]:
    """The JSON objects of a JSON-lines text (manifest, metrics); a line that is not one is skipped, as a reader
    of a file another process may be appending to must."""
    records = []
    for line in text.splitlines():
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            records.append(value)
    return records


def free_path(folder: Path, stem: str, suffix: str = "") -> Path:
    """`folder/<stem><suffix>`, or `<stem>-1<suffix>`, `-2`... if taken: a backup never overwrites an earlier one."""
    path = folder / f"{stem}{suffix}"
    counter = 1
    while path.exists():
        path = folder / f"{stem}-{counter}{suffix}"
        counter += 1
    return path


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def remove_stale_temporaries(folder: Path) -> int:
    """Delete temp files a killed run left behind; they never carry a final name."""
    removed = 0
    if folder.is_dir():
        for leftover in folder.glob(TMP_PREFIX + "*"):
            leftover.unlink(missing_ok=True)
            removed += 1
    return removed


def link_or_copy(source: Path, target: Path) -> None:
    """Hard link when possible (no extra space; every writer of ours replaces files, never edits them, so a link
    never changes a source), else a copy; an existing target is kept."""
    if target.exists():
        return
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)
