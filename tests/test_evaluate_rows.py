"""evaluate/rows.py: base, each earlier stage's final network, the final stage's epochs chosen by --epochs."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from kohya_1to2.errors import UsageError
from kohya_1to2.evaluate.rows import build_rows, parse_epochs, saved_epochs, select_epochs, stage_title


def write_network(path: Path, metadata: dict[str, str]) -> Path:
    header = json.dumps({"__metadata__": metadata}).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(struct.pack("<Q", len(header)) + header)
    return path


def test_epoch_files_and_the_final_file_by_its_metadata_epoch(tmp_path: Path) -> None:
    out = tmp_path / "output" / "stage2"
    write_network(out / "1to2-000001.safetensors", {"ss_epoch": "1"})
    write_network(out / "1to2-000002.safetensors", {"ss_epoch": "2"})
    write_network(out / "1to2.safetensors", {"ss_epoch": "3"})
    (out / "1to2-000002-state").mkdir()
    (out / "other-000001.safetensors").write_bytes(b"")
    found = saved_epochs(out, "1to2")
    assert [(e, p.name) for e, p in found] == [(1, "1to2-000001.safetensors"), (2, "1to2-000002.safetensors"),
                                              (3, "1to2.safetensors")]
    assert select_epochs(found, parse_epochs("last")) == found[-1:]
    assert select_epochs(found, parse_epochs("all")) == found
    assert [e for e, _ in select_epochs(found, parse_epochs("3,1"))] == [1, 3]
    with pytest.raises(UsageError, match="no saved epoch 7"):
        select_epochs(found, parse_epochs("7"))


@pytest.mark.parametrize("spec", ["", "zero", "0", "1,-2"])
def test_bad_epoch_specs(spec: str) -> None:
    with pytest.raises(UsageError):
        parse_epochs(spec)


def test_a_missing_epoch_names_the_stage_it_is_missing_from(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="joint has no saved epoch 4"):
        select_epochs([(1, tmp_path / "a.safetensors")], parse_epochs("4"), "joint")


def test_two_stage_rows_base_then_stage1_then_stage2(tmp_path: Path) -> None:
    epochs = [(1, tmp_path / "b-000001.safetensors"), (2, tmp_path / "b.safetensors")]
    rows = build_rows((1, 2), {1: tmp_path / "a_stage1.safetensors"}, epochs, last_epoch=2, mode="replay")
    assert [r.id for r in rows] == ["base", "stage1", "stage2-e000001", "stage2-e000002"]
    assert [r.label for r in rows] == ["base model", "stage 1 final", "stage 2 epoch 1", "stage 2 epoch 2 (final)"]
    assert rows[0].weights is None and [r.stage for r in rows] == [0, 1, 2, 2]
    assert [r.id for r in build_rows((1, 2), {1: None}, [], None, "sequential")] == ["base"]  # nothing trained


def test_one_stage_rows_are_base_then_that_stages_epochs_named_by_the_mode(tmp_path: Path) -> None:
    epochs = [(1, tmp_path / "j-000001.safetensors"), (2, tmp_path / "j.safetensors")]
    rows = build_rows((1,), {}, epochs, last_epoch=2, mode="joint")
    assert [r.id for r in rows] == ["base", "stage1-e000001", "stage1-e000002"]
    assert [r.label for r in rows] == ["base model", "joint epoch 1", "joint epoch 2 (final)"]
    assert [(r.stage, r.epoch) for r in rows] == [(0, None), (1, 1), (1, 2)]
    assert stage_title((1,), 1, "joint") == "joint" and stage_title((1, 2), 2, "replay") == "stage 2"
