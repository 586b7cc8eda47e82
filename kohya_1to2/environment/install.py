"""Which sd-scripts runs, with which Python, at which version: the pinned vendor/sd-scripts by default, or the
user's own tree (`--sd-scripts`, e.g. a kohya_ss install's sd-scripts/) run by its own Python (`--python`).

Another install's options are read once from its real parsers, by its own Python (kohya/parser_snapshot.py run
as a script), and cached under $XDG_CACHE_HOME/kohya-1to2/snapshots/ keyed by version and the parser files'
hashes; `check` and `launch` lint against them, naming the keys the presets use that the install lacks.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from kohya_1to2 import kohya
from kohya_1to2.configs.lint.version import INSTALL_KEY
from kohya_1to2.environment.probe import Finding
from kohya_1to2.environment.vendor import default_sd_scripts, pin_mismatches, require_sd_scripts
from kohya_1to2.errors import SetupError
from kohya_1to2.fsutil import atomic_write_text, sha256_file
from kohya_1to2.kohya import installs, parser_snapshot
from kohya_1to2.launch.session import Interpreter, this_interpreter
from kohya_1to2.launch.substitutions import capabilities_from

SD_SCRIPTS_ENV = "KOHYA_1TO2_SD_SCRIPTS"
PYTHON_ENV = "KOHYA_1TO2_PYTHON"
CACHE_NAME = "kohya-1to2"
SNAPSHOT_TIMEOUT_S = 600.0
"""Reading the parsers imports torch and sd-scripts' library in the install's Python: seconds, once."""


ChosenBy = Literal["vendored", "--sd-scripts", "$KOHYA_1TO2_SD_SCRIPTS"]


class SdScriptsInstall(BaseModel):
    """The sd-scripts tree a command runs, the Python that runs it, and its version."""

    model_config = ConfigDict(frozen=True)

    path: Path
    python: str
    version: str
    pinned: bool
    """The tree's pinned files match the pin (kohya.PIN_FILE_SHA256): its snapshot is the bundled one."""
    chosen_by: ChosenBy
    python_by: str

    @property
    def label(self) -> str:
        return f"sd-scripts {self.version} at {self.path}"

    @property
    def kind(self) -> str:
        """Vendored pin, a copy of the pin elsewhere, or an external install (doctor's words)."""
        if self.path == default_sd_scripts().resolve():
            return "the vendored pin"
        return f"{self.chosen_by}: its files match the pin" if self.pinned else f"external, {self.chosen_by}"


def resolve_install(sd_scripts: Path | None, python: Path | None, environ: Mapping[str, str],
                    pinned: Callable[[Path], Path] = require_sd_scripts) -> SdScriptsInstall:
    """Flag, else environment variable, else the vendored pin (verified by `pinned`, which raises SetupError).

    A tree given explicitly that is not the pin is an external install: its version is detected and its
    Python is --python, $KOHYA_1TO2_PYTHON or the venv beside it; without one, a SetupError asks for --python."""
    given, chosen_by = _given_tree(sd_scripts, environ)
    if given is None or given == default_sd_scripts().resolve():
        path = pinned(given or default_sd_scripts())
        python_path, python_by = _python_for(None, python, environ) or (sys.executable, "this interpreter")
        return SdScriptsInstall(path=path, python=python_path, version=kohya.SD_SCRIPTS_TAG, pinned=True,
                                chosen_by=chosen_by, python_by=python_by)
    try:
        path, is_pin = pinned(given), True
    except SetupError:
        if not kohya.is_sd_scripts_tree(given):
            raise SetupError(f"{chosen_by} {given}: not an sd-scripts tree (no {kohya.TRAINING_SCRIPTS['sd1']})",
                             hint="pass the sd-scripts folder itself, e.g. <kohya_ss>/sd-scripts") from None
        path, is_pin = given, False
    found = _python_for(path, python, environ)
    if found is None and is_pin:
        found = (sys.executable, "this interpreter")
    if found is None:
        raise SetupError(f"no Python found for {path}: none of {', '.join(installs.VENV_PYTHONS[:2])} beside it",
                         hint=f"pass --python PATH (or set {PYTHON_ENV}) to the Python of that install")
    version = kohya.SD_SCRIPTS_TAG if is_pin else detect_version(path)
    return SdScriptsInstall(path=path, python=found[0], version=version, pinned=is_pin, chosen_by=chosen_by,
                            python_by=found[1])


