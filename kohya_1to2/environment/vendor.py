"""The pinned sd-scripts in `vendor/sd-scripts`: find it, verify the pin, populate it, install its stack.

`vendor/sd-scripts` is a gitlink (submodule); offline it is filled from an archive of the pinned tree. The
archive has no .git, so the pin is checked by file hashes recorded in `kohya.facts`. Nothing here writes to
the git index.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Sequence
from pathlib import Path

from kohya_1to2 import kohya
from kohya_1to2.errors import SetupError
from kohya_1to2.fsutil import atomic_write_text, sha256_file

STAMP_NAME = "kohya-1to2-setup.json"


def repo_root() -> Path:
    """The clone this package runs from (editable install or a plain checkout)."""
    return Path(__file__).resolve().parents[2]


def default_sd_scripts() -> Path:
    return repo_root() / "vendor" / "sd-scripts"


def pin_mismatches(sd_scripts: Path) -> list[str]:
    """Files whose content differs from the pinned tree's (empty = the pin)."""
    problems = []
    for rel, expected in kohya.PIN_FILE_SHA256.items():
        path = sd_scripts / rel
        if not path.is_file():
            problems.append(f"{rel} missing")
        elif sha256_file(path) != expected:
            problems.append(f"{rel} differs")
    return problems


def require_sd_scripts(sd_scripts: Path | None) -> Path:
    """The sd-scripts tree to run, verified against the pin; a SetupError says how to get it."""
    path = (sd_scripts or default_sd_scripts()).expanduser().resolve()
    if not kohya.is_sd_scripts_tree(path):
        raise SetupError(
            f"sd-scripts not found at {path}",
            hint=f"run ./bootstrap.sh (or `python -m kohya_1to2 setup [--archive {kohya.ARCHIVE_NAME}]`)",
        )
    problems = pin_mismatches(path)
    if problems:
        raise SetupError(
            f"sd-scripts at {path} is not the pinned {kohya.SD_SCRIPTS_TAG}: {', '.join(problems)}",
            hint="run `python -m kohya_1to2 setup` to restore the pinned tree",
        )
    return path


def _safe_members(archive: tarfile.TarFile) -> list[tarfile.TarInfo]:
    top = kohya.ARCHIVE_TOP_FOLDER
    members = []
    for member in archive.getmembers():
        parts = Path(member.name).parts
        if not parts or parts[0] != top or ".." in parts or Path(member.name).is_absolute():
            raise SetupError(
                f"archive entry {member.name!r} is outside {top}/",
                hint=f"use an archive of the pinned sd-scripts tree with one top folder {top}/",
            )
        if member.issym() or member.islnk() or member.isdev():
            continue
        members.append(member)
    return members


def extract_archive(archive: Path, dest: Path) -> None:
    """Extract an archive whose top folder is `sd-scripts/` into `dest` (replacing its files), verify the pin."""
    if not archive.is_file():
        raise SetupError(f"archive {archive} not found", hint="check --archive / SD_SCRIPTS_ARCHIVE")
    staging = dest.parent / (dest.name + ".extracting")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                for name in zf.namelist():
                    parts = Path(name).parts
                    if not parts or parts[0] != kohya.ARCHIVE_TOP_FOLDER or ".." in parts:
                        raise SetupError(f"archive entry {name!r} is outside {kohya.ARCHIVE_TOP_FOLDER}/")
                zf.extractall(staging)
        else:
            try:
                with tarfile.open(archive) as tf:
                    members = _safe_members(tf)
                    if hasattr(tarfile, "data_filter"):
                        tf.extractall(staging, members=members, filter="data")
                    else:  # pragma: no cover - Python < 3.10.12
                        tf.extractall(staging, members=members)
            except tarfile.TarError as exc:
                raise SetupError(f"{archive}: not a readable archive ({exc})",
                                 hint="pass a .tar.gz or .zip of the pinned sd-scripts tree") from None
        tree = staging / kohya.ARCHIVE_TOP_FOLDER
        problems = pin_mismatches(tree)
        if problems:
            raise SetupError(
                f"{archive} is not sd-scripts {kohya.SD_SCRIPTS_TAG}: {', '.join(problems)}",
                hint=f"use the archive of tag {kohya.SD_SCRIPTS_TAG} (commit {kohya.SD_SCRIPTS_COMMIT[:12]})",
            )
        dest.mkdir(parents=True, exist_ok=True)
        # Keep `dest` itself (the submodule's mount point); replace what is inside it.
        for child in dest.iterdir():
            if child.name == ".git":
                continue
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
        for child in tree.iterdir():
            shutil.move(str(child), str(dest / child.name))
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def submodule_update(root: Path) -> None:
    """`git submodule update --init vendor/sd-scripts` (needs GitHub)."""
    if shutil.which("git") is None:
        raise SetupError("git not found", hint="install git, or pass --archive with the pinned sd-scripts archive")
    proc = subprocess.run(
        ["git", "submodule", "update", "--init", "vendor/sd-scripts"], cwd=root, capture_output=True, text=True
    )
    if proc.returncode != 0:
        last = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["(no output)"]
        raise SetupError(
            f"git submodule update --init failed: {last[0]}",
            hint=f"offline? pass --archive path/to/{kohya.ARCHIVE_NAME} (or set SD_SCRIPTS_ARCHIVE)",
        )


