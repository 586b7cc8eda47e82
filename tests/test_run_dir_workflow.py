"""Trusting the run directory across `prepare` and `launch` (fake sd-scripts, real CLI): what changed is
retrained and nothing else, files the run does not own are never trained, one writer at a time, no orphans."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from fake_launch import make_fake_base_model, make_fake_sd_scripts, write_safetensors_header
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sample_images import write_image
from test_run import FAKE_TRAIN, calls
from waiting import wait_for

from kohya_1to2.cli import main
from kohya_1to2.rundir import RunDir


@pytest.fixture
def fake_sd(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    sd, shim = make_fake_sd_scripts(tmp_path_factory.mktemp("fake"), FAKE_TRAIN)
    monkeypatch.setenv("PYTHONPATH", str(shim))
    monkeypatch.setattr("kohya_1to2.commands.launch.require_sd_scripts", lambda path: Path(path))
    return sd


def make_sources(root: Path, characters: dict[str, int]) -> Path:
    for n, (name, count) in enumerate(characters.items()):
        folder = root / f"1_{name}"
        for i in range(count):
            write_image(folder / f"{name}_{i:02d}.png", (64, 96), (40 + 50 * n, 90, 200 - 40 * n))
            (folder / f"{name}_{i:02d}.txt").write_text(f"{name}, tag{i}, solo\n", encoding="utf-8")
    return root


def prepare(src: Path, out: Path, base: Path, *extra: str) -> int:
    return main(["prepare", str(src), "--out", str(out), "--base-model", str(base), "--workers", "1", *extra])


def launch(out: Path, sd: Path, *extra: str) -> int:
    return main(["launch", str(out), "--sd-scripts", str(sd), *extra])


def decisions(text: str) -> dict[int, bool]:
    """The `stage N: runs (...)` / `stage N: skipped (...)` lines launch printed."""
    found: dict[int, bool] = {}
    for line in text.splitlines():
        for stage in (1, 2):
            if line.startswith(f"stage {stage}: runs ("):
                found[stage] = True
            elif line.startswith(f"stage {stage}: skipped ("):
                found[stage] = False
    return found


@pytest.fixture
def prepared(tmp_path: Path, fake_sd: Path) -> tuple[Path, Path, Path]:
    src = make_sources(tmp_path / "src", {"alice": 2, "bob": 2, "carol": 2})
    base = make_fake_base_model(tmp_path)
    out = tmp_path / "run"
    assert prepare(src, out, base) == 0
    return src, out, base


# ------------------------------------------------------------------ Why 1: changed data is retrained


def test_edited_captions_and_a_replaced_image_retrain_both_stages_and_dry_run_agrees(
    prepared: tuple[Path, Path, Path], fake_sd: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src, out, base = prepared
    assert launch(out, fake_sd) == 0
    assert calls(out) == ["1", "2"]
    capsys.readouterr()
    for caption in (src / "1_alice").glob("*.txt"):
        caption.write_text(caption.read_text().replace("solo", "smile"))
    write_image(src / "1_bob" / "bob_00.png", (64, 96), (1, 2, 3))
    assert prepare(src, out, base) == 0
    capsys.readouterr()
    assert launch(out, fake_sd, "--dry-run") == 0
    dry = capsys.readouterr().out
    assert "stage 1: runs (2 captions changed in 1_alice; 1 image changed in 1_bob since it was trained)" in dry
    assert decisions(dry) == {1: True, 2: True}
    assert launch(out, fake_sd) == 0
    assert decisions(capsys.readouterr().out) == {1: True, 2: True}
    assert calls(out) == ["1", "2", "1", "2"]
    assert launch(out, fake_sd) == 0
    assert "stage 2: skipped (unchanged since" in capsys.readouterr().out
    assert calls(out) == ["1", "2", "1", "2"]


def test_an_interrupted_stage_says_so_and_its_log_is_kept(prepared: tuple[Path, Path, Path], fake_sd: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = prepared
    assert launch(out, fake_sd, "--stage", "1") == 0
    layout = RunDir(out)
    first_log = layout.log(1).read_text()
    layout.attempt_record(1).write_text(json.dumps({"started": time.time()}))  # as a Ctrl-C'd attempt leaves it
    capsys.readouterr()
    assert launch(out, fake_sd, "--stage", "1") == 0
    assert "stage 1: runs (the attempt started" in capsys.readouterr().out
    rotated = sorted(layout.logs.glob("stage1.*.log"))
    assert [p.read_text() for p in rotated] == [first_log], "the interrupted attempt's log is rotated, not lost"
    assert "fake training stage 1" in layout.log(1).read_text()
    assert not layout.attempt_record(1).exists()


# ------------------------------------------------------------------ Why 2: files the run does not own


def test_a_foreign_out_folder_is_refused_listing_what_would_be_overwritten(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = make_sources(tmp_path / "src", {"alice": 2, "bob": 2})
    out = tmp_path / "mine"
    (out / "composites" / "1_composite").mkdir(parents=True)
    for name, text in (("job.json", "{}"), ("manifest.jsonl", ""), ("preview.png", "png"),
                       ("composites/1_composite/holiday.png", "x"), ("composites/1_composite/holiday.txt", "x")):
        (out / name).write_text(text)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert main(["prepare", str(src), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "not a kohya-1to2 run directory" in err and "holiday.png" in err and "job.json" in err
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before, "nothing touched"


def test_a_stray_in_the_composite_subset_is_moved_out_and_check_fails_until_then(
    prepared: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    src, out, base = prepared
    subset = RunDir(out).composite_subset(1)
    count = len(list(subset.glob("*.png")))
    (subset / "holiday.png").write_bytes((src / "1_alice" / "alice_00.png").read_bytes())
    (subset / "holiday.txt").write_text("beach\n")
    capsys.readouterr()
    assert main(["check", str(out)]) == 4
    assert "holiday.png" in capsys.readouterr().out
    assert prepare(src, out, base, "--force") == 0
    printed = capsys.readouterr().out
    assert "moved holiday.png out of the composite subset" in printed
    assert len(list(subset.glob("*.png"))) == count and not (subset / "holiday.png").exists()
    assert (RunDir(out).strays / "1_composite" / "holiday.txt").read_text() == "beach\n"
    assert main(["check", str(out)]) == 0


# ------------------------------------------------------------------ Why 3: one writer at a time


def _tree_digest(root: Path) -> dict[str, str]:
    skip = {RunDir(root).lock_file, RunDir(root).marker}
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p not in skip and ".1to2" not in p.parts}


@pytest.mark.slow
def test_two_concurrent_prepares_one_refused_and_the_run_dir_equals_a_clean_runs(tmp_path: Path) -> None:
    src = make_sources(tmp_path / "src", {"alice": 6, "bob": 6, "carol": 6})
    base = make_fake_base_model(tmp_path)
    out = tmp_path / "run"
    argv = [sys.executable, "-m", "kohya_1to2", "prepare", str(src), "--out", str(out), "--base-model", str(base),
            "--budget", "120"]
    first = subprocess.Popen([*argv, "--seed", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lock = RunDir(out).lock_file
    deadline = time.monotonic() + 60
    while not (lock.is_file() and lock.read_text()) and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    second = subprocess.run([*argv, "--seed", "1", "--format", "jpg"], capture_output=True, text=True)
    _, first_err = first.communicate(timeout=300)
    assert first.returncode == 0, first_err
    assert second.returncode == 2, second.stderr
    assert f"run dir in use by prepare (pid {first.pid}, since" in second.stderr
    assert "Traceback" not in second.stderr
    clean = tmp_path / "clean"
    done = subprocess.run([*argv[:6], str(clean), *argv[7:], "--seed", "0"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    got, want = _tree_digest(out), _tree_digest(clean)
    assert sorted(got) == sorted(want)
    differing = [name for name in got if got[name] != want[name]]
    # The TOMLs and job name their own run directory; every composite, caption and the manifest are equal.
    assert all(name.endswith((".toml", ".json")) or name == "sample_prompts.txt" for name in differing), differing


def test_prepare_refuses_while_launch_holds_the_run_dir(prepared: tuple[Path, Path, Path],
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    src, out, base = prepared
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; from kohya_1to2.rundir import RunDir, "
         "writer_lock\nwith writer_lock(RunDir(Path(sys.argv[1])), 'launch'):\n print('locked', flush=True)\n "
         "time.sleep(60)", str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        capsys.readouterr()
        assert prepare(src, out, base) == 2
        assert f"run dir in use by launch (pid {holder.pid}" in capsys.readouterr().err
        assert main(["check", str(out)]) == 0
        assert "is being written by launch" in capsys.readouterr().out
    finally:
        holder.kill()
        holder.wait()


# ------------------------------------------------------------------ Why 4: no orphans after kill -9


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc to list processes (Linux)")
def test_kill_9_of_prepare_leaves_no_build_process_and_nothing_more_is_written(tmp_path: Path) -> None:
    src = make_sources(tmp_path / "src", {"alice": 8, "bob": 8, "carol": 8})
    for image in src.rglob("*.png"):
        write_image(image, (900, 1200), (10, 200, 90))  # big enough that the build takes a while
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "kohya_1to2", "prepare", str(src), "--out", str(out),
                             "--budget", "400", "--workers", "2"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    subset = RunDir(out).composite_subset(1)
    deadline = time.monotonic() + 120
    family: set[int] = set()
    while time.monotonic() < deadline:
        family |= _descendants(proc.pid)
        if subset.is_dir() and len(list(subset.glob("*.png"))) >= 4 and len(family) >= 2:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "prepare finished before it could be killed; make the job bigger"
    family |= _descendants(proc.pid)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(2)
    survivors = [pid for pid in family if _alive(pid)]
    assert survivors == [], f"build processes outlived prepare: {survivors}"
    files = sorted(p.name for p in subset.iterdir())
    time.sleep(1)
    assert sorted(p.name for p in subset.iterdir()) == files, "something still writes composites"


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc to list processes (Linux)")
def test_sigterm_to_prepare_is_exit_130_with_one_line_and_no_build_process_left(tmp_path: Path) -> None:
    """Issue 19: `kill PID` (SIGTERM) of prepare ends like Ctrl-C: one 'interrupted' line (the build's, with its
    hint), exit 130, workers gone; Python's default would be exit 143 and no word."""
    src = make_sources(tmp_path / "src", {"alice": 8, "bob": 8, "carol": 8})
    for image in src.rglob("*.png"):
        write_image(image, (900, 1200), (10, 200, 90))
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "kohya_1to2", "prepare", str(src), "--out", str(out),
                             "--budget", "400", "--workers", "2"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    subset = RunDir(out).composite_subset(1)
    family: set[int] = set()

    def building() -> bool:
        family.update(_descendants(proc.pid))
        return proc.poll() is not None or (subset.is_dir() and len(list(subset.glob("*.png"))) >= 4)

    wait_for(building, 120, "the build to start")
    assert proc.poll() is None, "prepare finished before it could be stopped; make the job bigger"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "interrupted" in err and "Traceback" not in err, err[-2000:]
    wait_for(lambda: not [pid for pid in family if _alive(pid)], 10, "the build's workers to be gone")