def _given_tree(sd_scripts: Path | None, environ: Mapping[str, str]) -> tuple[Path | None, ChosenBy]:
    if sd_scripts is not None:
        return sd_scripts.expanduser().resolve(), "--sd-scripts"
    if environ.get(SD_SCRIPTS_ENV):
        return Path(environ[SD_SCRIPTS_ENV]).expanduser().resolve(), "$KOHYA_1TO2_SD_SCRIPTS"
    return None, "vendored"


def _python_for(tree: Path | None, python: Path | None, environ: Mapping[str, str]) -> tuple[str, str] | None:
    """(python, where it came from): --python, $KOHYA_1TO2_PYTHON, else the venv beside `tree` (None: none)."""
    given = (python, "--python") if python is not None else \
        (Path(environ[PYTHON_ENV]), f"${PYTHON_ENV}") if environ.get(PYTHON_ENV) else None
    if given is not None:
        # absolute, `..` folded, links not resolved: a venv's python is a link whose venv is found from its own path
        path = Path(os.path.abspath(given[0].expanduser()))
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise SetupError(f"{given[1]} {path}: no such executable",
                             hint="pass the Python of that sd-scripts install")
        return str(path), given[1]
    for candidate in installs.python_candidates(tree) if tree is not None else []:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate.absolute()), "the venv beside it"
    return None


def detect_version(tree: Path) -> str:
    """`git describe --tags` of a checkout, else library/__init__'s __version__, else the pin's tag when its
    files match, else `unknown (<why>)`."""
    described = _git_describe(tree)
    if described:
        return described
    init = tree / installs.LIBRARY_INIT
    version = installs.library_version(init.read_text(encoding="utf-8", errors="replace")) if init.is_file() else None
    if version:
        return version
    differs = pin_mismatches(tree)
    if not differs:
        return kohya.SD_SCRIPTS_TAG
    git = "no tag" if (tree / ".git").exists() else "not a git checkout"
    return f"unknown ({git}; {differs[0]} from {kohya.SD_SCRIPTS_TAG})"


