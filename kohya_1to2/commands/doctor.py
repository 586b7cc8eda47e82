"""`doctor`: print the training environment and what `launch` will substitute on this machine."""

from __future__ import annotations

import argparse
import os

from rich.console import Console
from rich.table import Table
from rich.text import Text

from kohya_1to2 import kohya
from kohya_1to2.configs.lint import read_toml
from kohya_1to2.environment.probe import Finding, base_model_finding, findings, planned_substitutions, probe_environment
from kohya_1to2.environment.vendor import default_sd_scripts, pin_mismatches
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


def run(args: argparse.Namespace, console: Console) -> int:
    sd_scripts = (args.sd_scripts or default_sd_scripts()).expanduser().resolve()
    pin = pin_mismatches(sd_scripts) if kohya.is_sd_scripts_tree(sd_scripts) else None
    facts = probe_environment()
    lines = findings(facts, sd_scripts, pin, dict(os.environ)) + base_model_lines(args)
    table = Table(title="kohya-1to2 doctor", show_header=False)
    table.add_column("what")
    table.add_column("found")
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
