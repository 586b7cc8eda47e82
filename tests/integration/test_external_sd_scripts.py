"""An sd-scripts other than the pin, given by `--sd-scripts` with its own `--python`: a copy of the vendored tree
laid out as kohya_ss keeps it (`<kohya_ss>/sd-scripts`), with one option removed and one renamed in its parser.
`launch --dry-run` and `check` read that install's real parser (through its Python, cached) and report both keys
the bundled example's TOMLs use; `doctor` shows the install and its version. No training: cheap."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from sd_scripts_child import SD_SCRIPTS, requires_sd_scripts
from smoke_runs import prepare_smoke

from kohya_1to2.environment.vendor import repo_root
from kohya_1to2.rundir import RunDir

pytestmark = requires_sd_scripts()

REMOVED = "seed"
RENAMED = ("max_train_steps", "max_train_steps_total")
TRAIN_UTIL = Path("library") / "train_util.py"


def edited_copy(dest: Path) -> Path:
    """The vendored tree copied to `dest`, `--seed` removed and `--max_train_steps` renamed in train_util's parser."""
    shutil.copytree(SD_SCRIPTS, dest, ignore=shutil.ignore_patterns(".git", "__pycache__", "docs", "configs",
                                                                  "images", "tests", "*.egg-info"))
    source = (dest / TRAIN_UTIL).read_text(encoding="utf-8")
    lines = source.splitlines(keepends=True)
    removed = [line for line in lines if line.lstrip().startswith(f'parser.add_argument("--{REMOVED}",')]
    assert len(removed) == 1, "the pin adds --seed on one line"
    source = source.replace(removed[0], "")
    old = f'parser.add_argument("--{RENAMED[0]}",'
    assert source.count(old) == 1
    (dest / TRAIN_UTIL).write_text(source.replace(old, f'parser.add_argument("--{RENAMED[1]}",'), encoding="utf-8")
    return dest


def cli(*args: str, cache: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "XDG_CACHE_HOME": str(cache), "COLUMNS": "400"}
    env.pop("KOHYA_1TO2_SD_SCRIPTS", None)
    env.pop("KOHYA_1TO2_PYTHON", None)
    return subprocess.run([sys.executable, "-m", "kohya_1to2", *args], capture_output=True, text=True, timeout=900,
                          cwd=repo_root(), env=env)


def test_another_install_is_checked_against_its_own_parser_and_shown_by_doctor(tmp_path: Path) -> None:
    run = tmp_path / "run"
    prepare_smoke(run)
    train = RunDir(run).train_toml(1).read_text(encoding="utf-8")
    assert f"\n{REMOVED} = " in train and f"\n{RENAMED[0]} = " in train, "the smoke preset sets both keys"
    tree = edited_copy(tmp_path / "kohya_ss" / "sd-scripts")
    install = ["--sd-scripts", str(tree), "--python", sys.executable]
    cache = tmp_path / "cache"

    launched = cli("launch", str(run), "--dry-run", *install, cache=cache)
    out = launched.stdout + launched.stderr
    assert launched.returncode == 4, out[-4000:]
    at = f"sd-scripts at {tree.resolve()} (version unknown) has no option"
    assert f"{at} '{REMOVED}'" in out and f"{at} '{RENAMED[0]}': renamed to '{RENAMED[1]}'?" in out, out[-4000:]
    assert "library/train_util.py differs from v0.10.1" in launched.stdout, "the version, said once"
    assert "accelerate" not in launched.stdout, "refused before any command is built"
    assert len(list((cache / "kohya-1to2" / "snapshots").glob("*.json"))) == 1, "the install's options, cached"

    checked = cli("check", str(run), *install, cache=cache)
    assert checked.returncode == 4, checked.stdout[-4000:] + checked.stderr[-2000:]
    for stage in (1, 2):
        path = RunDir(run).train_toml(stage)
        assert f"{path}: training.{REMOVED}: {at} '{REMOVED}'" in checked.stdout
        assert f"{path}: training.{RENAMED[0]}: {at} '{RENAMED[0]}'" in checked.stdout

    doctor = cli("doctor", *install, cache=cache)
    shown = doctor.stdout.replace("\n", " ")
    assert f"unknown (not a git checkout; library/train_util.py differs from v0.10.1) at {tree.resolve()}" in shown
    assert "external, --sd-scripts" in shown and f"{sys.executable} (--python)" in shown, shown[-3000:]


def test_without_a_python_beside_it_the_install_asks_for_one(tmp_path: Path) -> None:
    tree = edited_copy(tmp_path / "kohya_ss" / "sd-scripts")
    checked = cli("check", str(tmp_path), "--sd-scripts", str(tree), cache=tmp_path / "cache")
    assert checked.returncode == 5
    assert "no Python found" in checked.stderr and "--python" in checked.stderr
