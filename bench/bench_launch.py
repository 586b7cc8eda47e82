"""Benchmark `launch`: the wrapper's own overhead before the child starts, and a smoke run's figures.

    python bench/bench_launch.py overhead          # wrapper start -> child start, vs a bare Python start
    python bench/bench_launch.py smoke RUN_DIR     # per-stage wall time and s/step of a finished run
    python bench/bench_launch.py dryrun RUN_DIR    # all pre-child work on a real prepared run (check included)

`overhead` uses a fake sd-scripts (a script that records when it starts) behind a stand-in
`accelerate.commands.launch`, so it measures only our code: reading TOMLs, check, probe, argv, spawn.
The floor is the time a bare `python -c` takes to start in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import re
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


STEP_RE = re.compile(r"steps: 100%.*?(\d+)/(\d+) \[([\d:]+)<[^,]*,\s*([\d.]+)(s/it|it/s)")


def smoke(run: Path) -> None:
    rates = {}
    for stage in (1, 2):
        record = json.loads((run / ".1to2" / "launch" / f"stage{stage}.complete.json").read_text())
        log = (run / "logs" / f"stage{stage}.log").read_text(encoding="utf-8", errors="replace")
        matches = STEP_RE.findall(log.replace("\r", "\n"))
        if matches:
            _, total, _, value, unit = matches[-1]
            rates[stage] = float(value) if unit == "s/it" else 1 / float(value)
            per_step = f"{rates[stage]:.1f} s/step over {total} steps"
        else:
            per_step = "no step timing in the log"
        print(f"stage {stage}: wall {record.get('seconds', 0):6.0f} s, {per_step}")
    if len(rates) == 2:
        print(f"stage-2 / stage-1 time per step: {rates[2] / rates[1]:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    o = sub.add_parser("overhead")
    o.add_argument("--repeats", type=int, default=5)
    s = sub.add_parser("smoke")
    s.add_argument("run_dir", type=Path)
    d = sub.add_parser("dryrun")
    d.add_argument("run_dir", type=Path)
    d.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    if args.what == "overhead":
        overhead(args.repeats)
    elif args.what == "dryrun":
        dryrun(args.run_dir, args.repeats)
    else:
        smoke(args.run_dir)


if __name__ == "__main__":
    main()
