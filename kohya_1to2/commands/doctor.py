"""`doctor`: print the training environment and what `launch` will substitute on this machine."""

from __future__ import annotations

import argparse
import os

from rich.console import Console
from rich.table import Table
from rich.text import Text

from kohya_1to2.errors import SetupError
from kohya_1to2.launch.doctor import findings, planned_substitutions, probe_environment
from kohya_1to2.launch.vendor import default_sd_scripts, pin_mismatches


def run(args: argparse.Namespace, console: Console) -> int:
    sd_scripts = (args.sd_scripts or default_sd_scripts()).expanduser().resolve()
    pin = pin_mismatches(sd_scripts) if (sd_scripts / "train_network.py").is_file() else None
    facts = probe_environment()
    lines = findings(facts, sd_scripts, pin, dict(os.environ))
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
