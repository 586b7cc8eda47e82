"""Stage planning and the run of both stages: effective TOMLs, completion records, outcome checks.

Planning is pure over what was read from disk (`StageConfig`); `execute_stage` is the imperative part.
"""

from __future__ import annotations

import functools
import json
import shlex
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import tomlkit
import tomlkit.exceptions

from kohya_1to2 import kohya
from kohya_1to2.errors import SetupError, TrainingError, UsageError
from kohya_1to2.fsutil import atomic_write_text, free_path
from kohya_1to2.kohya import options
from kohya_1to2.launch.argv import StageCommand
from kohya_1to2.launch.inputs import Attempt, Decision, Record, StageInputs, collect_inputs, decide
from kohya_1to2.launch.prompt_rounds import rotating_sample_prompts
from kohya_1to2.launch.run import run_child
from kohya_1to2.launch.substitutions import Capabilities, Substitution, apply_substitutions, plan_substitutions
from kohya_1to2.models import STAGES
from kohya_1to2.rundir import RunDir


@dataclass(frozen=True)
class StageConfig:
    """One stage's user TOML as read from disk, and what launch derives from it."""

    stage: int
    train_toml: Path
    dataset_toml: Path
    effective_toml: Path
    text: str
    flat: dict[str, Any]
    substitutions: tuple[Substitution, ...]
    subsets: tuple[dict[str, Any], ...] = ()  # the dataset TOML's subsets, scopes resolved as sd-scripts does
    resume_from: Path | None = None  # --resume: the sd-scripts state folder to continue from

    @property
    def final_weights(self) -> Path:
        path = kohya.final_weights_of(self.flat)
        if path is None:
            raise UsageError(
                f"{self.train_toml}: {options.OUTPUT_DIR} is not set",
                hint=f"set {options.OUTPUT_DIR} in the [saving] section"
            )
        return path

    @property
    def network_weights(self) -> Path | None:
        value = self.flat.get(options.NETWORK_WEIGHTS)
        return Path(value) if value else None

    @functools.cached_property
    def trained_text(self) -> str:
        """The user's TOML with this machine's substitutions: what the stage trains by (computed once: a tomlkit
        round trip is slow). A resume changes how the stage runs, not what it trains, so it is not in here."""
        return apply_substitutions(self.text, list(self.substitutions)) if self.substitutions else self.text

    @functools.cached_property
    def effective_text(self) -> str:
        """The text launch runs: the trained text, plus sd-scripts' resume keys on --resume."""
        return with_resume(self.trained_text, self.resume_from) if self.resume_from else self.trained_text


def with_resume(text: str, state_dir: Path) -> str:
    """Add sd-scripts' `resume = <state dir>` and continue at the saved step (in the first table: sd-scripts
    flattens them anyway)."""
    doc = tomlkit.parse(text)
    table: Any = next((v for v in doc.values() if isinstance(v, dict)), doc)
    table[options.RESUME] = str(state_dir)
    # without it sd-scripts restarts the step count (and the schedule's data) from 0 with the loaded state
    table[options.SKIP_UNTIL_INITIAL_STEP] = True
    return tomlkit.dumps(doc)


def saved_states(stage: StageConfig) -> list[Path]:
    """The `<output_name>*-state` folders sd-scripts' save_state wrote for this stage."""
    return kohya.saved_state_dirs(stage.final_weights.parent, str(stage.flat.get(options.OUTPUT_NAME) or ""))


def latest_state_dir(stage: StageConfig) -> Path:
    """The newest saved state of this stage."""
    folder = stage.final_weights.parent
    states = saved_states(stage)
    if not states:
        raise UsageError(
            f"--resume: no saved state of stage {stage.stage} in {folder}",
            hint=f"enable {kohya.SAVE_STATE} = true (and {kohya.SAVE_EVERY_N_EPOCHS} or save_every_n_steps) in "
                 f"{stage.train_toml}",
        )
    return max(states, key=lambda p: p.stat().st_mtime)


def read_stage(run_dir: Path, stage: int, caps: Capabilities) -> StageConfig:
    """Read a stage's TOMLs; a missing or broken file is a one-line error naming it."""
    layout = RunDir(run_dir)
    train_toml, dataset_toml = layout.train_toml(stage), layout.dataset_toml(stage)
    effective = layout.effective_toml(stage)
    for path in (train_toml, dataset_toml):
        if not path.is_file():
            raise UsageError(f"{path} not found", hint=f"run `python -m kohya_1to2 prepare ... --out {run_dir}` first")
    text = train_toml.read_text(encoding="utf-8")
    try:
        document = tomlkit.parse(text).unwrap()
    except tomlkit.exceptions.ParseError as exc:
        raise UsageError(f"{train_toml}: not valid TOML: {exc}", hint="fix the syntax") from None
    flat = kohya.flatten_training_config(document)
    subs = tuple(plan_substitutions(flat, caps))
    try:
        dataset = tomlkit.parse(dataset_toml.read_text(encoding="utf-8")).unwrap()
    except tomlkit.exceptions.ParseError as exc:
        raise UsageError(f"{dataset_toml}: not valid TOML: {exc}", hint="fix the syntax") from None
    subsets = tuple(kohya.resolved_subsets(dataset))
    return StageConfig(stage, train_toml, dataset_toml, effective, text, flat, subs, subsets)


