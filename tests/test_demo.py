"""demo: the bundled example through prepare and launch, smoke profile unless a GPU and a base model."""

from __future__ import annotations

from pathlib import Path

import pytest

from kohya_1to2.launch.substitutions import Capabilities


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    seen: list[list[str]] = []
    monkeypatch.setattr("kohya_1to2.cli.main", lambda argv: seen.append(list(argv)) or 0)
    monkeypatch.setattr("kohya_1to2.commands.demo.ensure_tiny_model", lambda console: Path("/cache/tiny"))
    return seen


def run_demo(*argv: str) -> int:
    from rich.console import Console

    from kohya_1to2.cli import build_parser
    from kohya_1to2.commands import demo

    return demo.run(build_parser().parse_args(["demo", *argv]), Console(quiet=True))


def test_without_base_model_demo_uses_the_smoke_profile(calls: list[list[str]], tmp_path: Path) -> None:
    assert run_demo("--out", str(tmp_path / "ex")) == 0
    prepare, launch, evaluate, report = calls
    assert prepare[0] == "prepare" and prepare[1].endswith("examples/dataset")
    assert prepare[prepare.index("--preset") + 1] == "smoke"
    assert prepare[prepare.index("--base-model") + 1] == "/cache/tiny"
    assert launch == ["launch", str(tmp_path / "ex"), "--smoke"]
    # then one seed, 2 steps, one single and one pair per row on the tiny model, and the report
    assert evaluate == ["evaluate", str(tmp_path / "ex"), "--seeds", "1", "--steps", "2", "--singles", "1",
                        "--pairs", "1"]
    assert report == ["report", str(tmp_path / "ex")]


def test_with_a_base_model_demo_uses_the_seed_preset(calls: list[list[str]], tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("kohya_1to2.commands.demo.probe_capabilities",
                        lambda: Capabilities(cuda=True, xformers=True, bitsandbytes=True))
    assert run_demo("--out", str(tmp_path / "ex"), "--base-model", str(tmp_path / "model.safetensors")) == 0
    prepare, launch, evaluate, report = calls
    assert prepare[prepare.index("--preset") + 1] == "seed"
    assert prepare[prepare.index("--base-model") + 1] == str(tmp_path / "model.safetensors")
    assert launch == ["launch", str(tmp_path / "ex")]
    assert evaluate == ["evaluate", str(tmp_path / "ex")] and report == ["report", str(tmp_path / "ex")]


def test_a_failed_prepare_stops_the_demo(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    seen: list[list[str]] = []
    monkeypatch.setattr("kohya_1to2.cli.main", lambda argv: seen.append(list(argv)) or 3)
    monkeypatch.setattr("kohya_1to2.commands.demo.ensure_tiny_model", lambda console: Path("/cache/tiny"))
    assert run_demo("--out", str(tmp_path / "ex")) == 3
    assert len(seen) == 1
