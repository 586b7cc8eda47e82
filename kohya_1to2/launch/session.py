"""One `launch`: check the run, decide which stages run (the same decision for --dry-run), then run them in order.

`plan_launch` decides, and writes only the effective TOMLs the printed commands read; `run_planned` runs them.
The parent never imports torch: machine facts come from a fast probe, the training runs in the child.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from rich.console import Console
from rich.text import Text

from kohya_1to2.configs.lint import lint_run
from kohya_1to2.configs.presets import run_family
from kohya_1to2.errors import CheckError, SetupError
from kohya_1to2.kohya import NETWORK_ARGS, NETWORK_MODULE, installed_lycoris_version, lycoris_sd1_problem, options
from kohya_1to2.launch.argv import AccelerateOptions, StageCommand, build_stage_command
from kohya_1to2.launch.inputs import Decision
from kohya_1to2.launch.pipeline import (
    StageConfig,
    StageResult,
    decide_stages,
    execute_stage,
    latest_state_dir,
    read_stage,
    stage_inputs,
    strict_error,
    write_effective_toml,
)
from kohya_1to2.launch.substitutions import Capabilities, probe_capabilities
from kohya_1to2.models import Family
from kohya_1to2.rundir import run_stages


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
    sd_scripts: Path | None = Field(None, description="sd-scripts tree to run, e.g. a kohya_ss install's sd-scripts/ "
                                    "(default: $KOHYA_1TO2_SD_SCRIPTS, else the pinned vendor/sd-scripts)")
    python: Path | None = Field(None, description="the Python that runs that sd-scripts (default: $KOHYA_1TO2_PYTHON, "
                                "else the venv beside it; this one for the pin)")
    resume: bool = Field(False, description="resume an interrupted stage from its saved state")
    accelerate: AccelerateOptions = AccelerateOptions()


def require_checked(run_dir: Path, snapshot: Mapping[str, Any] | None = None,
                    console: Console | None = None) -> list[str]:
    """Refuse (exit 4) a run `check` finds errors in, naming the first (and printing every one on `console`:
    another install's missing options come as a batch); else `check`'s warnings, which launch prints before
    anything runs (a v-pred base trained as epsilon is a warning, and trains without an error)."""
    problems = lint_run(run_dir, snapshot)
    errors = [p.line for p in problems if p.severity == "error"]
    if errors:
        if console is not None:
            for line in errors:
                console.print(Text.assemble(("error: ", "red"), line), soft_wrap=True)
        raise CheckError(
            f"check found {len(errors)} problem(s) in {run_dir}: {errors[0]}",
            hint=f"run `python -m kohya_1to2 check {run_dir}` for the full list",
        )
    return [p.line for p in problems if p.severity == "warning"]


@dataclass(frozen=True)
class Interpreter:
    """The Python that runs sd-scripts and what it can do here: by default this one (probed without importing
    torch); an external install's own, probed in a child by environment.install."""

    python: str
    caps: Capabilities
    lycoris_version: str | None


def this_interpreter() -> Interpreter:
    return Interpreter(sys.executable, probe_capabilities(), installed_lycoris_version())


@dataclass(frozen=True)
class LaunchPlan:
    """The stages selected, what each decided, and the command of each that runs."""

    run_dir: Path
    selected: tuple[int, ...]
    stages: dict[int, StageConfig]
    decisions: dict[int, Decision]
    commands: dict[int, StageCommand]

    @property
    def running(self) -> list[int]:
        return [n for n in self.selected if self.decisions[n].runs]


def plan_launch(args: LaunchOptions, run_dir: Path, selected: tuple[int, ...], sd_scripts: Path,
                console: Console, interpreter: Interpreter | None = None) -> LaunchPlan:
    """Read every stage, decide which run (resuming the first from its newest state with --resume), print the
    substitutions and decisions, and write the effective TOMLs the commands read (also on --dry-run)."""
    family = run_family(run_dir)
    python = interpreter or this_interpreter()
    caps = python.caps
    stages: dict[int, StageConfig] = {n: read_stage(run_dir, n, caps) for n in run_stages(run_dir)}
    _require_lycoris_fits(stages[1], family, python.lycoris_version)
    inputs = {n: stage_inputs(stages[n]) for n in selected}  # fingerprinted once: resuming does not change them
    decisions = decide_stages(run_dir, stages, selected, force=args.force, inputs=inputs)
    first = next((n for n in selected if decisions[n].runs), None)
    if args.resume and first is not None:  # the first stage that runs continues from its newest saved state
        state = latest_state_dir(stages[first])
        stages[first] = dataclasses.replace(stages[first], resume_from=state)
        decisions = decide_stages(run_dir, stages, selected, force=args.force, inputs=inputs)
        console.print(Text(f"stage {first}: resuming from {state}"), soft_wrap=True)
    running = [n for n in selected if decisions[n].runs]
    for number in running:
        if args.strict and any(sub.gpu_only for sub in stages[number].substitutions):
            raise strict_error(stages[number])
        for sub in stages[number].substitutions:
            console.print(Text(f"stage {number}: substitution: {sub.describe()}", style="yellow"), soft_wrap=True)
    for number in selected:
        console.print(Text(decisions[number].line, style="bold" if decisions[number].runs else "dim"),
                      soft_wrap=True)
    for number in running:
        write_effective_toml(stages[number])  # what the printed command reads, also after --dry-run
    commands = {n: stage_command(args, run_dir, sd_scripts, python.python, family, stages[n], caps) for n in running}
    return LaunchPlan(run_dir, selected, stages, decisions, commands)


def _require_lycoris_fits(stage: StageConfig, family: Family, lycoris_version: str | None) -> None:
    if str(stage.flat.get(NETWORK_MODULE, "")).startswith("lycoris"):
        args_list = stage.flat.get(NETWORK_ARGS)
        problem = lycoris_sd1_problem(lycoris_version, family,
                                      args_list if isinstance(args_list, list) else None)
        if problem:
            raise SetupError(problem, hint="`python -m kohya_1to2 doctor` shows the environment")


def run_planned(plan: LaunchPlan, console: Console, hold: tuple[int, ...] = ()) -> list[StageResult]:
    """Run the stages that run, in order; a skipped one reports its existing weights.

    `hold`: the run directory's lock descriptor, kept open until the last process of a stage is gone."""
    results: list[StageResult] = []
    for number in plan.selected:
        stage = plan.stages[number]
        if not plan.decisions[number].runs:
            results.append(StageResult(number, "skipped", weights=stage.final_weights))
            continue
        if stage.network_weights is not None and not stage.network_weights.is_file():
            raise SetupError(
                f"stage {number} starts from {stage.network_weights}, which does not exist",
                hint="run stage 1 first (`launch` without --stage)",
            )
        console.print(Text(f"stage {number}: {plan.commands[number].shell()}", style="bold"), soft_wrap=True)
        results.append(execute_stage(plan.run_dir, stage, plan.commands[number], hold))
    return results


def stage_command(args: LaunchOptions, run_dir: Path, sd_scripts: Path, python: str, family: Family,
                  stage: StageConfig, caps: Capabilities) -> StageCommand:
    effective_mixed = str(stage.flat.get(options.MIXED_PRECISION) or "no")
    for sub in stage.substitutions:
        if sub.key == options.MIXED_PRECISION:
            effective_mixed = str(sub.new)
    return build_stage_command(
        stage=stage.stage,
        run_dir=run_dir,
        sd_scripts=sd_scripts,
        python=python,
        family=family,
        accelerate=args.accelerate,
        cuda=caps.cuda,
        mixed_precision=effective_mixed,
        cpu_threads=(os.cpu_count() or 1) if not caps.cuda else 1,
        environ=os.environ,
        offline=bool(args.smoke or os.environ.get("HF_HUB_OFFLINE") == "1" or not caps.cuda),
    )
