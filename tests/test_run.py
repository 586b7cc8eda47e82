"""The stage runner and the launch chain, against a fake sd-scripts (fast, no torch).

A stand-in `accelerate.commands.launch` on PYTHONPATH runs the script directly, and a fake
`train_network.py` behaves as told by FAKE_MODE: train, fail, find no data, report bad keys, or hang.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from fake_launch import DRIVER, make_fake_base_model, make_fake_sd_scripts, q
from waiting import wait_for

from kohya_1to2.cli import main
from kohya_1to2.launch import session as launch_session
from kohya_1to2.launch.run import run_child
from kohya_1to2.rundir import RunDir

FAKE_TRAIN = """\
import os, subprocess, sys, time, toml
args = sys.argv
cfg = {}
for key, table in toml.load(args[args.index("--config_file") + 1]).items():
    cfg.update(table if isinstance(table, dict) else {key: table})  # sd-scripts keeps top-level keys as they are
mode = os.environ.get("FAKE_MODE", "ok")
stage = 2 if cfg.get("network_weights") else 1
print(f"fake training stage {stage}", flush=True)
if stage == 2:
    report = "{'missing keys': ['lora_unet_x.hada_w1_a']}" if mode == "badkeys" else "{}"
    print(f"load network weights from {cfg['network_weights']}: {report}", flush=True)
if mode == "badkeys":
    time.sleep(60)  # a wrapper that does not stop the child waits this out, and the marker below appears
    open(os.path.join(cfg["output_dir"], "trained_on"), "w").close()
if mode == "fail" or (mode == "fail2" and stage == 2):
    for i in range(40):
        print(f"line {i}")
    print("RuntimeError: boom", flush=True)
    sys.exit(1)
if mode == "nodata":
    print("No data found. Please verify arguments", flush=True)
    sys.exit(0)
if mode == "noweights":
    sys.exit(0)
if mode == "hang":
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    with open(os.environ["FAKE_PIDFILE"], "w") as fh:
        fh.write(str(child.pid))
    print("steps:  0%|", flush=True)
    time.sleep(300)
out = os.path.join(cfg["output_dir"], cfg["output_name"] + ".safetensors")
os.makedirs(os.path.join(cfg["output_dir"], "sample"), exist_ok=True)
with open(out, "w") as fh:
    fh.write(f"weights of stage {stage} via {os.path.basename(args[args.index('--config_file') + 1])}")
with open(os.path.join(cfg["output_dir"], "sample", "s.png"), "w") as fh:
    fh.write("png")
with open(os.path.join(os.path.dirname(cfg["output_dir"]), "calls.txt"), "a") as fh:
    fh.write(f"{stage}\\n")
"""

@pytest.fixture
def fake_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fake sd-scripts dir; the fake accelerate goes first on the child's PYTHONPATH."""
    sd, shim = make_fake_sd_scripts(tmp_path, FAKE_TRAIN)
    monkeypatch.setenv("PYTHONPATH", str(shim))
    monkeypatch.setattr("kohya_1to2.commands.launch.require_sd_scripts", lambda path: Path(path))
    return sd


def make_run(run: Path) -> Path:
    base = make_fake_base_model(run.parent)
    for stage in (1, 2):
        (run / f"stage{stage}.dataset.toml").parent.mkdir(parents=True, exist_ok=True)
        (run / f"stage{stage}.dataset.toml").write_text("[general]\nenable_bucket = true\n", encoding="utf-8")
        name = "net_stage1" if stage == 1 else "net"
        weights = run / "output" / "stage1" / "net_stage1.safetensors"
        (run / f"stage{stage}.train.toml").write_text(
            f'[model]\npretrained_model_name_or_path = {q(base)}\n'
            '[network]\nnetwork_module = "lycoris.kohya"\nnetwork_dim = 8\n'
            + (f"network_weights = {q(weights)}\n" if stage == 2 else "")
            + f'[saving]\noutput_dir = {q(run / "output" / f"stage{stage}")}\noutput_name = "{name}"\n'
            + '[training]\nmixed_precision = "no"\n',
            encoding="utf-8",
        )
    return run


