"""Atomic writes: a failed write leaves neither a partial final file nor a temporary."""

from __future__ import annotations

import errno
import os
import re
import stat
from pathlib import Path

import pytest

from kohya_1to2.errors import SetupError
from kohya_1to2.fsutil import (
    TMP_PREFIX,
    atomic_path,
    atomic_write_bytes,
    atomic_write_text,
    free_path,
    remove_stale_temporaries,
    sha256_file,
)


def test_atomic_write_replaces_whole_file(tmp_path):
    target = tmp_path / "a" / "file.txt"
    atomic_write_text(target, "one")
    atomic_write_text(target, "two")
    assert target.read_text() == "two"
    assert [p.name for p in target.parent.iterdir()] == ["file.txt"]


def test_failure_inside_the_block_keeps_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "file.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert not list(tmp_path.glob(TMP_PREFIX + "*"))


def test_a_write_that_fails_keeps_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "file.bin"
    target.write_bytes(b"old")

    def full_disk(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(SetupError, match=f"cannot write {re.escape(str(target))}: No space") as raised:
        atomic_write_bytes(target, b"new")
    assert raised.value.exit_code == 5 and "free some space" in (raised.value.hint or "")
    assert target.read_bytes() == b"old"
    assert not list(tmp_path.glob(TMP_PREFIX + "*"))


def test_disk_full_during_prepare_is_one_environment_error_naming_the_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 19: ENOSPC while prepare writes (composites, captions, TOMLs) is exit 5 with the path, and nothing
    partial is left under a final name."""
    from kohya_1to2.cli import main

    example = Path(__file__).resolve().parents[1] / "examples" / "dataset"
    real_fdopen, writes = os.fdopen, []

    class FullDisk:
        def __init__(self, fd: int, mode: str) -> None:
            self.fh = real_fdopen(fd, mode)

        def __enter__(self) -> FullDisk:
            return self

        def __exit__(self, *exc: object) -> None:
            self.fh.close()

        def write(self, data: bytes) -> int:
            writes.append(data)
            if len(writes) > 5:
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.fh.write(data)

    monkeypatch.setattr("kohya_1to2.fsutil.os.fdopen", FullDisk)
    out = tmp_path / "run"
    assert main(["prepare", str(example), "--out", str(out), "--workers", "1"]) == 5
    err = " ".join(capsys.readouterr().err.split())
    assert err.startswith(f"error: cannot write {out}") and "No space left on device" in err, err
    assert "internal error" not in err and "free some space" in err
    assert not [p for p in out.rglob("*") if p.is_file() and p.name.startswith(TMP_PREFIX)]


def test_an_os_error_nobody_named_is_still_an_environment_error_at_the_cli_edge(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from kohya_1to2.cli import main

    def read_only(*_: object) -> None:
        raise OSError(errno.EROFS, "Read-only file system", str(tmp_path / "x"))

    monkeypatch.setattr("kohya_1to2.commands.plan.plans_from_run_dir", read_only)
    (tmp_path / "stage1.train.toml").write_text("", encoding="utf-8")
    assert main(["plan", str(tmp_path)]) == 5
    assert f"cannot write {tmp_path / 'x'}: Read-only file system" in capsys.readouterr().err


def test_new_files_get_normal_permissions(tmp_path):
    previous = os.umask(0o022)
    try:
        target = tmp_path / "f.txt"
        atomic_write_text(target, "x")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(target.stat().st_mode) == 0o644


def test_stale_temporaries_are_removed_and_hash_is_sha256(tmp_path):
    (tmp_path / f"{TMP_PREFIX}abc.png").write_bytes(b"partial")
    (tmp_path / "keep.png").write_bytes(b"abc")
    assert remove_stale_temporaries(tmp_path) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["keep.png"]
    assert sha256_file(tmp_path / "keep.png") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_free_path_numbers_a_taken_name_before_its_suffix(tmp_path):
    assert free_path(tmp_path, "stage1.20260101", ".log") == tmp_path / "stage1.20260101.log"
    (tmp_path / "stage1.20260101.log").write_text("a")
    (tmp_path / "stage1.20260101-1.log").write_text("b")
    assert free_path(tmp_path, "stage1.20260101", ".log") == tmp_path / "stage1.20260101-2.log"
    assert free_path(tmp_path, "other") == tmp_path / "other"
