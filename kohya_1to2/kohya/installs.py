"""An sd-scripts install other than the pin: where its Python usually is, how its version shows, which files
make its parsers (the key of its cached option snapshot). Pure functions over paths; no subprocess."""

from __future__ import annotations

import re
from pathlib import Path

from kohya_1to2.kohya.facts import TRAINING_SCRIPTS

VENV_PYTHONS: tuple[str, ...] = ("venv/bin/python", ".venv/bin/python", "venv/Scripts/python.exe",
                                  ".venv/Scripts/python.exe")
"""Where a venv keeps its Python (Windows: Scripts/), relative to the folder holding the venv."""

LIBRARY_INIT = "library/__init__.py"
_VERSION_LINE = re.compile(r"""(?m)^__version__\s*=\s*["']([^"']+)["']""")


def python_candidates(tree: Path) -> list[Path]:
    """The Pythons beside `tree` to try, most likely first (existence is the caller's to check): kohya_ss keeps
    sd-scripts in `<kohya_ss>/sd-scripts` and its venv in `<kohya_ss>/venv` (`.venv` when set up with uv); a plain
    checkout has its venv inside."""
    return [tree.parent / rel for rel in VENV_PYTHONS] + [tree / rel for rel in VENV_PYTHONS]


def library_version(init_text: str) -> str | None:
    """`__version__` of sd-scripts' `library` package, where a release sets one (v0.10.1's file is empty)."""
    match = _VERSION_LINE.search(init_text)
    return match.group(1) if match else None


def parser_sources(tree: Path) -> list[Path]:
    """The files an install's training parsers are built from: its training scripts and the `library` package
    (train_util, config_util and the helpers their setup_parser calls). An edit to any regenerates the snapshot."""
    scripts = [tree / script for script in dict.fromkeys(TRAINING_SCRIPTS.values())]
    library = sorted((tree / "library").rglob("*.py")) if (tree / "library").is_dir() else []
    return [path for path in scripts if path.is_file()] + library


def snapshot_scripts() -> list[str]:
    """The training scripts whose parsers a snapshot holds (one per family, as `check` lints them)."""
    return list(dict.fromkeys(TRAINING_SCRIPTS.values()))

