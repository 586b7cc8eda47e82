"""Which sd-scripts and which Python run (environment/install.py, kohya/installs.py): the pin by default, another
tree with the Python beside it, its version, and its option snapshot generated once and cached."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from kohya_1to2 import kohya
from kohya_1to2.environment import install as inst
from kohya_1to2.errors import SetupError
from kohya_1to2.kohya import installs

FAKE_PARSER = """\
import argparse

def setup_parser():
    parser = argparse.ArgumentParser()
    parser.add_argument("--output_dir", type=str, default=None)
    parser.add_argument("--max_train_steps_total", type=int, default=1600)
    parser.add_argument("--xformers", action="store_true")
    return parser
"""
FAKE_CONFIG_UTIL = """\
from voluptuous import Optional, Required

class ConfigSanitizer:
    def __init__(self, *flags):
        self.general_schema = {Optional("enable_bucket"): bool}
        self.db_dataset_schema = {Optional("resolution"): int, "subsets": list}
        self.db_subset_schema = {Required("image_dir"): str, Optional("num_repeats"): int}
        self.ft_subset_schema = {Optional("metadata_file"): str}
"""


def fake_tree(root: Path, parser: str = FAKE_PARSER) -> Path:
    """An sd-scripts-shaped tree whose parsers import in a blink (argparse only, no torch)."""
    (root / "library").mkdir(parents=True)
    for script in installs.snapshot_scripts():
        (root / script).write_text(parser, encoding="utf-8")
    (root / "library" / "__init__.py").write_text("", encoding="utf-8")
    (root / "library" / "config_util.py").write_text(FAKE_CONFIG_UTIL, encoding="utf-8")
    return root


def not_the_pin(path: Path) -> Path:
    raise SetupError(f"{path} is not the pin")


def venv_python(folder: Path) -> Path:
    """A venv-looking python (a link to this one) at <folder>/venv/bin/python."""
    python = folder / "venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.symlink_to(sys.executable)
    return python


# ------------------------------------------------------------------ which tree, which Python


def test_nothing_given_is_the_vendored_pin_run_by_this_python() -> None:
    found = inst.resolve_install(None, None, {}, pinned=lambda path: path.resolve())
    assert found.pinned and found.chosen_by == "vendored" and found.python == sys.executable
    assert found.version == kohya.SD_SCRIPTS_TAG and found.kind == "the vendored pin"


def test_a_kohya_ss_install_runs_with_the_venv_beside_its_sd_scripts(tmp_path: Path) -> None:
    tree = fake_tree(tmp_path / "kohya_ss" / "sd-scripts")
    python = venv_python(tmp_path / "kohya_ss")
    found = inst.resolve_install(tree, None, {}, pinned=not_the_pin)
    assert not found.pinned and found.path == tree.resolve()
    assert found.python == str(python.absolute()), "the venv's link itself, not the interpreter it points at"
    assert found.python_by == "the venv beside it" and found.chosen_by == "--sd-scripts"
    assert found.version.startswith("unknown (not a git checkout")


def test_the_environment_variables_choose_tree_and_python_and_the_flags_win(tmp_path: Path) -> None:
    tree, other = fake_tree(tmp_path / "a"), fake_tree(tmp_path / "b")
    env = {inst.SD_SCRIPTS_ENV: str(tree), inst.PYTHON_ENV: sys.executable}
    found = inst.resolve_install(None, None, env, pinned=not_the_pin)
    assert (found.path, found.chosen_by, found.python_by) == (tree.resolve(), "$KOHYA_1TO2_SD_SCRIPTS",
                                                              "$KOHYA_1TO2_PYTHON")
    flagged = inst.resolve_install(other, Path(sys.executable), env, pinned=not_the_pin)
    assert (flagged.path, flagged.python_by) == (other.resolve(), "--python")


def test_no_python_beside_an_external_tree_asks_for_python(tmp_path: Path) -> None:
    tree = fake_tree(tmp_path / "sd-scripts")
    with pytest.raises(SetupError, match="no Python found") as caught:
        inst.resolve_install(tree, None, {}, pinned=not_the_pin)
    assert "--python" in (caught.value.hint or "") and "\n" not in caught.value.message
    with pytest.raises(SetupError, match="no such executable"):
        inst.resolve_install(tree, tmp_path / "nope" / "python", {}, pinned=not_the_pin)


def test_a_folder_that_is_no_sd_scripts_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SetupError, match="not an sd-scripts tree"):
        inst.resolve_install(tmp_path, Path(sys.executable), {}, pinned=not_the_pin)


def test_a_copy_of_the_pin_elsewhere_is_the_pin(tmp_path: Path) -> None:
    tree = fake_tree(tmp_path / "mine")
    found = inst.resolve_install(tree, None, {}, pinned=lambda path: path)
    assert found.pinned and found.python == sys.executable and "match the pin" in found.kind
    assert inst.install_snapshot(found, {}) is None, "the bundled snapshot"


def test_python_candidates_put_kohya_ss_venvs_first(tmp_path: Path) -> None:
    tree = tmp_path / "kohya_ss" / "sd-scripts"
    candidates = installs.python_candidates(tree)
    assert candidates[:2] == [tmp_path / "kohya_ss" / "venv" / "bin" / "python",
                              tmp_path / "kohya_ss" / ".venv" / "bin" / "python"]
    assert tree / "venv" / "bin" / "python" in candidates


# ------------------------------------------------------------------ version


def test_version_from_git_describe_of_the_tree_itself(tmp_path: Path) -> None:
    if shutil.which("git") is None:
        pytest.skip("git not installed")
    tree = fake_tree(tmp_path / "sd-scripts")
    git = ["git", "-C", str(tree), "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "x"], check=True)
    subprocess.run([*git, "tag", "v0.11.0"], check=True)
    assert inst.detect_version(tree) == "v0.11.0"
    inner = fake_tree(tree / "nested")  # inside that checkout, but no .git of its own: not described by it
    assert inst.detect_version(inner).startswith("unknown (not a git checkout")


def test_version_from_library_init_then_from_the_pin_hashes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tree = fake_tree(tmp_path / "sd-scripts")
    (tree / installs.LIBRARY_INIT).write_text('__version__ = "0.12.3"\n', encoding="utf-8")
    assert inst.detect_version(tree) == "0.12.3"
    (tree / installs.LIBRARY_INIT).write_text("", encoding="utf-8")
    script = kohya.TRAINING_SCRIPTS["sd1"]
    monkeypatch.setattr(kohya, "PIN_FILE_SHA256",
                        {script: hashlib.sha256((tree / script).read_bytes()).hexdigest()})
    assert inst.detect_version(tree) == kohya.SD_SCRIPTS_TAG
    (tree / script).write_text(FAKE_PARSER + "# edited\n", encoding="utf-8")
    assert inst.detect_version(tree) == f"unknown (not a git checkout; {script} differs from {kohya.SD_SCRIPTS_TAG})"


# ------------------------------------------------------------------ the option snapshot and its cache


def external(tree: Path) -> inst.SdScriptsInstall:
    return inst.resolve_install(tree, Path(sys.executable), {}, pinned=not_the_pin)


def test_the_snapshot_is_generated_by_the_installs_python_and_cached(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    tree = fake_tree(tmp_path / "sd-scripts")
    env = {"XDG_CACHE_HOME": str(tmp_path / "cache")}
    calls: list[Path] = []
    generate = inst.generate_snapshot
    monkeypatch.setattr(inst, "generate_snapshot", lambda found: calls.append(found.path) or generate(found))
    snap = inst.install_snapshot(external(tree), env)
    assert snap is not None and snap["install"] == str(tree.resolve())
    script = kohya.TRAINING_SCRIPTS["sd1"]
    assert {a["dest"] for a in snap["parsers"][script]} == {"output_dir", "max_train_steps_total", "xformers"}
    assert snap["dataset_schema"]["subset"]["image_dir"] == {"type": "str", "required": True}
    [cached] = (tmp_path / "cache" / "kohya-1to2" / "snapshots").iterdir()
    assert "install" not in json.loads(cached.read_text(encoding="utf-8")), "the path is added on reading"
    assert inst.install_snapshot(external(tree), env) == snap and len(calls) == 1, "read from the cache"
    (tree / "library" / "train_util.py").write_text("# an edit to the library\n", encoding="utf-8")
    inst.install_snapshot(external(tree), env)
    assert len(calls) == 2, "an edited parser source regenerates"


def test_the_cache_lives_under_xdg_cache_home_else_home(tmp_path: Path) -> None:
    assert inst.cache_dir({"XDG_CACHE_HOME": str(tmp_path)}) == tmp_path / "kohya-1to2"
    assert inst.cache_dir({"HOME": str(tmp_path)}) == tmp_path / ".cache" / "kohya-1to2"


def test_a_snapshot_that_cannot_be_generated_names_the_install_and_its_python(tmp_path: Path) -> None:
    tree = fake_tree(tmp_path / "sd-scripts", parser="import torch_that_is_not_there\n")
    with pytest.raises(SetupError, match="could not read the options of sd-scripts unknown") as caught:
        inst.install_snapshot(external(tree), {"XDG_CACHE_HOME": str(tmp_path / "cache")})
    assert "ModuleNotFoundError" in caught.value.message and sys.executable in caught.value.message
    assert not (tmp_path / "cache" / "kohya-1to2" / "snapshots").exists() or \
        not any((tmp_path / "cache" / "kohya-1to2" / "snapshots").iterdir())


# ------------------------------------------------------------------ the Python's facts, doctor's lines


def test_another_python_is_probed_in_a_child_without_torch(tmp_path: Path) -> None:
    python = venv_python(tmp_path)
    found = external(fake_tree(tmp_path / "sd-scripts")).model_copy(update={"python": str(python)})
    interpreter = inst.interpreter_of(found, {"CUDA_VISIBLE_DEVICES": ""})
    assert interpreter.python == str(python) and interpreter.caps.cuda is False
    broken = found.model_copy(update={"python": str(tmp_path / "sd-scripts" / kohya.TRAINING_SCRIPTS["sd1"])})
    with pytest.raises(SetupError, match="does not run"):
        inst.interpreter_of(broken, {})


def test_doctor_lines_name_tree_version_and_python(tmp_path: Path) -> None:
    found = external(fake_tree(tmp_path / "sd-scripts"))
    lines: dict[str, Any] = {line.label: line.value for line in inst.install_findings(found)}
    assert str(found.path) in lines["sd-scripts"] and "external, --sd-scripts" in lines["sd-scripts"]
    assert lines["sd-scripts"].startswith("unknown (")
    assert lines["sd-scripts python"] == f"{sys.executable} (--python)"
    assert os.path.isabs(lines["sd-scripts python"].split(" ")[0])


# ------------------------------------------------------------------ launch runs accelerate with the install's Python


def test_launch_dry_run_runs_an_external_install_with_its_own_python(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    from fake_launch import make_fake_sd_scripts
    from test_run import FAKE_TRAIN, make_run  # another test module's fake run (tests/ is on sys.path)

    from kohya_1to2.cli import main

    tree, _ = make_fake_sd_scripts(tmp_path / "kohya_ss", FAKE_TRAIN)
    python = venv_python(tmp_path / "kohya_ss")
    monkeypatch.setattr("kohya_1to2.commands.launch.require_sd_scripts", not_the_pin)
    monkeypatch.setattr("kohya_1to2.commands.launch.install_snapshot", lambda found, environ: None)
    monkeypatch.delenv(inst.PYTHON_ENV, raising=False)
    run = make_run(tmp_path / "run")
    assert main(["launch", str(run), "--sd-scripts", str(tree), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"sd-scripts unknown (not a git checkout; train_network.py differs from v0.10.1) at {tree.resolve()}, " \
           f"run by {python}" in out
    assert out.count(f"{python} -m accelerate.commands.launch") == 2
