"""Atomic writes: a failed write leaves neither a partial final file nor a temporary."""

from __future__ import annotations

import os
import stat

import pytest

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
    with pytest.raises(OSError, match="No space"):
        atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"old"
    assert not list(tmp_path.glob(TMP_PREFIX + "*"))


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
