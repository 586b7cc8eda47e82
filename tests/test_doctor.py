"""doctor: findings from probe facts (pure), the lycoris 4.x + SD1 trap, exit codes."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from kohya_1to2.cli import main
from kohya_1to2.environment import probe as doctor
from kohya_1to2.errors import SetupError
from kohya_1to2.kohya import lycoris_sd1_problem

CPU_FACTS: dict[str, Any] = {
    "python": "3.11.7", "executable": "/venv/bin/python", "torch": "2.14.1", "torchvision": "0.29.1",
    "torch_cuda_build": None, "cuda": False, "gpus": [], "xformers": None, "bitsandbytes": "0.50.2",
    "lycoris-lora": "3.4.0", "accelerate": "1.6.0", "xformers_ok": False, "bitsandbytes_ok": False,
}
GPU_FACTS = {**CPU_FACTS, "torch_cuda_build": "12.8", "cuda": True, "xformers": "0.0.30", "xformers_ok": True,
             "bitsandbytes_ok": True, "gpus": [{"name": "NVIDIA H100", "memory_gib": 79.1}]}


def by_label(facts: dict[str, Any]) -> dict[str, doctor.Finding]:
    lines = doctor.findings(facts, {"HOME": "/nonexistent"})
    return {line.label: line for line in lines}


def test_cpu_machine_reports_no_gpu_and_plans_every_substitution() -> None:
    lines = by_label(CPU_FACTS)
    assert "none" in lines["GPUs"].value
    assert "needs CUDA" in lines["bitsandbytes"].value
    assert not any(line.problem for line in lines.values())
    assert {s.key for s in doctor.planned_substitutions(CPU_FACTS)} == {
        "mixed_precision", "save_precision", "xformers", "sdpa", "optimizer_type"}


def test_gpu_machine_plans_no_substitution() -> None:
    assert "H100 (79.1 GiB)" in by_label(GPU_FACTS)["GPUs"].value
    assert doctor.planned_substitutions(GPU_FACTS) == []


@pytest.mark.parametrize("version", ["4.0.0", "4.1.3"])
def test_lycoris_4_is_a_problem_with_a_one_line_fix(version: str) -> None:
    line = by_label({**CPU_FACTS, "lycoris-lora": version})["lycoris-lora"]
    assert line.problem
    assert line.fix and "duplicated lora name" in line.fix and "lycoris-lora==3.4.0" in line.fix
    assert "\n" not in line.fix


def test_lycoris_problem_depends_on_family_and_preset() -> None:
    assert lycoris_sd1_problem("4.1.3", "sd1") is not None
    assert lycoris_sd1_problem("4.1.3", "sdxl") is None
    assert lycoris_sd1_problem("3.4.0", "sd1") is None
    assert lycoris_sd1_problem("4.1.3", "sd1", ["algo=loha", "preset=my.toml"]) is None


def test_broken_torch_is_a_problem() -> None:
    lines = by_label({**CPU_FACTS, "torch_error": "RuntimeError: operator torchvision::nms does not exist"})
    assert lines["torch import"].problem
    assert "torchvision==" in (lines["torch import"].fix or "")


def test_a_wrong_pin_is_a_problem_line_with_its_fix(monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    def not_the_pin(path: Path) -> Path:
        raise SetupError(f"sd-scripts at {path} is not the pinned v0.10.1: train_network.py differs", hint="setup")

    monkeypatch.setenv("COLUMNS", "400")
    monkeypatch.delenv("KOHYA_1TO2_SD_SCRIPTS", raising=False)
    monkeypatch.setattr("kohya_1to2.commands.doctor.probe_environment", lambda python: dict(CPU_FACTS))
    monkeypatch.setattr("kohya_1to2.commands.doctor.require_sd_scripts", not_the_pin)
    assert main(["doctor"]) == 5
    assert "train_network.py differs" in capsys.readouterr().out


@pytest.mark.slow
def test_probe_runs_in_a_child_python() -> None:
    facts = doctor.probe_environment(sys.executable)
    assert facts["python"].count(".") == 2
    assert "torch" in facts


@pytest.fixture
def sd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """`--sd-scripts` of a pinned-looking tree, on a machine whose probe finds CPU_FACTS."""
    monkeypatch.setattr("kohya_1to2.commands.doctor.probe_environment", lambda python: dict(CPU_FACTS))
    monkeypatch.setattr("kohya_1to2.commands.doctor.require_sd_scripts", lambda path: Path(path))
    (tmp_path / "train_network.py").write_text("")
    return ["--sd-scripts", str(tmp_path)]


def test_doctor_exit_codes(sd: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["doctor", *sd]) == 0
    out = capsys.readouterr().out
    assert "AdamW8bit' -> 'AdamW'" in out
    assert main(["doctor", *sd, "--strict"]) == 5
    monkeypatch.setattr("kohya_1to2.commands.doctor.probe_environment",
                        lambda python: {**CPU_FACTS, "lycoris-lora": "4.1.3"})
    assert main(["doctor", *sd]) == 5
    assert "lycoris-lora" in capsys.readouterr().err


def test_base_model_problems(tmp_path: Path) -> None:
    from kohya_1to2.kohya import base_model_problem

    (tmp_path / "m.safetensors").write_bytes(b"x")
    (tmp_path / "m.bin").write_bytes(b"x")
    (tmp_path / "diffusers" / "unet").mkdir(parents=True)
    (tmp_path / "empty").mkdir()
    assert base_model_problem(tmp_path / "m.safetensors") is None
    assert base_model_problem(tmp_path / "diffusers") is None
    assert base_model_problem("some-org/some-model") is None  # a Hub id
    assert "does not exist" in str(base_model_problem(tmp_path / "nope.safetensors"))
    assert "neither" in str(base_model_problem(tmp_path / "m.bin"))
    assert "not a diffusers model" in str(base_model_problem(tmp_path / "empty"))


def test_doctor_reports_a_missing_base_model(tmp_path: Path, sd: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """Why 5: a nonexistent base model passed doctor; launch then failed ~20 s in with a tokenizer TypeError."""
    assert main(["doctor", *sd, "--base-model", str(tmp_path / "train_network.py")]) == 5
    assert "base model" in capsys.readouterr().err
    run = tmp_path / "run"
    run.mkdir()
    (run / "stage1.train.toml").write_text(f'[model]\npretrained_model_name_or_path = "{tmp_path / "gone"}"\n')
    assert main(["doctor", str(run), *sd]) == 5
    assert "does not exist" in capsys.readouterr().out.replace("\n", "")
    (tmp_path / "gone").mkdir()
    (tmp_path / "gone" / "model_index.json").write_text("{}")
    assert main(["doctor", str(run), *sd]) == 0


def test_doctor_shows_what_the_base_model_predicts(tmp_path: Path, sd: list[str], monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from tests.fake_launch import write_safetensors_header

    monkeypatch.setenv("COLUMNS", "400")  # one table row per line
    base = write_safetensors_header(tmp_path / "models" / "m.safetensors", metadata={"modelspec.prediction_type": "v"})
    assert main(["doctor", *sd, "--base-model", str(base)]) == 0
    out = capsys.readouterr().out.replace("\n", "")
    assert "v-prediction (its metadata modelspec.prediction_type = 'v')" in out


def test_a_long_path_wraps_whole_instead_of_ending_in_an_ellipsis(tmp_path: Path, sd: list[str],
                                                                   monkeypatch: pytest.MonkeyPatch,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """A path is what a user copies from doctor: on a narrow terminal it folds onto the next lines, whole."""
    model = tmp_path / ("m" * 60) / ("n" * 60) / "model"
    model.mkdir(parents=True)
    (model / "model_index.json").write_text("{}")
    monkeypatch.setenv("COLUMNS", "80")
    assert main(["doctor", *sd, "--base-model", str(model)]) == 0
    out = capsys.readouterr().out
    assert "…" not in out
    found = "".join(line.split("│")[2].strip() for line in out.splitlines() if line.count("│") == 3)
    assert str(model) in found
