"""Each stage's command as an argv list plus its environment (pure; `run.py` executes it).

`accelerate launch [accelerate options] <sd-scripts>/<script> --config_file X --dataset_config Y`, cwd =
sd-scripts root. Accelerate options pass through, so multi-GPU and multi-node runs are accelerate's own.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from kohya_1to2 import kohya
from kohya_1to2.models import Family
from kohya_1to2.rundir import RunDir


class AccelerateOptions(BaseModel):
    """`accelerate launch` options as the user gave them (None = not given); `launch` derives its flags from it."""

    model_config = ConfigDict(frozen=True)

    num_processes: int | None = Field(None, description="processes (GPUs) in all")
    multi_gpu: bool = Field(False, description="distributed training on several GPUs")
    num_machines: int | None = Field(None, description="machines taking part")
    machine_rank: int | None = Field(None, description="this machine's rank")
    main_process_ip: str | None = Field(None, description="IP address of the rank-0 machine")
    main_process_port: int | None = Field(None, description="port of the rank-0 machine")
    mixed_precision: Literal["no", "fp16", "bf16"] | None = Field(
        None, description="accelerate's mixed precision (default: the training TOML's)")
    num_cpu_threads_per_process: int | None = Field(None, description="CPU threads per process")
    gpu_ids: str | None = Field(None, description="GPUs to use, e.g. 0,1")
    config_file: Path | None = Field(None, description="an accelerate config file (--config_file)",
                                     json_schema_extra={"flag": "accelerate-config"})


class StageCommand(BaseModel):
    """Everything needed to start one stage: argv, the environment added to the parent's, cwd."""

    model_config = ConfigDict(frozen=True)

    stage: int
    argv: tuple[str, ...]
    env: dict[str, str]
    cwd: Path

    def shell(self) -> str:
        """The exact command, shell-quoted, for `--dry-run` and the log."""
        env = " ".join(f"{key}={shlex.quote(value)}" for key, value in sorted(self.env.items()))
        return f"cd {shlex.quote(str(self.cwd))} && env {env} {shlex.join(self.argv)}"


def accelerate_arguments(
    opts: AccelerateOptions, *, cuda: bool, mixed_precision: str, cpu_threads: int
) -> list[str]:
    """Accelerate options: the user's, plus explicit defaults so no interactive config is needed.

    With an accelerate `--config_file` only the options the user gave are added (the file decides the rest).
    `mixed_precision` is the training TOML's (sd-scripts passes its own to Accelerator; keep them equal).
    """
    args: list[str] = []
    from_file = opts.config_file is not None

    def option(name: str, value: object, default: object = None) -> None:
        if value is not None:
            args.extend([f"--{name}", str(value)])
        elif not from_file and default is not None:
            args.extend([f"--{name}", str(default)])

    def switch(name: str, on: bool) -> None:
        if on:
            args.append(f"--{name}")

    # accelerate's own option names (its --config_file is spelled like sd-scripts' kohya.CONFIG_FILE, a
    # different option of a different program)
    option("config_file", opts.config_file)
    switch("cpu", not cuda)
    switch("multi_gpu", opts.multi_gpu)
    option("gpu_ids", opts.gpu_ids)
    option("num_processes", opts.num_processes, 1)
    option("num_machines", opts.num_machines, 1)
    option("machine_rank", opts.machine_rank, None)
    option("main_process_ip", opts.main_process_ip, None)
    option("main_process_port", opts.main_process_port, None)
    option(kohya.MIXED_PRECISION, opts.mixed_precision, mixed_precision if cuda else "no")
    option("dynamo_backend", None, "no")
    option("num_cpu_threads_per_process", opts.num_cpu_threads_per_process, cpu_threads)
    return args


def stage_environment(
    run_dir: Path, environ: Mapping[str, str], *, offline: bool, private_accelerate: bool
) -> dict[str, str]:
    """Variables added to the child's environment.

    HF_HOME is private to the run so no user-level accelerate config is read (unless the user names one);
    the hub cache stays the user's so a real run does not download the tokenizer again.
    """
    env: dict[str, str] = {}
    if private_accelerate:
        user_home = environ.get("HF_HOME") or str(Path(environ.get("HOME", "~")) / ".cache" / "huggingface")
        env["HF_HOME"] = str(RunDir(run_dir).hf_home)
        env["HF_HUB_CACHE"] = environ.get("HF_HUB_CACHE") or str(Path(user_home) / "hub")
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    env["PYTHONUNBUFFERED"] = "1"  # stream the child's output as it happens
    return env


def build_stage_command(
    *,
    stage: int,
    run_dir: Path,
    sd_scripts: Path,
    python: str,
    family: Family,
    accelerate: AccelerateOptions,
    cuda: bool,
    mixed_precision: str,
    cpu_threads: int,
    environ: Mapping[str, str],
    offline: bool,
) -> StageCommand:
    """The command of one stage (pure: every machine fact comes in as an argument)."""
    layout = RunDir(run_dir)
    dataset_toml, effective_toml = layout.dataset_toml(stage), layout.effective_toml(stage)
    argv = [
        python,
        "-m",
        "accelerate.commands.launch",
        *accelerate_arguments(accelerate, cuda=cuda, mixed_precision=mixed_precision, cpu_threads=cpu_threads),
        str(sd_scripts / kohya.training_script(family)),
        kohya.flag(kohya.CONFIG_FILE),
        str(effective_toml),
        kohya.flag(kohya.DATASET_CONFIG),
        str(dataset_toml),
    ]
    env = stage_environment(
        run_dir, environ, offline=offline, private_accelerate=accelerate.config_file is None
    )
    return StageCommand(stage=stage, argv=tuple(argv), env=env, cwd=sd_scripts)
