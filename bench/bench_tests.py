"""Benchmark of the fast test suite (`pytest -m "not integration"`): this tree against an earlier revision.

    .venv/bin/python bench/bench_tests.py                 # vs BEFORE (the tree before issue 12), 2 rounds each
    .venv/bin/python bench/bench_tests.py --rounds 3 --before <rev>

The earlier revision is checked out into a temporary `git worktree` and both suites run with this checkout's
virtual environment, alternating (before, now, now, before, ...) so load from elsewhere hits both alike.
Two comparisons, each alternating: the whole suites (the current one holds more tests, for features added
since), and only the tests both trees have (same test ids, run in each tree): the like-for-like figure.
Each run's wall time, the number of tests it ran and the load average are printed, then the ratios of the
means. The target (issue 12): the suite at least 25% faster, i.e. now / before <= 0.75.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BEFORE = "d53b262"
"""The last commit before the first issue-12 change (dbe6b11, the build pipeline): the suite the issue timed."""
TARGET = 0.75


def _env() -> dict[str, str]:
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("KOHYA_1TO2_REQUIRE_INTEGRATION", None)
    return env


def test_ids(tree: Path) -> set[str]:
    """The fast suite's test ids in `tree`."""
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--collect-only",
                           "-m", "not integration"], cwd=tree, env=_env(), capture_output=True, text=True)
    return {line.strip() for line in done.stdout.splitlines() if "::" in line}


def run_suite(tree: Path, id_file: Path | None = None) -> tuple[float, int, str]:
    """(wall seconds, tests passed, pytest's summary line) of one fast-suite run in `tree` (only the test ids
    listed in `id_file` if given: a file keeps the command line short)."""
    args = ["-m", "not integration"] if id_file is None else [f"@{id_file}"]
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args],
                          cwd=tree, env=_env(), capture_output=True, text=True)
    seconds = time.perf_counter() - start
    summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr[-500:]
    passed = re.search(r"(\d+) passed", summary)
    if done.returncode != 0:
        print(f"  (exit {done.returncode} in {tree.name}: {summary})", flush=True)
    return seconds, int(passed.group(1)) if passed else 0, summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", default=BEFORE, help=f"earlier revision (default {BEFORE})")
    parser.add_argument("--rounds", type=int, default=2, help="runs of each suite (alternating)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-tests-") as tmp:
        old = Path(tmp) / "before"
        subprocess.run(["git", "worktree", "add", "--detach", "-q", str(old), args.before], cwd=ROOT, check=True)
        vendor, old_vendor = ROOT / "vendor" / "sd-scripts", old / "vendor" / "sd-scripts"
        if vendor.is_dir() and not (old_vendor / "library").exists():  # the same pinned tree for both
            if old_vendor.is_dir():
                old_vendor.rmdir()  # the submodule's empty checkout
            old_vendor.parent.mkdir(parents=True, exist_ok=True)
            old_vendor.symlink_to(vendor)
        try:
            common = sorted(test_ids(old) & test_ids(ROOT))
            print(f"{len(common)} test ids in both trees", flush=True)
            id_file = Path(tmp) / "shared-test-ids"
            id_file.write_text("\n".join(common) + "\n", encoding="utf-8")
            results = {scope: compare(old, args.rounds, ids) for scope, ids in (("whole suites", None),
                                                                                   ("shared tests", id_file))}
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(old)], cwd=ROOT, check=False)

    print()
    print(f"cores: {os.cpu_count()}; python {sys.version.split()[0]}; before = {args.before}")
    for scope, (times, counts) in results.items():
        before, now = statistics.mean(times["before"]), statistics.mean(times["now"])
        ratio = now / before
        print(f"{scope}: before {before:.1f} s ({counts['before']} passed), now {now:.1f} s ({counts['now']} "
              f"passed): now / before {ratio:.2f} (target <= {TARGET}: {'ok' if ratio <= TARGET else 'MISSED'})")
    return 0


def compare(old: Path, rounds: int, ids: Path | None) -> tuple[dict[str, list[float]], dict[str, int]]:
    """Alternating runs (before, now, now, before, ...): wall times and tests passed per side."""
    times: dict[str, list[float]] = {"before": [], "now": []}
    counts: dict[str, int] = {}
    for side in (["before", "now", "now", "before"] * rounds)[: 2 * rounds]:
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        seconds, passed, summary = run_suite(old if side == "before" else ROOT, ids)
        times[side].append(seconds)
        counts[side] = passed
        print(f"{side:>6}: {seconds:6.1f} s, {passed} passed (load {load:.1f} at the start)  {summary}", flush=True)
    return times, counts


if __name__ == "__main__":
    raise SystemExit(main())