def _git_describe(tree: Path) -> str | None:
    # only the tree's own repository: without its .git, git would describe an enclosing one (ours)
    if not (tree / ".git").exists() or shutil.which("git") is None:
        return None
    try:
        proc = subprocess.run(["git", "-C", str(tree), "describe", "--tags"], capture_output=True, text=True,
                              timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout.strip() or None if proc.returncode == 0 else None


def cache_dir(environ: Mapping[str, str]) -> Path:
    """$XDG_CACHE_HOME/kohya-1to2, else ~/.cache/kohya-1to2."""
    base = environ.get("XDG_CACHE_HOME") or str(Path(environ.get("HOME") or Path.home()) / ".cache")
    return Path(base).expanduser() / CACHE_NAME


def snapshot_key(install: SdScriptsInstall) -> str:
    """Version + the hashes of the files the parsers are built from (and of the generator): an edit regenerates."""
    digest = hashlib.sha256(install.version.encode())
    for path in [*installs.parser_sources(install.path), Path(parser_snapshot.__file__)]:
        name = path.relative_to(install.path).as_posix() if path.is_relative_to(install.path) else path.name
        digest.update(f"\0{name}\0{sha256_file(path)}".encode())
    version = re.sub(r"[^A-Za-z0-9._-]+", "_", install.version).strip("_")[:40] or "unknown"
    return f"{version}-{digest.hexdigest()[:16]}"


def install_snapshot(install: SdScriptsInstall, environ: Mapping[str, str]) -> dict[str, Any] | None:
    """The options `check` lints against for this install: None for the pin (the bundled snapshot), else the
    cached snapshot of its parsers, generated first when missing or stale."""
    if install.pinned:
        return None
    cached = cache_dir(environ) / "snapshots" / f"{snapshot_key(install)}.json"
    try:
        data: dict[str, Any] = json.loads(cached.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        data = generate_snapshot(install)
        atomic_write_text(cached, parser_snapshot.snapshot_text(data))
    return {**data, INSTALL_KEY: str(install.path)}


def generate_snapshot(install: SdScriptsInstall) -> dict[str, Any]:
    """Run kohya/parser_snapshot.py in the install's Python, cwd = its tree; a failure names both."""
    with tempfile.TemporaryDirectory(prefix="kohya-1to2-snapshot-") as tmp:
        out = Path(tmp) / "snapshot.json"
        argv = [install.python, parser_snapshot.__file__, str(install.path), "--version", install.version,
                "--scripts", *installs.snapshot_scripts(), "--out", str(out)]
        try:
            proc = subprocess.run(argv, cwd=install.path, capture_output=True, text=True, timeout=SNAPSHOT_TIMEOUT_S,
                                  env={**os.environ, "PYTHONWARNINGS": "ignore"})
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise SetupError(f"could not read the options of {install.label} with {install.python}: {exc}",
                             hint="pass --python the Python of that install") from None
        if proc.returncode != 0 or not out.is_file():
            last = (proc.stderr.strip() or proc.stdout.strip() or "no output").splitlines()[-1]
            raise SetupError(f"could not read the options of {install.label} with {install.python}: {last}",
                             hint="pass --python the Python of that install (its venv, with torch)")
        data: dict[str, Any] = json.loads(out.read_text(encoding="utf-8"))
    return data


INTERPRETER_PROBE = r"""
import importlib.util as u, importlib.metadata as md, json, pathlib
def found(name):
    try:
        return u.find_spec(name) is not None
    except (ImportError, ValueError):
        return False
cuda = False
spec = u.find_spec("torch")
if spec is not None and spec.origin:
    try:
        for line in (pathlib.Path(spec.origin).parent / "version.py").read_text(encoding="utf-8").splitlines():
            if line.startswith("cuda") and "=" in line:
                cuda = line.split("=", 1)[1].strip() not in ("None", "")
                break
    except OSError:
        pass
try:
    lycoris = md.version("lycoris-lora")
except md.PackageNotFoundError:
    lycoris = None
print(json.dumps({"cuda": cuda, "xformers": found("xformers"), "bitsandbytes": found("bitsandbytes"),
                  "lycoris": lycoris}))
"""
"""What launch needs of the install's Python, without importing torch (as launch.substitutions probes ours)."""


def interpreter_of(install: SdScriptsInstall, environ: Mapping[str, str]) -> Interpreter:
    """This interpreter when it runs the install, else the install's Python probed in a child."""
    if install.python == sys.executable:
        return this_interpreter()
    try:
        proc = subprocess.run([install.python, "-c", INTERPRETER_PROBE], capture_output=True, text=True, timeout=120)
        facts = json.loads(proc.stdout.strip().splitlines()[-1])
    except (OSError, subprocess.TimeoutExpired, ValueError, IndexError):
        raise SetupError(f"{install.python} (the Python of {install.label}) does not run",
                         hint="pass --python a working Python of that install") from None
    caps = capabilities_from(bool(facts["cuda"]), bool(facts["xformers"]), bool(facts["bitsandbytes"]), environ)
    return Interpreter(install.python, caps, facts.get("lycoris"))


def install_findings(install: SdScriptsInstall) -> list[Finding]:
    """doctor's lines for the install in use: which tree, which version, which Python (pure)."""
    version = install.version
    if install.pinned:
        version += f" ({kohya.SD_SCRIPTS_COMMIT[:12]})"
    return [Finding("sd-scripts", f"{version} at {install.path} ({install.kind})"),
            Finding("sd-scripts python", f"{install.python} ({install.python_by})")]
