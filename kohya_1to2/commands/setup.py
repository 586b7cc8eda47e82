"""`setup [--archive X] [--no-deps]`: populate vendor/sd-scripts at the pin and install the training stack.

Idempotent: a verified tree is left alone and a stamp in the environment skips a finished install, so a
re-run takes seconds.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from rich.console import Console

from kohya_1to2 import kohya
from kohya_1to2.environment.vendor import (
    default_sd_scripts,
    extract_archive,
    install_plan,
    installed_matches,
    optional_install_plan,
    pin_mismatches,
    repo_root,
    require_sd_scripts,
    run_install,
    submodule_update,
)
from kohya_1to2.launch.substitutions import probe_capabilities


def ensure_sd_scripts(archive: Path | None, console: Console) -> Path:
    dest = default_sd_scripts()
    if kohya.is_sd_scripts_tree(dest) and not pin_mismatches(dest):
        console.print(f"sd-scripts {kohya.SD_SCRIPTS_TAG}: verified at {dest}")
        return dest
    if archive is not None:
        console.print(f"sd-scripts: extracting {archive} into {dest}")
        extract_archive(archive.expanduser().resolve(), dest)
    else:
        console.print("sd-scripts: git submodule update --init vendor/sd-scripts")
        submodule_update(repo_root())
    path = require_sd_scripts(dest)
    console.print(f"sd-scripts {kohya.SD_SCRIPTS_TAG}: verified at {path}")
    return path


def run(args: argparse.Namespace, console: Console) -> int:
    started = time.monotonic()
    archive = args.archive or (Path(os.environ["SD_SCRIPTS_ARCHIVE"]) if os.environ.get("SD_SCRIPTS_ARCHIVE")
                               else None)
    sd_scripts = ensure_sd_scripts(archive, console)
    if args.no_deps:
        console.print("training stack: skipped (--no-deps)")
        return 0
    plan = install_plan(sys.executable, sd_scripts, cuda=probe_capabilities().cuda)
    if installed_matches(plan):
        console.print("training stack: already installed (stamp matches)")
    else:
        log = repo_root() / ".cache" / "setup-pip.log"
        console.print(f"training stack: installing ({len(plan)} pip steps, log: {log}); this takes a few minutes")
        cuda = probe_capabilities().cuda
        for failed in run_install(plan, log, optional_install_plan(sys.executable, cuda=cuda)):
            console.print(f"warning: optional {failed!r} could not be installed; launch will substitute it")
    console.print(f"setup done in {time.monotonic() - started:.0f} s")
    return 0