def launch(run: Path, sd: Path, *extra: str) -> int:
    return main(["launch", str(run), "--sd-scripts", str(sd), *extra])


def calls(run: Path) -> list[str]:
    path = run / "output" / "calls.txt"
    return path.read_text().split() if path.exists() else []


def test_both_stages_run_in_order_and_a_rerun_skips_them(fake_env: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    run = make_run(tmp_path / "run")
    assert launch(run, fake_env) == 0
    assert calls(run) == ["1", "2"]
    assert (run / "output" / "stage2" / "net.safetensors").read_text().endswith("stage2.train.toml")
    assert "fake training stage 2" in (run / "logs" / "stage2.log").read_text()
    out = capsys.readouterr().out
    assert "summary" in out and "1 in " in out, out
    assert launch(run, fake_env) == 0
    assert calls(run) == ["1", "2"], "completed, unchanged stages are skipped"
    assert launch(run, fake_env, "--force", "--stage", "2") == 0
    assert calls(run) == ["1", "2", "2"]


def test_an_edited_config_reruns_its_stage(fake_env: Path, tmp_path: Path) -> None:
    run = make_run(tmp_path / "run")
    assert launch(run, fake_env) == 0
    toml2 = run / "stage2.train.toml"
    toml2.write_text(toml2.read_text() + "learning_rate = 0.001\n")
    assert launch(run, fake_env) == 0
    assert calls(run) == ["1", "2", "2"]


def test_failure_of_stage_1_stops_the_chain_with_the_log_tail(
    fake_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    run = make_run(tmp_path / "run")
    monkeypatch.setenv("FAKE_MODE", "fail")
    assert launch(run, fake_env) == 6
    err = capsys.readouterr().err
    assert "RuntimeError: boom" in err and "line 39" in err
    assert "line 9\n" not in err, "only the last 30 lines are shown"
    assert not (run / "logs" / "stage2.log").exists(), "stage 2 never started"


@pytest.mark.parametrize(("fake_mode", "message"), [("nodata", "trained nothing"),
                                                    ("noweights", "wrote no final network")])
def test_exit_0_with_no_data_or_no_final_weights_is_a_failure(
        fake_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        fake_mode: str, message: str) -> None:
    run = make_run(tmp_path / "run")
    monkeypatch.setenv("FAKE_MODE", fake_mode)
    assert launch(run, fake_env) == 6
    assert message in capsys.readouterr().err


def test_stage_2_with_missing_keys_is_stopped_at_once(fake_env: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    run = make_run(tmp_path / "run")
    assert launch(run, fake_env, "--stage", "1") == 0
    monkeypatch.setenv("FAKE_MODE", "badkeys")
    assert launch(run, fake_env, "--stage", "2") == 6
    assert not (run / "output" / "stage2" / "trained_on").exists(), "the child trained on instead of being stopped"
    assert "1 missing key(s)" in capsys.readouterr().err


def test_stage_2_refuses_to_start_without_stage_1_weights(fake_env: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    run = make_run(tmp_path / "run")
    assert launch(run, fake_env, "--stage", "2") == 5
    assert "does not exist" in capsys.readouterr().err
    assert calls(run) == []


def test_stage_2_must_continue_from_stage_1(fake_env: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    run = make_run(tmp_path / "run")
    toml2 = run / "stage2.train.toml"
    toml2.write_text(toml2.read_text().replace("network_dim = 8", "network_dim = 16"))
    assert launch(run, fake_env) == 4, "launch refuses what check refuses, with check's exit code"
    assert "network_dim" in capsys.readouterr().err
    assert calls(run) == []


def test_odd_paths_survive_toml_and_argv(fake_env: Path, tmp_path: Path) -> None:
    run = make_run(tmp_path / "runs 'o\"dd' ünï")
    assert launch(run, fake_env) == 0
    assert (run / "output" / "stage2" / "net.safetensors").is_file()


def test_dry_run_prints_commands_and_runs_nothing(fake_env: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    run = make_run(tmp_path / "run")
    assert launch(run, fake_env, "--dry-run", "--num-cpu-threads-per-process", "2") == 0
    out = capsys.readouterr().out
    assert out.count("accelerate.commands.launch") == 2
    assert "--num_cpu_threads_per_process 2" in out and "HF_HUB_OFFLINE=1" in out
    assert calls(run) == [] and not (run / "logs").exists()


def test_strict_refuses_substitutions(fake_env: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("kohya_1to2.launch.session.probe_capabilities",
                        lambda: __import__("kohya_1to2.launch.substitutions", fromlist=["x"]).Capabilities(
                            cuda=False, xformers=False, bitsandbytes=False))
    run = make_run(tmp_path / "run")
    toml1 = run / "stage1.train.toml"
    toml1.write_text(toml1.read_text().replace('mixed_precision = "no"', 'mixed_precision = "bf16"'))
    assert launch(run, fake_env, "--strict") == 5
    assert "mixed_precision" in capsys.readouterr().err
    assert launch(run, fake_env, "--stage", "1") == 0
    effective = (run / ".1to2" / "launch" / "stage1.train.toml").read_text()
    assert 'mixed_precision = "no"' in effective
    assert "substitution: mixed_precision" in (run / "logs" / "stage1.log").read_text()


def test_the_wrapper_never_imports_torch(fake_env: Path, tmp_path: Path) -> None:
    run = make_run(tmp_path / "run")
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    proc = subprocess.run([sys.executable, str(driver), "launch", str(run), "--sd-scripts", str(fake_env)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert calls(run) == ["1", "2"]


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(sys.platform != "linux", reason="checks /proc for leftover processes")
def test_sigint_during_a_stage_leaves_no_child(fake_env: Path, tmp_path: Path) -> None:
    run = make_run(tmp_path / "run")
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    pidfile = tmp_path / "grandchild.pid"
    env = {**os.environ, "FAKE_MODE": "hang", "FAKE_PIDFILE": str(pidfile)}
    # SIGINT at its default in the wrapper: a pytest started in the background (or an earlier test) may leave it
    # ignored, which children inherit, and the test then waits out the 20 s SIGKILL escalation instead
    wrapper = subprocess.Popen([sys.executable, str(driver), "launch", str(run), "--sd-scripts", str(fake_env)],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    wait_for(lambda: pidfile.exists() and pidfile.read_text(), 60, "the fake stage to start")
    grandchild = int(pidfile.read_text())
    assert alive(grandchild)
    wrapper.send_signal(signal.SIGINT)
    _, err = wrapper.communicate(timeout=30)
    assert wrapper.returncode == 130, err
    assert b"interrupted" in err
    wait_for(lambda: not alive(grandchild), 5, "the stage's grandchild to be gone after the wrapper")


ESCALATE = """\
import signal, sys
from pathlib import Path
from kohya_1to2.launch.run import run_child
from kohya_1to2.rundir import RunDir
from kohya_1to2.errors import Interrupted
child = [sys.executable, "-c", "import signal, time; signal.signal(signal.SIGINT, signal.SIG_IGN); "
         "signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(300)"]
try:
    run_child(child, cwd=Path("."), env={}, log_path=Path(sys.argv[1]), kill_timeout=1.0)
except Interrupted:
    sys.exit(130)
"""


def test_a_child_ignoring_signals_is_killed_after_the_timeout(tmp_path: Path) -> None:
    script = tmp_path / "escalate.py"
    script.write_text(textwrap.dedent(ESCALATE))
    log = tmp_path / "child.log"
    wrapper = subprocess.Popen([sys.executable, str(script), str(log)], stdout=subprocess.DEVNULL)
    wait_for(lambda: "ready" in (log.read_text() if log.exists() else ""), 60, "the child to start")
    wrapper.send_signal(signal.SIGTERM)
    # the child ignores SIGTERM and sleeps 300 s: only the SIGKILL after kill_timeout (1 s) ends it in time
    assert wrapper.wait(timeout=60) == 130
    assert "stopped by SIGTERM" in log.read_text()


def test_run_child_tees_output_and_keeps_the_tail(tmp_path: Path) -> None:
    import io

    echo = io.BytesIO()
    code = "import sys\nfor i in range(50): print(i)\nsys.stdout.write('progress\\r50%\\r100%')"
    result = run_child([sys.executable, "-c", code], cwd=tmp_path, env={}, log_path=tmp_path / "l.log",
                       echo=echo, header="# header\n")
    assert result.returncode == 0
    assert result.tail[-1] == "100%" and result.tail[0] == "23" and len(result.tail) == 30
    assert (tmp_path / "l.log").read_bytes() == b"# header\n" + echo.getvalue()


def test_resume_continues_from_the_newest_saved_state(fake_env: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    run = make_run(tmp_path / "run")
    assert launch(run, fake_env, "--resume") == 2
    assert "no saved state of stage 1" in capsys.readouterr().err
    names = ("net_stage1-000001-state", "net_stage1-000002-state", "net_stage1-000003-state")
    old, new, cut_off = (run / "output" / "stage1" / n for n in names)
    for i, state in enumerate((old, new, cut_off)):
        state.mkdir(parents=True)
        (state / "train_state.json").write_text("{}")
        if state != cut_off:  # accelerate writes the random states last: cut_off was interrupted mid-save
            (state / "random_states_0.pkl").write_bytes(b"x")
        os.utime(state, (1_000_000 + i, 1_000_000 + i))
    from kohya_1to2.launch import pipeline

    fingerprinted: list[int] = []
    real_inputs = pipeline.stage_inputs
    monkeypatch.setattr(pipeline, "stage_inputs", lambda stage: fingerprinted.append(stage.stage) or real_inputs(stage))
    monkeypatch.setattr(launch_session, "stage_inputs", pipeline.stage_inputs)
    assert launch(run, fake_env, "--resume", "--stage", "1") == 0
    assert fingerprinted.count(1) == 2, "once to decide (resuming included), once for the completion record"
    import toml

    effective = toml.load(RunDir(run).effective_toml(1))
    assert [t["resume"] for t in effective.values() if "resume" in t] == [str(new)]
    assert [t["skip_until_initial_step"] for t in effective.values() if "resume" in t] == [True]


def test_relative_paths_are_refused_but_hub_ids_pass(fake_env: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    run = make_run(tmp_path / "run")
    (tmp_path / "models" / "base").mkdir(parents=True)
    (tmp_path / "models" / "base" / "model_index.json").write_text("{}")  # a diffusers folder
    monkeypatch.chdir(tmp_path)
    toml1 = run / "stage1.train.toml"
    original = toml1.read_text()
    base_line = next(line for line in original.splitlines() if line.startswith("pretrained_model_name_or_path"))
    toml1.write_text(original.replace(base_line, 'pretrained_model_name_or_path = "models/base"'))
    assert launch(run, fake_env, "--dry-run") == 4
    err = capsys.readouterr().err
    assert "pretrained_model_name_or_path" in err and str(tmp_path / "models" / "base") in err
    toml1.write_text(original.replace(base_line, 'pretrained_model_name_or_path = "some-org/some-model"'))
    assert launch(run, fake_env, "--dry-run") == 0


def test_strict_accepts_the_loader_worker_cap_sd_scripts_applies_anyway(
    fake_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kohya_1to2.launch.substitutions import Capabilities

    monkeypatch.setattr("kohya_1to2.launch.session.probe_capabilities",
                        lambda: Capabilities(cuda=True, xformers=True, bitsandbytes=True, cpu_count=2))
    run = make_run(tmp_path / "run")
    toml1 = run / "stage1.train.toml"
    toml1.write_text(toml1.read_text() + "max_data_loader_n_workers = 8\n")
    assert launch(run, fake_env, "--strict", "--dry-run", "--stage", "1") == 0
    assert "max_data_loader_n_workers = 2" in RunDir(run).effective_toml(1).read_text()


def test_a_resumed_stage_is_complete_for_the_next_plain_launch(fake_env: Path, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    run = make_run(tmp_path / "run")
    state = run / "output" / "stage1" / "net_stage1-000001-state"
    state.mkdir(parents=True)
    (state / "train_state.json").write_text("{}")
    (state / "random_states_0.pkl").write_bytes(b"x")
    assert launch(run, fake_env, "--resume", "--stage", "1") == 0
    capsys.readouterr()
    assert launch(run, fake_env, "--stage", "1") == 0
    assert "stage 1: skipped (unchanged since" in capsys.readouterr().out, "resume keys are not an input change"
    assert calls(run) == ["1"]


ORPHANED = """\
import subprocess, sys
from pathlib import Path
from kohya_1to2.launch.run import run_child
from kohya_1to2.rundir import RunDir, writer_lock
# the stage: a leader (as accelerate) whose child (the trainer) ignores SIGTERM, so the group outlives a polite stop
trainer = ("import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
           "open(sys.argv[1], 'w').write('ready'); time.sleep(300)")
leader = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {trainer!r}, sys.argv[1]])"
with writer_lock(RunDir(Path(sys.argv[1])), "launch") as lock:
    run_child([sys.executable, "-c", "import sys\\n" + leader, sys.argv[2]], cwd=Path("."), env={},
              log_path=Path(sys.argv[1]) / "child.log", hold=(lock,))
"""


def _group_members(pgid: int) -> list[int]:
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                state, _, group = (entry / "stat").read_text().rsplit(")", 1)[1].split()[:3]
            except (OSError, ValueError):
                continue
            if int(group) == pgid and state != "Z":
                members.append(int(entry.name))
    return members


@pytest.mark.skipif(sys.platform != "linux", reason="checks /proc for leftover processes")
def test_kill_9_of_the_wrapper_stops_the_whole_stage_and_the_lock_outlives_it(tmp_path: Path) -> None:
    from kohya_1to2.rundir import current_writer

    run, ready = tmp_path / "run", tmp_path / "ready"
    run.mkdir()
    script = tmp_path / "wrapper.py"
    script.write_text(ORPHANED)
    wrapper = subprocess.Popen([sys.executable, str(script), str(run), str(ready)], stdout=subprocess.DEVNULL)
    try:
        wait_for(ready.exists, 60, "the trainer to start")
    finally:
        if not ready.exists():
            wrapper.kill()
    [child] = [int(e.name) for e in Path("/proc").iterdir() if e.name.isdigit()
               and (e / "stat").read_text().rsplit(")", 1)[1].split()[1] == str(wrapper.pid)
               and "watchdog" not in (e / "cmdline").read_text()]
    assert len(_group_members(child)) == 2, "leader and trainer run in the stage's own process group"
    wrapper.kill()
    wrapper.wait()
    # the trainer ignores SIGTERM, so the watchdog needs its SIGKILL; the lock may not be free while it lives
    seen: list[tuple[bool, bool]] = []

    def gone() -> bool:
        free = current_writer(RunDir(run)) is None  # the lock first: a member seen after it is still a member
        seen.append((free, bool(_group_members(child))))
        return free and not seen[-1][1]

    wait_for(gone, 5, "the stage's processes to be gone and the lock released")
    assert not any(free and alive for free, alive in seen), "the lock was released while the stage still ran"


def test_the_watchdog_leaves_a_group_alone_when_told_done(tmp_path: Path) -> None:
    """A normal end ("done") must not signal anything: the pid may be reused by then."""
    from kohya_1to2.launch import watchdog

    read_end, write_end = os.pipe()
    os.write(write_end, b"4242\ndone\n")
    os.close(write_end)
    assert watchdog.read_lines(read_end) == (["4242", "done"], True)
    os.close(read_end)
    read_end, write_end = os.pipe()
    os.write(write_end, b"4242\n")
    os.close(write_end)
    assert watchdog.read_lines(read_end) == (["4242"], False)
    os.close(read_end)