# ------------------------------------------------------------------ Why 7: errors at the edge


@pytest.mark.parametrize(
    ("setup", "needle"),
    [
        (lambda tmp: (tmp / "out").write_text("a file"), "is a file, not a directory"),
        (lambda tmp: None, "does not exist"),
    ],
    ids=["out-is-a-file", "missing-source-root"],
)
def test_command_line_problems_are_named_first_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], setup: Callable[[Path], object], needle: str
) -> None:
    src = make_sources(tmp_path / "src", {"alice": 1, "bob": 1})
    setup(tmp_path)
    roots = [str(src)] if needle != "does not exist" else [str(src), str(tmp_path / "nope")]
    assert main(["prepare", *roots, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert needle in err and len([line for line in err.splitlines() if line.startswith("error:")]) == 1
    if needle == "does not exist":
        assert "source root" in err and "nothing to pair" not in err


def test_a_missing_base_model_is_refused_by_prepare(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = make_sources(tmp_path / "src", {"alice": 1, "bob": 1})
    missing = tmp_path / "nope.safetensors"
    assert main(["prepare", str(src), "--out", str(tmp_path / "out"), "--base-model", str(missing)]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_an_unexpected_exception_is_one_internal_error_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    def boom(*_: object) -> None:
        raise RuntimeError("kaput")

    monkeypatch.setattr("kohya_1to2.commands.plan.plans_from_run_dir", boom)
    (tmp_path / "stage1.train.toml").write_text("", encoding="utf-8")  # a (hand-assembled) run directory
    assert main(["plan", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.strip() == "internal error: RuntimeError: kaput; run with --debug for the traceback"
    with pytest.raises(RuntimeError):
        main(["--debug", "plan", str(tmp_path)])


# ------------------------------------------------------------------ property: exactly what changed re-runs


def _stage_snapshot(out: Path, src: Path, stage: int) -> str:
    """The oracle: a digest of every file a stage reads, taken independently of launch's own fingerprints."""
    layout = RunDir(out)
    digest = hashlib.sha256()
    folders = [src] if stage == 1 else [layout.composites]
    files = [layout.train_toml(stage), layout.dataset_toml(stage)]
    files += sorted(p for folder in folders for p in folder.rglob("*") if p.is_file())
    for path in files:
        digest.update(str(path).encode() + hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


OPS = st.sampled_from(["caption", "replace", "add", "remove", "toml1", "toml2", "prepare", "launch"])


@pytest.mark.slow
@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(st.tuples(OPS, st.integers(0, 2)), min_size=2, max_size=6))
def test_property_the_stages_that_run_are_exactly_those_whose_inputs_changed(
    ops: list[tuple[str, int]], tmp_path_factory: pytest.TempPathFactory, fake_sd: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    tmp = tmp_path_factory.mktemp("prop")
    src = make_sources(tmp / "src", {"alice": 2, "bob": 2, "carol": 2})
    base = make_fake_base_model(tmp)
    out = tmp / "run"
    assert prepare(src, out, base) == 0
    assert launch(out, fake_sd) == 0
    trained = {s: _stage_snapshot(out, src, s) for s in (1, 2)}
    names = ["alice", "bob", "carol"]
    for step, (op, which) in enumerate(ops):
        folder = src / f"1_{names[which]}"
        images = sorted(folder.glob("*.png"))
        if op == "caption":
            caption = images[0].with_suffix(".txt")
            caption.write_text(caption.read_text().rstrip("\n") + f", edit{step}\n")
        elif op == "replace":
            write_image(images[-1], (64, 96), (step * 20 % 255, 10, 10))
        elif op == "add":
            new = write_image(folder / f"{names[which]}_new{step}.png", (64, 96), (5, step * 30 % 255, 5))
            new.with_suffix(".txt").write_text(f"{names[which]}, added{step}\n")
        elif op == "remove" and len(images) > 1:
            images[-1].unlink()
            images[-1].with_suffix(".txt").unlink()
        elif op in ("toml1", "toml2"):
            toml = RunDir(out).train_toml(int(op[-1]))
            toml.write_text(toml.read_text() + f"# edit {step}\n")
        elif op == "prepare":
            assert prepare(src, out, base) == 0
        changed1 = _stage_snapshot(out, src, 1) != trained[1]
        expected = {1: changed1, 2: changed1 or _stage_snapshot(out, src, 2) != trained[2]}
        capsys.readouterr()
        assert launch(out, fake_sd, "--dry-run") == 0
        assert decisions(capsys.readouterr().out) == expected, (ops, step)
        if op == "launch":
            before = len(calls(out))
            assert launch(out, fake_sd) == 0
            ran = calls(out)[before:]
            assert ran == [str(s) for s in (1, 2) if expected[s]], (ops, step)
            trained = {s: _stage_snapshot(out, src, s) for s in (1, 2)}


def test_a_trigger_with_a_prompt_option_is_refused_before_anything_is_built(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = make_sources(tmp_path / "src", {"alice": 2, "bob": 2})
    for caption in (src / "1_alice").glob("*.txt"):
        caption.write_text(caption.read_text().replace("alice,", "alice --n bad,"))
    out = tmp_path / "run"
    assert main(["prepare", str(src), "--out", str(out)]) == 3
    assert "' --'" in capsys.readouterr().err
    assert not out.exists(), "refused before the pre-flight wrote or built anything"


# ------------------------------------------------------------ issue 21: the SDXL anime presets, end to end


@pytest.mark.parametrize("preset", ["illustrious", "noobai-vpred"])
def test_anime_presets_prepare_and_dry_run_sdxl_commands_and_a_v_pred_mismatch_is_said_first(
        preset: str, tmp_path: Path, fake_sd: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = make_sources(tmp_path / "src", {"alice": 2, "bob": 2})
    base = write_safetensors_header(tmp_path / "noobai.safetensors", ("v_pred", "ztsnr"))  # a v-pred base
    out = tmp_path / "run"
    assert prepare(src, out, base, "--preset", preset) == 0
    capsys.readouterr()
    assert launch(out, fake_sd, "--dry-run") == 0
    said = capsys.readouterr()
    text = (said.out + said.err).replace("\n", "")
    assert text.count("sdxl_train_network.py") == text.count("train_network.py") == 2
    warned = "v_parameterization: base model" in text
    assert warned is (preset == "illustrious"), text  # the v-pred preset fits a v-pred base; the eps one does not
    assert calls(out) == []