def strict_error(stage: StageConfig) -> SetupError:
    listed = "; ".join(sub.describe() for sub in stage.substitutions if sub.gpu_only)
    return SetupError(
        f"{stage.train_toml}: this machine needs substitutions: {listed}",
        hint="run without --strict to accept them, or edit the TOML (see `python -m kohya_1to2 doctor`)",
    )


# ------------------------------------------------------------------ completion records and decisions


def stage_inputs(stage: StageConfig) -> StageInputs:
    """Everything the stage trains from, as it is on disk now."""
    network_version = kohya.installed_lycoris_version() if str(stage.flat.get(options.NETWORK_MODULE, "")).startswith(
        "lycoris") else None
    return collect_inputs(effective_text=stage.trained_text, dataset_toml=stage.dataset_toml,
                          subsets=stage.subsets, flat=stage.flat, network_version=network_version)


def read_record(run_dir: Path, stage: int) -> Record | None:
    path = RunDir(run_dir).completion_record(stage)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return Record(inputs=StageInputs.model_validate(data["inputs"]), finished=float(data["finished"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None  # absent, or written by an older version: the stage runs again


def read_attempt(run_dir: Path, stage: StageConfig) -> Attempt | None:
    path = RunDir(run_dir).attempt_record(stage.stage)
    try:
        started = float(json.loads(path.read_text(encoding="utf-8"))["started"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return Attempt(started=started, state_saved=saved_states(stage) != [])


def decide_stages(run_dir: Path, stages: dict[int, StageConfig], selected: tuple[int, ...], *, force: bool,
                  inputs: Mapping[int, StageInputs] | None = None) -> dict[int, Decision]:
    """The one decision `launch` and `launch --dry-run` both print: which selected stages run, and why.
    `inputs` are the stages' fingerprints when the caller already took them (they do not depend on resuming)."""
    decisions: dict[int, Decision] = {}
    upstream_runs = False
    for number in selected:
        stage = stages[number]
        decision = decide(
            number, inputs[number] if inputs is not None else stage_inputs(stage), read_record(run_dir, number),
            weights_exist=stage.final_weights.is_file(), force=force, upstream_runs=upstream_runs,
            attempt=read_attempt(run_dir, stage), resuming=stage.resume_from is not None,
        )
        decisions[number] = decision
        upstream_runs = upstream_runs or decision.runs
    return decisions


def record_attempt(run_dir: Path, stage: StageConfig) -> None:
    atomic_write_text(RunDir(run_dir).attempt_record(stage.stage), json.dumps({"started": time.time()}) + "\n")


def record_completion(run_dir: Path, stage: StageConfig, seconds: float = 0.0) -> None:
    """What the finished stage trained from; the next launch compares against it."""
    layout = RunDir(run_dir)
    record = {"finished": time.time(), "seconds": round(seconds, 1), "weights": str(stage.final_weights),
              "inputs": stage_inputs(stage).model_dump()}
    atomic_write_text(layout.completion_record(stage.stage), json.dumps(record, indent=1) + "\n")
    layout.attempt_record(stage.stage).unlink(missing_ok=True)


def rotate_log(log_path: Path) -> Path | None:
    """Keep an earlier attempt's log as `stageN.<time>.log`; a new attempt never overwrites it."""
    if not log_path.is_file():
        return None
    stamp = datetime.fromtimestamp(log_path.stat().st_mtime).strftime("%Y%m%d-%H%M%S")
    target = free_path(log_path.parent, f"{log_path.stem}.{stamp}", log_path.suffix)
    log_path.rename(target)
    return target


def select_stages(stage: int | None, from_stage: int | None, stages: tuple[int, ...] = STAGES) -> tuple[int, ...]:
    """The stages to consider, of those the run trains (`stages`)."""
    if stage is not None and from_stage is not None:
        raise UsageError("--stage and --from-stage cannot be combined", hint="use one of them")
    for given, flag in ((stage, "--stage"), (from_stage, "--from-stage")):
        if given is not None and given not in stages:
            raise UsageError(f"{flag} {given}: this run trains stage{'s' if len(stages) > 1 else ''} "
                             f"{', '.join(map(str, stages))} only", hint=f"use {flag} {stages[0]}")
    if stage is not None:
        return (stage,)
    return tuple(s for s in stages if s >= (from_stage or 1))


# ------------------------------------------------------------------ outcome checks


def weights_line_check(stage: StageConfig) -> Callable[[str], str | None]:
    """Stop stage 2 as soon as its weight-loading report lists missing or unexpected keys."""

    def check(line: str) -> str | None:
        if kohya.WEIGHTS_REPORT_PREFIX not in line:
            return None
        report = kohya.parse_weights_report(line)
        if report is None or report.clean:
            return None
        return (
            f"stage {stage.stage} did not load {report.file} cleanly: "
            f"{len(report.missing)} missing key(s) {list(report.missing[:3])}, "
            f"{len(report.unexpected)} unexpected key(s) {list(report.unexpected[:3])}"
        )

    return check


def judge_outcome(stage: StageConfig, returncode: int, stopped: str | None, log_text: str,
                  tail: list[str], log_path: Path) -> None:
    """Raise TrainingError unless the stage really trained and wrote its final network."""
    shown = "\n".join(tail)
    if stopped:
        raise TrainingError(
            f"{stopped}\n{shown}",
            hint=f"stage 2 must use the same {options.NETWORK_MODULE}, {options.NETWORK_DIM}, {options.NETWORK_ALPHA} "
                 f"and {options.NETWORK_ARGS} as stage 1",
        )
    if returncode != 0:
        raise TrainingError(
            f"stage {stage.stage} failed with exit code {returncode}; last lines of {log_path}:\n{shown}",
            hint=f"the full output is in {log_path}",
        )
    if kohya.NO_DATA_MARKER in log_text:
        raise TrainingError(
            f"stage {stage.stage} exited 0 but trained nothing: sd-scripts found no images ({log_path})",
            hint=f"check the {options.IMAGE_DIR} paths in {stage.dataset_toml}",
        )
    if stage.network_weights is not None:
        report = kohya.parse_weights_report(log_text)
        if report is None:
            raise TrainingError(
                f"stage {stage.stage} never reported loading {stage.network_weights} ({log_path})",
                hint=f"check {options.NETWORK_WEIGHTS} in the stage's TOML",
            )
    if not stage.final_weights.is_file():
        raise TrainingError(
            f"stage {stage.stage} exited 0 but wrote no final network {stage.final_weights}; "
            f"last lines:\n{shown}",
            hint=f"check {options.OUTPUT_DIR}/{options.OUTPUT_NAME} in {stage.train_toml}; full output in {log_path}",
        )


@dataclass
class StageResult:
    stage: int
    status: str
    seconds: float = 0.0
    weights: Path | None = None
    samples: list[Path] = field(default_factory=list)


def sample_images(stage: StageConfig, since: float = 0.0) -> list[Path]:
    folder = stage.final_weights.parent / "sample"
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in {".png", ".jpg", ".webp"}
                  and p.stat().st_mtime >= since)


def write_effective_toml(stage: StageConfig) -> None:
    atomic_write_text(stage.effective_toml, stage.effective_text)


def execute_stage(run_dir: Path, stage: StageConfig, command: StageCommand, hold: tuple[int, ...] = ()) -> StageResult:
    """Run one stage and check its outcome; raises TrainingError / Interrupted. `hold`: see `run_child`."""
    log_path = RunDir(run_dir).log(stage.stage)
    rotate_log(log_path)
    record_attempt(run_dir, stage)
    header_lines = [f"[kohya-1to2] stage {stage.stage}: {command.shell()}"]
    header_lines += [f"[kohya-1to2] substitution: {sub.describe()}" for sub in stage.substitutions]
    started_wall = time.time()
    started = time.monotonic()
    check = weights_line_check(stage) if stage.network_weights is not None else None
    with rotating_sample_prompts(stage.flat.get(options.SAMPLE_PROMPTS), check) as check:  # pair rounds per epoch
        result = run_child(command.argv, cwd=command.cwd, env=command.env, log_path=log_path, check=check,
                           header="\n".join(header_lines) + "\n", hold=hold)
    seconds = time.monotonic() - started
    log_text = log_path.read_text(encoding="utf-8", errors="replace")
    judge_outcome(stage, result.returncode, result.stopped_because, log_text, result.tail, log_path)
    record_completion(run_dir, stage, seconds)
    return StageResult(stage.stage, "trained", seconds, stage.final_weights,
                       sample_images(stage, since=started_wall - 1))


def dry_run_text(commands: list[StageCommand]) -> str:
    """What `--dry-run` prints: each stage's exact command, shell-quoted, and its environment."""
    lines: list[str] = []
    for command in commands:
        lines.append(f"# stage {command.stage}")
        lines.append(f"cd {shlex.quote(str(command.cwd))}")
        lines += [f"export {key}={shlex.quote(value)}" for key, value in sorted(command.env.items())]
        lines.append(shlex.join(command.argv))
        lines.append("")
    return "\n".join(lines)
