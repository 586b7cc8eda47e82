"""The run directory: its layout, ownership, and the writer lock."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kohya_1to2.errors import UsageError
from kohya_1to2.rundir import (
    RunDir,
    check_out_dir,
    claim,
    current_writer,
    foreign_files,
    unowned_subset_files,
    writer_lock,
)


def test_layout_names_every_path_under_the_root(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    paths = [run.job_file, run.manifest, run.preview, run.sample_prompts, run.composite_subset(3),
             run.train_toml(2), run.dataset_toml(1), run.output_dir(1), run.log(2), run.marker, run.lock_file,
             run.generated, run.backups, run.strays, run.journal, run.spill, run.effective_toml(1),
             run.completion_record(2), run.attempt_record(1), run.hf_home, run.fixed_sources]
    assert all(p.is_relative_to(tmp_path) for p in paths)
    assert len(set(paths)) == len(paths)
    assert run.composite_subset(3).name == "3_composite"


def test_a_foreign_folder_with_files_the_run_would_write_is_refused(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "out")
    (run.composite_subset(1)).mkdir(parents=True)
    (run.composite_subset(1) / "holiday.png").write_bytes(b"x")
    run.job_file.write_text("{}")
    (run.root / "unrelated.md").write_text("kept")
    assert foreign_files(run) == [run.job_file, run.composite_subset(1) / "holiday.png"]
    with pytest.raises(UsageError, match=r"holiday\.png") as caught:
        claim(run, "prepare")
    assert "job.json" in caught.value.message and not run.marker.exists()


def test_an_unrelated_folder_is_claimed_and_then_owned(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    (tmp_path / "notes.md").write_text("mine")
    claim(run, "prepare")
    assert run.is_run_dir() and json.loads(run.marker.read_text())["created_by"] == "prepare"
    run.job_file.write_text("{}")
    assert foreign_files(run) == [], "a run directory owns its paths"
    claim(run, "prepare")


def test_out_problems_are_one_line_usage_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    file = tmp_path / "file"
    file.write_text("x")
    with pytest.raises(UsageError, match="is a file"):
        check_out_dir(file)
    with pytest.raises(UsageError, match="not a directory"):
        check_out_dir(file / "below")
    check_out_dir(tmp_path / "new" / "deeper")
    locked = tmp_path / "locked"
    locked.mkdir()
    # root may write anywhere, so the permission answer is stubbed: what matters is that it is asked first
    asked: list[Path] = []
    monkeypatch.setattr(os, "access", lambda path, mode: asked.append(Path(path)) is not None)
    with pytest.raises(UsageError, match="not writable"):
        check_out_dir(locked / "run" / "deeper")
    assert asked == [locked], "the nearest existing folder is the one that must be writable"


def test_an_unwritable_out_is_a_one_line_error_before_the_preflight(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from sample_images import write_image

    from kohya_1to2.cli import main

    for name in ("alice", "bob"):
        write_image(tmp_path / "src" / f"1_{name}" / f"{name}.png")
        (tmp_path / "src" / f"1_{name}" / f"{name}.txt").write_text(f"{name}, solo\n")
    scanned: list[object] = []
    monkeypatch.setattr("kohya_1to2.dataset.scan.scan_sources", lambda *a: scanned.append(a))
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    assert main(["prepare", str(tmp_path / "src"), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "not writable" in err and "Traceback" not in err and scanned == []


HOLDER = """\
import sys, time
from pathlib import Path
from kohya_1to2.rundir import RunDir, writer_lock
with writer_lock(RunDir(Path(sys.argv[1])), "prepare"):
    print("locked", flush=True)
    time.sleep(60)
"""


def test_a_second_writer_is_refused_naming_the_first_and_a_killed_holder_frees_the_lock(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        in_use = rf"run dir in use by prepare \(pid {holder.pid}, since \d\d:\d\d\)"
        with pytest.raises(UsageError, match=in_use), writer_lock(run, "launch"):
            pass
        assert current_writer(run) is not None and f"pid {holder.pid}" in str(current_writer(run))
    finally:
        holder.kill()  # SIGKILL: no clean-up code runs, the kernel drops the lock
        holder.wait()
    assert current_writer(run) is None
    with writer_lock(run, "launch"):
        assert json.loads(run.lock_file.read_text())["command"] == "launch"


def test_the_lock_is_not_inherited_by_children(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    with writer_lock(run, "launch"):
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        time.sleep(0.2)
        assert current_writer(run) is None, "a training child must not keep the run dir locked"
    finally:
        child.kill()
        child.wait()


def test_unowned_subset_files_are_those_the_manifest_does_not_list(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    subset = run.composite_subset(1)
    subset.mkdir(parents=True)
    for name in ("000000_a__b.png", "000000_a__b.txt", "holiday.png", "holiday.txt"):
        (subset / name).write_text("x")
    run.manifest.write_text(json.dumps({"file": "composites/1_composite/000000_a__b.png"}) + "\n")
    assert unowned_subset_files(run, ".txt") == [subset / "holiday.png", subset / "holiday.txt"]
