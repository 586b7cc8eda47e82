"""Argv building: the exact `accelerate launch` command of each stage, against golden files."""

from __future__ import annotations

import os
import shlex
from pathlib import Path

import pytest

from kohya_1to2.launch.argv import (
    AccelerateOptions,
    accelerate_arguments,
    build_stage_command,
    stage_environment,
)
from kohya_1to2.launch.pipeline import dry_run_text

GOLDEN = Path(__file__).parent / "golden" / "launch"
RUN = Path("/runs/my run")
SD = Path("/opt/sd-scripts")
PYTHON = "/venv/bin/python"
ENV = {"HOME": "/home/user"}


def dry_run(family: str, accelerate: AccelerateOptions, *, cuda: bool, mixed: str = "bf16") -> str:
    commands = [
        build_stage_command(
            stage=stage, run_dir=RUN, sd_scripts=SD, python=PYTHON, family=family,  # type: ignore[arg-type]
            accelerate=accelerate, cuda=cuda, mixed_precision=mixed, cpu_threads=4, environ=ENV,
            offline=not cuda,
        )
        for stage in (1, 2)
    ]
    return dry_run_text(commands)


CASES = {
    "single_gpu": ("sd1", AccelerateOptions(), True),
    "multi_gpu": ("sd1", AccelerateOptions(multi_gpu=True, num_processes=4, gpu_ids="0,1,2,3",
                                           main_process_port=29501), True),
    "multi_node": ("sdxl", AccelerateOptions(multi_gpu=True, num_processes=16, num_machines=2, machine_rank=1,
                                            main_process_ip="10.0.0.1", main_process_port=29500), True),
    "sdxl": ("sdxl", AccelerateOptions(), True),
    "cpu": ("sd1", AccelerateOptions(), False),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_dry_run_matches_golden(name: str) -> None:
    family, options, cuda = CASES[name]
    text = dry_run(family, options, cuda=cuda)
    golden = GOLDEN / f"{name}.txt"
    if os.environ.get("KOHYA_1TO2_UPDATE_GOLDEN") == "1":
        golden.write_text(text, encoding="utf-8")
    assert text == golden.read_text(encoding="utf-8")


def test_sdxl_uses_its_own_script_and_sd1_the_network_script() -> None:
    sdxl = build_stage_command(stage=1, run_dir=RUN, sd_scripts=SD, python=PYTHON, family="sdxl",
                               accelerate=AccelerateOptions(), cuda=True, mixed_precision="bf16", cpu_threads=1,
                               environ=ENV, offline=False)
    sd2 = sdxl.model_copy(update={"argv": build_stage_command(
        stage=1, run_dir=RUN, sd_scripts=SD, python=PYTHON, family="sd2", accelerate=AccelerateOptions(),
        cuda=True, mixed_precision="bf16", cpu_threads=1, environ=ENV, offline=False).argv})
    assert str(SD / "sdxl_train_network.py") in sdxl.argv
    assert str(SD / "train_network.py") in sd2.argv
    assert sdxl.cwd == SD


def test_argv_is_a_list_that_survives_odd_paths() -> None:
    run = Path("/data/runs/it's \"quoted\" ünï cödé")
    command = build_stage_command(stage=2, run_dir=run, sd_scripts=SD, python=PYTHON, family="sd1",
                                  accelerate=AccelerateOptions(), cuda=False, mixed_precision="no", cpu_threads=2,
                                  environ=ENV, offline=True)
    config = command.argv[command.argv.index("--config_file") + 1]
    assert config == str(run / ".1to2" / "launch" / "stage2.train.toml")
    assert command.argv[-1] == str(run / "stage2.dataset.toml")
    # the shell form round-trips to the same argv
    assert shlex.split(command.shell())[-len(command.argv):] == list(command.argv)


def test_cpu_runs_need_no_interactive_accelerate_config() -> None:
    args = accelerate_arguments(AccelerateOptions(), cuda=False, mixed_precision="fp16", cpu_threads=3)
    assert args == ["--cpu", "--num_processes", "1", "--num_machines", "1", "--mixed_precision", "no",
                    "--dynamo_backend", "no", "--num_cpu_threads_per_process", "3"]


def test_an_accelerate_config_file_decides_what_the_user_did_not_give() -> None:
    args = accelerate_arguments(AccelerateOptions(config_file=Path("/cfg.yaml"), num_processes=2),
                                cuda=True, mixed_precision="bf16", cpu_threads=1)
    assert args == ["--config_file", "/cfg.yaml", "--num_processes", "2"]


def test_environment_isolates_accelerate_config_but_keeps_the_hub_cache() -> None:
    env = stage_environment(RUN, {"HF_HOME": "/big/hf"}, offline=True, private_accelerate=True)
    assert env["HF_HOME"] == str(RUN / ".1to2" / "hf_home")
    assert env["HF_HUB_CACHE"] == "/big/hf/hub"
    assert env["HF_HUB_OFFLINE"] == "1"
    with_config = stage_environment(RUN, {"HF_HOME": "/big/hf"}, offline=False, private_accelerate=False)
    assert "HF_HOME" not in with_config and "HF_HUB_OFFLINE" not in with_config


@pytest.mark.parametrize("argv", [["plan"], ["launch", "--dry-run"], ["launch"], ["report"]])
def test_a_folder_that_is_not_a_run_directory_is_exit_2_for_every_reader(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    """Issue 19: plan and launch --dry-run said 'stage1.dataset.toml not found' with exit 4."""
    from kohya_1to2.cli import main

    (tmp_path / "holiday photos").mkdir()
    assert main([argv[0], str(tmp_path / "holiday photos"), *argv[1:]]) == 2
    assert "is not a prepared run directory" in capsys.readouterr().err
