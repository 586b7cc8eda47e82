"""commands/evaluate.py: user mistakes are one-line errors; rows come from the run's saved networks."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from kohya_1to2.cli import main
from kohya_1to2.commands.evaluate import evaluation_rows
from kohya_1to2.errors import UsageError
from tests.test_evaluate_rows import write_network


def test_not_a_run_directory_and_bad_counts_are_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["evaluate", str(tmp_path / "nowhere")]) == 2
    assert "not a prepared run directory" in capsys.readouterr().err
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "job.json").write_text("{}")
    assert main(["evaluate", str(tmp_path / "run"), "--seeds", "0"]) == 2
    assert "--seeds" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path / "run"), "--multiplier", "0.5"]) == 2
    assert "only at 1.0" in capsys.readouterr().err


def test_rows_from_the_stage_configs_and_saved_networks(tmp_path: Path) -> None:
    flat1 = {"output_dir": str(tmp_path / "out1"), "output_name": "1to2_stage1", "save_model_as": "safetensors"}
    flat2 = {"output_dir": str(tmp_path / "out2"), "output_name": "1to2", "save_model_as": "safetensors"}
    args = argparse.Namespace(epochs="all")
    assert [r.id for r in evaluation_rows(args, flat1, flat2)] == ["base"]  # nothing trained yet
    write_network(tmp_path / "out1" / "1to2_stage1.safetensors", {"ss_epoch": "1"})
    write_network(tmp_path / "out2" / "1to2-000001.safetensors", {"ss_epoch": "1"})
    write_network(tmp_path / "out2" / "1to2.safetensors", {"ss_epoch": "2"})
    rows = evaluation_rows(args, flat1, flat2)
    assert [r.id for r in rows] == ["base", "stage1", "stage2-e000001", "stage2-e000002"]
    assert rows[1].weights == tmp_path / "out1" / "1to2_stage1.safetensors"
    assert [r.id for r in evaluation_rows(argparse.Namespace(epochs="last"), flat1, flat2)][-1] == "stage2-e000002"
    with pytest.raises(UsageError):
        evaluation_rows(argparse.Namespace(epochs="5"), flat1, flat2)
