"""`doctor`: print the training environment and what `launch` will substitute on this machine."""

from __future__ import annotations

import argparse
import os
import sys

from rich.console import Console
from rich.table import Table
from rich.text import Text

from kohya_1to2 import kohya
from kohya_1to2.configs.lint import read_toml
from kohya_1to2.environment.install import SdScriptsInstall, install_findings, resolve_install
from kohya_1to2.environment.probe import Finding, base_model_finding, findings, planned_substitutions, probe_environment
from kohya_1to2.environment.vendor import require_sd_scripts
from kohya_1to2.errors import SetupError, UsageError
from kohya_1to2.kohya import flatten_training_config
from kohya_1to2.models import STAGES
from kohya_1to2.rundir import RunDir


def base_model_lines(args: argparse.Namespace) -> list[Finding]:
    """--base-model, and the base model of each stage of RUN_DIR, if given."""
    out = []
    if getattr(args, "base_model", None):
        out.append(base_model_finding(str(args.base_model), "--base-model"))
    run_dir = getattr(args, "run_dir", None)
    if run_dir is not None:
        if not run_dir.is_dir():
            raise UsageError(f"run directory {run_dir} not found", hint="pass a run directory made by prepare")
        for stage in STAGES:
            path = RunDir(run_dir).train_toml(stage)
            if path.is_file():
                model = flatten_training_config(read_toml(path)).get(kohya.PRETRAINED_MODEL)
                out.append(base_model_finding(str(model or ""), str(path)))
    return out


def install_lines(args: argparse.Namespace) -> tuple[SdScriptsInstall | None, list[Finding]]:
    """The sd-scripts in use (--sd-scripts, $KOHYA_1TO2_SD_SCRIPTS or the pin) and its Python, or why none."""
    try:
        install = resolve_install(args.sd_scripts, getattr(args, "python", None), os.environ,
                                  pinned=require_sd_scripts)
    except SetupError as exc:
        return None, [Finding("sd-scripts", exc.message, True, exc.hint)]
    return install, install_findings(install)


def run(args: argparse.Namespace, console: Console) -> int:
    install, sd_lines = install_lines(args)
    facts = probe_environment(install.python if install else sys.executable)
    lines = findings(facts, dict(os.environ)) + sd_lines + base_model_lines(args)
    table = Table(title="kohya-1to2 doctor", show_header=False)
    table.add_column("what")
    table.add_column("found", overflow="fold")  # paths wrap whole, never end in an ellipsis
    for line in lines:
        value = Text(line.value, style="red" if line.problem else "")
        if line.fix:
            value.append(f"\nfix: {line.fix}", style="yellow")
        table.add_row(line.label, value)
    console.print(table)
    subs = planned_substitutions(facts) if "probe_error" not in facts else []
    if subs:
        console.print("launch will substitute on this machine (printed and logged per stage; --strict refuses):")
        for sub in subs:
            console.print(Text(f"  {sub.describe()}"), soft_wrap=True)
    else:
        console.print("launch will substitute nothing on this machine")
    problems = [line for line in lines if line.problem]
    if problems:
        raise SetupError(f"{len(problems)} problem(s): {problems[0].label}: {problems[0].value}",
                         hint=problems[0].fix)
    if subs and args.strict:
        raise SetupError(f"--strict: {len(subs)} substitution(s) needed on this machine",
                         hint="use a machine with CUDA, xformers and bitsandbytes, or run without --strict")
    return 0
