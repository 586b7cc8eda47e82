"""Benchmark `launch`: the wrapper's own overhead before the child starts, and a smoke run's figures.

    python bench/bench_launch.py overhead          # wrapper start -> child start, vs a bare Python start
    python bench/bench_launch.py smoke [RUN_DIR]   # per-stage wall time, s/step: measured vs plan's estimate
                                                   # (no RUN_DIR: trains the bundled example's smoke run first)
    python bench/bench_launch.py dryrun RUN_DIR    # all pre-child work on a real prepared run (check included)

`overhead` uses a fake sd-scripts (a script that records when it starts) behind a stand-in
`accelerate.commands.launch`, so it measures only our code: reading TOMLs, check, probe, argv, spawn.
The floor is the time a bare `python -c` takes to start in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# the fake sd-scripts and CLI driver are shared with tests/test_run.py
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from fake_launch import DRIVER, make_fake_sd_scripts, q

FAKE_TRAIN = """\
import os, sys, time, toml
start = time.time()
cfg = {}
for table in toml.load(sys.argv[sys.argv.index("--config_file") + 1]).values():
    cfg.update(table)
os.makedirs(cfg["output_dir"], exist_ok=True)
open(os.path.join(cfg["output_dir"], cfg["output_name"] + ".safetensors"), "w").write("x")
if cfg.get("network_weights"):
    print(f"load network weights from {cfg['network_weights']}: {{}}")
open(os.environ["BENCH_STAMP"], "a").write(f"{start}\\n")
"""
def make_fake(root: Path) -> tuple[Path, Path, Path]:
    sd, _ = make_fake_sd_scripts(root, FAKE_TRAIN, sd_name="sd")
    (root / "driver.py").write_text(DRIVER)
    run = root / "run"
    run.mkdir()
    for stage in (1, 2):
        (run / f"stage{stage}.dataset.toml").write_text("[general]\n")
        weights = f"network_weights = {q(run / 'out1' / 'n_stage1.safetensors')}\n" if stage == 2 else ""
        name = "n_stage1" if stage == 1 else "n"
        (run / f"stage{stage}.train.toml").write_text(
            f'[network]\nnetwork_module = "networks.lora"\n{weights}'
            f'[saving]\noutput_dir = {q(run / f"out{stage}")}\noutput_name = "{name}"\n')
    return sd, root / "driver.py", run


def overhead(repeats: int) -> None:
    floor, wrapper = [], []
    with tempfile.TemporaryDirectory() as tmp:
        sd, driver, run = make_fake(Path(tmp))
        stamp = Path(tmp) / "stamp"
        env = {**os.environ, "PYTHONPATH": str(Path(tmp) / "shim"), "BENCH_STAMP": str(stamp)}
        for _ in range(repeats):
            t0 = time.time()
            subprocess.run([sys.executable, "-c", "pass"], check=True)
            floor.append(time.time() - t0)
            stamp.unlink(missing_ok=True)
            t0 = time.time()
            subprocess.run([sys.executable, str(driver), "launch", str(run), "--sd-scripts", str(sd), "--force",
                            "--stage", "1"], env=env, check=True, stdout=subprocess.DEVNULL)
            child_start = float(stamp.read_text().split()[0])
            # the child's own start-up (python + shim) is one more interpreter start: subtract one floor
            wrapper.append(child_start - t0)
    f, w = statistics.median(floor), statistics.median(wrapper)
    print(f"bare python start (floor):         {f * 1000:7.0f} ms (median of {repeats})")
    print(f"launch start -> child running:     {w * 1000:7.0f} ms")
    print(f"wrapper overhead (minus 2 floors): {(w - 2 * f) * 1000:7.0f} ms  (target < 1000 ms; torch not imported)")


def dryrun(run: Path, repeats: int) -> None:
    floor, times = [], []
    for _ in range(repeats):
        t0 = time.time()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        floor.append(time.time() - t0)
        t0 = time.time()
        subprocess.run([sys.executable, "-m", "kohya_1to2", "launch", str(run), "--dry-run"], check=True,
                       stdout=subprocess.DEVNULL)
        times.append(time.time() - t0)
    f, d = statistics.median(floor), statistics.median(times)
    print(f"launch --dry-run on {run}: {d * 1000:.0f} ms ({(d - f) * 1000:.0f} ms over a bare python start; "
          "includes check, TOML reads, capability probe, argv)")




def train_smoke_run(out: Path) -> Path:
    """Prepare the bundled example with the smoke preset on the tiny model and launch both stages (~3 min on 2
    cores); returns the run directory."""
    root = Path(__file__).resolve().parents[1]
    model = root / ".cache" / "tiny-model"
    cli = [sys.executable, "-m", "kohya_1to2"]
    if not (model / ".complete").is_file():
        subprocess.run([*cli, "make-tiny-model", str(model)], check=True, cwd=root)
    run = out / "smoke run"
    subprocess.run([*cli, "prepare", str(root / "examples" / "dataset"), "--out", str(run), "--preset", "smoke",
                    "--base-model", str(model)], check=True, cwd=root, stdout=subprocess.DEVNULL)
    subprocess.run([*cli, "launch", str(run)], check=True, cwd=root, stdout=subprocess.DEVNULL)
    return run


PLAN_TOLERANCE = 0.15
"""The plan's stage-2/stage-1 step-time ratio should be within 15% of the measured one (issue 18)."""


