"""demo: the bundled example through prepare, launch, evaluate and report, called as functions with models
(smoke profile unless a GPU and a base model)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kohya_1to2.launch.substitutions import Capabilities


def record(seen: list[tuple[str, Any]], name: str, code: int = 0) -> Any:
    def call(options: Any, *rest: Any) -> int:
        seen.append((name, options))
        return code

    return call


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, Any]]:
    seen: list[tuple[str, Any]] = []
    monkeypatch.setattr("kohya_1to2.commands.prepare.prepare", record(seen, "prepare"))
    monkeypatch.setattr("kohya_1to2.commands.launch.launch", record(seen, "launch"))
    monkeypatch.setattr("kohya_1to2.commands.evaluate.evaluate_run", record(seen, "evaluate"))
    monkeypatch.setattr("kohya_1to2.commands.report.report", record(seen, "report"))
    monkeypatch.setattr("kohya_1to2.commands.demo.ensure_tiny_model", lambda console: Path("/cache/tiny"))
    return seen


def run_demo(*argv: str) -> int:
    from rich.console import Console

    from kohya_1to2.cli import build_parser
    from kohya_1to2.commands import demo

    return demo.run(build_parser().parse_args(["demo", *argv]), Console(quiet=True))


def test_without_base_model_demo_uses_the_smoke_profile(calls: list[tuple[str, Any]], tmp_path: Path) -> None:
    assert run_demo("--out", str(tmp_path / "ex")) == 0
    assert [name for name, _ in calls] == ["prepare", "launch", "evaluate", "report"]
    (_, job), (_, launch), (_, evaluate), (_, report) = calls
    assert job.sources.roots[0].parts[-2:] == ("examples", "dataset")
    assert (job.training.preset, job.training.base_model) == ("smoke", "/cache/tiny")
    assert launch.run_dir == tmp_path / "ex" and launch.smoke
    # one seed, 2 steps, one single and one pair per row on the tiny model, then the report
    assert (evaluate.seeds, evaluate.steps, evaluate.singles, evaluate.pairs) == (1, 2, 1, 1)
    assert report == tmp_path / "ex"


def test_with_a_base_model_demo_uses_the_seed_preset(calls: list[tuple[str, Any]], tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("kohya_1to2.commands.demo.probe_capabilities",
                        lambda: Capabilities(cuda=True, xformers=True, bitsandbytes=True))
    assert run_demo("--out", str(tmp_path / "ex"), "--base-model", str(tmp_path / "model.safetensors")) == 0
    (_, job), (_, launch), (_, evaluate), _ = calls
    assert (job.training.preset, job.training.base_model) == ("seed", str(tmp_path / "model.safetensors"))
    assert not launch.smoke and evaluate.seeds == 4, "a real model gets the full evaluation"


def test_a_failed_prepare_stops_the_demo(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    seen: list[tuple[str, Any]] = []
    monkeypatch.setattr("kohya_1to2.commands.prepare.prepare", record(seen, "prepare", code=3))
    monkeypatch.setattr("kohya_1to2.commands.launch.launch", record(seen, "launch"))
    monkeypatch.setattr("kohya_1to2.commands.demo.ensure_tiny_model", lambda console: Path("/cache/tiny"))
    assert run_demo("--out", str(tmp_path / "ex")) == 3
    assert [name for name, _ in seen] == ["prepare"]


def test_demo_scene_style_cuts_the_example_out_by_its_bundled_masks(calls: list[tuple[str, Any]],
                                                                    tmp_path: Path) -> None:
    assert run_demo("--out", str(tmp_path / "ex"), "--composite-style", "scene") == 0
    job = calls[0][1]
    assert job.composites.style == "scene" and job.composites.masks.parts[-2:] == ("examples", "masks")
    assert job.composites.masks.is_dir()
    assert run_demo("--out", str(tmp_path / "side")) == 0
    assert calls[4][1].composites.style == "side-by-side" and calls[4][1].composites.masks is None
