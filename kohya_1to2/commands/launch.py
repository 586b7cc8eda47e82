"""`launch RUN_DIR`: check, then train stage 1 and stage 2 through accelerate and the pinned sd-scripts.

The parent never imports torch: machine facts come from a fast probe, the training runs in the child.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from rich.console import Console
from rich.table import Table
from rich.text import Text

from kohya_1to2.configs.presets import run_family
from kohya_1to2.environment.vendor import require_sd_scripts
from kohya_1to2.errors import CheckError, SetupError
from kohya_1to2.flags import model_overrides
from kohya_1to2.kohya import NETWORK_ARGS, NETWORK_MODULE, installed_lycoris_version, lycoris_sd1_problem
from kohya_1to2.launch.argv import AccelerateOptions, StageCommand, build_stage_command
from kohya_1to2.launch.pipeline import (
    StageConfig,
    StageResult,
    decide_stages,
    dry_run_text,
    execute_stage,
    latest_state_dir,
    read_stage,
    select_stages,
    stage_inputs,
    strict_error,
    write_effective_toml,
)
from kohya_1to2.launch.substitutions import Capabilities, probe_capabilities
from kohya_1to2.models import Family
from kohya_1to2.rundir import RunDir, require_run_dir, run_stages, writer_lock


def lint_problems(run_dir: Path) -> list[str]:
    """`check` on the run directory (kohya_1to2.configs.lint), one line per error: launch's only rule book."""
    from kohya_1to2.configs.lint import lint_run

    return [p.line for p in lint_run(run_dir) if p.severity == "error"]


class LaunchOptions(BaseModel):
    """What `launch` was asked to do; its command-line flags are derived from these fields."""

    model_config = ConfigDict(frozen=True)

    run_dir: Path
    dry_run: bool = Field(False, description="print the decision and the exact commands; run nothing")
    force: bool = Field(False, description="re-run stages even when nothing they train from changed")
    stage: Literal[1, 2] | None = Field(None, description="run only this stage")
    from_stage: Literal[1, 2] | None = Field(None, description="start at this stage")
    strict: bool = Field(False, description="refuse to substitute GPU-only options")
    smoke: bool = Field(False, description="offline run (HF_HUB_OFFLINE=1), as the tiny smoke model needs")
    sd_scripts: Path | None = Field(None, description="sd-scripts checkout (default: vendor/sd-scripts)")
    resume: bool = Field(False, description="resume an interrupted stage from its saved state")
    accelerate: AccelerateOptions = AccelerateOptions()

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> LaunchOptions:
        accelerate = model_overrides(args, "accelerate")
        if accelerate.get("config_file"):
            accelerate["config_file"] = Path(accelerate["config_file"]).expanduser().resolve()
        return cls(run_dir=args.run_dir, accelerate=AccelerateOptions(**accelerate),
                   **model_overrides(args, "launch"))


def stage_command(args: LaunchOptions, run_dir: Path, sd_scripts: Path, family: Family,
                  stage: StageConfig, caps: Capabilities) -> StageCommand:
    effective_mixed = str(stage.flat.get("mixed_precision") or "no")
    for sub in stage.substitutions:
        if sub.key == "mixed_precision":
            effective_mixed = str(sub.new)
    return build_stage_command(
        stage=stage.stage,
        run_dir=run_dir,
        sd_scripts=sd_scripts,
        python=sys.executable,
        family=family,
        accelerate=args.accelerate,
        cuda=caps.cuda,
        mixed_precision=effective_mixed,
        cpu_threads=(os.cpu_count() or 1) if not caps.cuda else 1,
        environ=os.environ,
        offline=bool(args.smoke or os.environ.get("HF_HUB_OFFLINE") == "1" or not caps.cuda),
    )


def summary_table(results: list[StageResult]) -> Table:
    table = Table(title="1to2 launch summary")
    for column in ("stage", "status", "time", "final weights", "samples"):
        table.add_column(column, overflow="fold")
    for result in results:
        table.add_row(
            str(result.stage),
            result.status,
            f"{result.seconds:.0f} s" if result.seconds else "-",
            Text(str(result.weights or "-")),
            Text(f"{len(result.samples)} in {result.samples[0].parent}" if result.samples else "-"),
        )
    return table