def smoke(run: Path) -> None:
    """Per stage: wall time, the measured s/step (sd-scripts' progress line in the log) beside `plan`'s estimate
    (the cost model plan prints), and the stage-2/stage-1 ratio of both."""
    from kohya_1to2.configs.generate import plans_from_run_dir
    from kohya_1to2.configs.stage_plans import step_cost_for, step_cost_ratio, step_seconds
    from kohya_1to2.kohya import measured_seconds_per_step

    plans = {plan.stage: plan for plan in plans_from_run_dir(run)}
    measured: dict[int, float] = {}
    for stage, plan in sorted(plans.items()):
        record = json.loads((run / ".1to2" / "launch" / f"stage{stage}.complete.json").read_text())
        log = (run / "logs" / f"stage{stage}.log").read_text(encoding="utf-8", errors="replace")
        found = measured_seconds_per_step(log)
        estimate = step_seconds(plan, step_cost_for("sd1", plan.mixed_precision))
        if found is None:
            print(f"stage {stage}: wall {record.get('seconds', 0):6.0f} s, no step timing in the log")
            continue
        measured[stage] = found[0]
        print(f"stage {stage}: wall {record.get('seconds', 0):6.0f} s, measured {found[0]:.1f} s/step over "
              f"{found[1]} steps, plan {estimate:.1f} s/step (plan / measured {estimate / found[0]:.2f})")
    if len(measured) == 2:
        planned = step_cost_ratio(plans[1], plans[2], step_cost_for("sd1", plans[1].mixed_precision))
        actual = measured[2] / measured[1]
        off = planned / actual - 1
        verdict = "within" if abs(off) <= PLAN_TOLERANCE else "NOT within"
        print(f"stage-2 / stage-1 time per step: plan {planned:.2f}, measured {actual:.2f} "
              f"(plan / measured {planned / actual:.2f}: {verdict} {PLAN_TOLERANCE:.0%})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    o = sub.add_parser("overhead")
    o.add_argument("--repeats", type=int, default=5)
    s = sub.add_parser("smoke")
    s.add_argument("run_dir", type=Path, nargs="?", help="a finished smoke run (default: train one in a temp dir)")
    d = sub.add_parser("dryrun")
    d.add_argument("run_dir", type=Path)
    d.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    if args.what == "overhead":
        overhead(args.repeats)
    elif args.what == "dryrun":
        dryrun(args.run_dir, args.repeats)
    elif args.run_dir is not None:
        smoke(args.run_dir)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            smoke(train_smoke_run(Path(tmp)))


if __name__ == "__main__":
    main()
