"""`check <run dir | file.toml>`: lint the TOMLs against the sd-scripts that will run; exit 4 on problems.

Without --sd-scripts (or $KOHYA_1TO2_SD_SCRIPTS) that is the pin, from the bundled snapshot: no sd-scripts
needed here. With another install, its own parsers' options (generated once, cached: environment.install).
"""

from __future__ import annotations

import argparse
import os

from rich.console import Console
from rich.text import Text

from kohya_1to2 import kohya
from kohya_1to2.configs.lint import lint_file, lint_run, raise_for_problems
from kohya_1to2.environment.install import SD_SCRIPTS_ENV, install_snapshot, resolve_install
from kohya_1to2.errors import UsageError
from kohya_1to2.rundir import RunDir, current_writer


def run(args: argparse.Namespace, console: Console) -> int:
    target = args.target.expanduser()
    snapshot, against = None, f"sd-scripts {kohya.SD_SCRIPTS_TAG}"
    if getattr(args, "sd_scripts", None) is not None or os.environ.get(SD_SCRIPTS_ENV):
        install = resolve_install(args.sd_scripts, getattr(args, "python", None), os.environ)
        snapshot, against = install_snapshot(install, os.environ), install.label
    if target.is_dir():
        writer = current_writer(RunDir(target.resolve()))
        if writer:
            console.print(Text(f"warning: {target} is being written by {writer}; what is checked may change",
                               style="yellow"), soft_wrap=True)
        problems = lint_run(target.resolve(), snapshot)
    elif target.is_file():
        problems = lint_file(target.resolve(), snapshot=snapshot)
    else:
        raise UsageError(f"{target}: no such run directory or TOML file", hint="pass a run directory or a .toml")
    for problem in problems:
        style = "red" if problem.severity == "error" else "yellow"
        console.print(Text.assemble((f"{problem.severity}: ", style), problem.line), soft_wrap=True)
    raise_for_problems(problems, target)
    console.print(Text(f"ok: {target} passes the checks against {against}"))
    return 0