def run(args: argparse.Namespace, console: Console) -> int:
    return launch(LaunchOptions.from_args(args), console)


def launch(args: LaunchOptions, console: Console) -> int:
    """`launch` for callers that hold options, not a command line (`demo`)."""
    run_dir = require_run_dir(args.run_dir)
    selected = select_stages(args.stage, args.from_stage, run_stages(run_dir))
    if args.dry_run:
        return launch_stages(args, console, run_dir, selected)
    with writer_lock(RunDir(run_dir), "launch") as lock:
        return launch_stages(args, console, run_dir, selected, hold=(lock,))


def launch_stages(args: LaunchOptions, console: Console, run_dir: Path, selected: tuple[int, ...],
                  hold: tuple[int, ...] = ()) -> int:
    """Check, decide which stages run (the same decision for --dry-run), then run them in order.

    `hold`: the run directory's lock descriptor, kept open until the last process of a stage is gone."""
    problems = lint_problems(run_dir)
    if problems:
        raise CheckError(
            f"check found {len(problems)} problem(s) in {run_dir}: {problems[0]}",
            hint=f"run `python -m kohya_1to2 check {run_dir}` for the full list",
        )
    sd_scripts = require_sd_scripts(args.sd_scripts)
    family = run_family(run_dir)
    caps = probe_capabilities()
    stages: dict[int, StageConfig] = {n: read_stage(run_dir, n, caps) for n in run_stages(run_dir)}
    if str(stages[1].flat.get(NETWORK_MODULE, "")).startswith("lycoris"):
        args_list = stages[1].flat.get(NETWORK_ARGS)
        problem = lycoris_sd1_problem(installed_lycoris_version(), family,
                                      args_list if isinstance(args_list, list) else None)
        if problem:
            raise SetupError(problem, hint="`python -m kohya_1to2 doctor` shows the environment")
    inputs = {n: stage_inputs(stages[n]) for n in selected}  # fingerprinted once: resuming does not change them
    decisions = decide_stages(run_dir, stages, selected, force=args.force, inputs=inputs)
    if args.resume:
        # the first stage that runs continues from its newest saved state
        first = next((n for n in selected if decisions[n].runs), None)
        if first is not None:
            state = latest_state_dir(stages[first])
            stages[first] = dataclasses.replace(stages[first], resume_from=state)
            decisions = decide_stages(run_dir, stages, selected, force=args.force, inputs=inputs)
            console.print(Text(f"stage {first}: resuming from {state}"), soft_wrap=True)
    running = [n for n in selected if decisions[n].runs]
    for number in running:
        stage = stages[number]
        if args.strict and any(sub.gpu_only for sub in stage.substitutions):
            raise strict_error(stage)
        for sub in stage.substitutions:
            console.print(Text(f"stage {number}: substitution: {sub.describe()}", style="yellow"), soft_wrap=True)
    for number in selected:
        console.print(Text(decisions[number].line, style="bold" if decisions[number].runs else "dim"),
                      soft_wrap=True)
    for number in running:
        write_effective_toml(stages[number])  # what the printed command reads, also after --dry-run
    commands = {n: stage_command(args, run_dir, sd_scripts, family, stages[n], caps) for n in running}
    if args.dry_run:
        console.print(Text(dry_run_text(list(commands.values()))), soft_wrap=True)
        return 0

    results: list[StageResult] = []
    for number in selected:
        stage = stages[number]
        if not decisions[number].runs:
            results.append(StageResult(number, "skipped", weights=stage.final_weights))
            continue
        if stage.network_weights is not None and not stage.network_weights.is_file():
            raise SetupError(
                f"stage {number} starts from {stage.network_weights}, which does not exist",
                hint="run stage 1 first (`launch` without --stage)",
            )
        console.print(Text(f"stage {number}: {commands[number].shell()}", style="bold"), soft_wrap=True)
        results.append(execute_stage(run_dir, stage, commands[number], hold))
    console.print(summary_table(results))
    from kohya_1to2.evaluate.report import write_report

    try:  # the run's report (evaluate adds its grids); training succeeded even if this fails
        console.print(Text(f"report: {write_report(run_dir)}"), soft_wrap=True)
    except Exception as exc:
        console.print(Text(f"report not written: {type(exc).__name__}: {exc}", style="yellow"), soft_wrap=True)
    return 0