def install_plan(python: str, sd_scripts: Path, *, cuda: bool) -> list[list[str]]:
    """The pip commands that install the training stack (pure, so it can be shown and tested)."""
    pip = [python, "-m", "pip", "install", "--disable-pip-version-check"]
    requirements = kohya.install_requirements(sd_scripts, cuda=cuda)
    plan = [
        [*pip, *kohya.TORCH_PAIR],
        [*pip, *requirements, kohya.LYCORIS_PIN, *kohya.TORCH_PAIR],
        # only for its CLIP BPE vocabulary (the offline tokenizer of the tiny model)
        [*pip, "--no-deps", "open-clip-torch"],
        [*pip, "--no-deps", "-e", str(sd_scripts)],
    ]
    return plan


def optional_install_plan(python: str, *, cuda: bool) -> list[list[str]]:
    """Steps whose failure only costs a substitution at launch (no xformers wheel for this torch: SDPA)."""
    pip = [python, "-m", "pip", "install", "--disable-pip-version-check"]
    return [[*pip, "xformers", *kohya.TORCH_PAIR]] if cuda else []


def plan_fingerprint(plan: Sequence[Sequence[str]]) -> str:
    return hashlib.sha256(json.dumps([list(step) for step in plan]).encode()).hexdigest()


def stamp_path() -> Path:
    """The stamp lives in the environment it describes, so a new venv re-installs."""
    return Path(sys.prefix) / STAMP_NAME


def installed_matches(plan: Sequence[Sequence[str]]) -> bool:
    path = stamp_path()
    try:
        return bool(json.loads(path.read_text(encoding="utf-8")).get("plan") == plan_fingerprint(plan))
    except (OSError, ValueError):
        return False


def run_install(plan: Sequence[Sequence[str]], log: Path, optional: Sequence[Sequence[str]] = ()) -> list[str]:
    """Run the pip commands, output to `log`; the stamp is written only when every required step succeeded.

    Returns the optional steps that failed (reported as warnings)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    failed: list[str] = []
    with log.open("w", encoding="utf-8") as fh:
        for step in plan:
            fh.write("+ " + " ".join(step) + "\n")
            fh.flush()
            proc = subprocess.run(list(step), stdout=fh, stderr=subprocess.STDOUT)
            if proc.returncode != 0:
                raise SetupError(
                    f"installing the training stack failed: {' '.join(step[4:])[:200]}",
                    hint=f"see {log}; re-run setup when fixed (finished steps are quick)",
                )
        for step in optional:
            fh.write("+ " + " ".join(step) + "\n")
            fh.flush()
            if subprocess.run(list(step), stdout=fh, stderr=subprocess.STDOUT).returncode != 0:
                failed.append(" ".join(step[4:]))
    atomic_write_text(stamp_path(), json.dumps({"plan": plan_fingerprint(plan)}) + "\n")
    return failed
