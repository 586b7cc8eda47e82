"""evaluate/compare.py: which runs may be compared, and the rows of their one grid (pure)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kohya_1to2.errors import UsageError
from kohya_1to2.evaluate import metrics as metric
from kohya_1to2.evaluate.compare import (
    RunRows,
    RunSources,
    compared_records,
    plan_comparison,
    refuse_other_sources,
    refuse_repeated_runs,
    run_names,
    source_difference,
)
from kohya_1to2.evaluate.rows import Row

BASE = Row(id="base", label="base model")


def trained(name: str, *rows: Row) -> dict[str, tuple[str, ...]]:
    """Cell keys of trained rows: their own weights, so unlike any other run's."""
    return {row.id: (f"{name}-{row.id}-a", f"{name}-{row.id}-b") for row in rows}


def sequential(name: str, base_keys: tuple[str, ...] = ("base-a", "base-b")) -> RunRows:
    rows = (BASE, Row(id="stage1", label="stage 1 final", weights=Path("s1"), stage=1),
            Row(id="stage2-e000002", label="stage 2 epoch 2 (final)", weights=Path("s2"), stage=2, epoch=2))
    return RunRows(name=name, mode="sequential", rows=rows, cells={"base": base_keys, **trained(name, *rows[1:])})


def joint(name: str, base_keys: tuple[str, ...] = ("base-a", "base-b")) -> RunRows:
    rows = (BASE, Row(id="stage1-e000002", label="joint epoch 2 (final)", weights=Path("j"), stage=1, epoch=2))
    return RunRows(name=name, mode="joint", rows=rows, cells={"base": base_keys, **trained(name, *rows[1:])})


def test_the_base_row_of_runs_with_the_same_inputs_is_shown_once_then_each_runs_rows() -> None:
    compared = plan_comparison([sequential("run_seq"), joint("run_joint")])
    assert [row.label for row in compared] == [
        "base model", "run_seq (sequential) · stage 1 final", "run_seq (sequential) · stage 2 epoch 2 (final)",
        "run_joint (joint) · joint epoch 2 (final)"]
    assert [row.id for row in compared] == ["base", "run_seq/stage1", "run_seq/stage2-e000002",
                                            "run_joint/stage1-e000002"]
    assert compared[0].shared_by == (0, 1) and [row.run for row in compared] == [0, 0, 0, 1]


def test_base_rows_made_from_other_inputs_are_each_shown_with_their_run() -> None:
    compared = plan_comparison([sequential("a"), joint("b", base_keys=("other-a", "other-b"))])
    assert [row.label for row in compared if row.row.id == "base"] == ["a (sequential) · base model",
                                                                       "b (joint) · base model"]
    assert len({row.id for row in compared}) == len(compared)


def test_a_row_shared_by_some_runs_names_them() -> None:
    first, second = sequential("seq"), sequential("replay")
    second = second.model_copy(update={"mode": "replay", "cells": {**second.cells, "stage1": first.cells["stage1"]}})
    compared = plan_comparison([first, second, joint("joint")])
    assert "seq (sequential), replay (replay) · stage 1 final" in [row.label for row in compared]
    assert [row.label for row in compared].count("base model") == 1
    every = plan_comparison([first, second])
    assert "all runs · stage 1 final" in [row.label for row in every]


def test_records_of_shown_rows_are_relabelled_and_run_records_are_tagged() -> None:
    runs = [sequential("a"), joint("b")]
    compared = plan_comparison(runs)

    def rate(row: str) -> metric.CompositeRate:
        return metric.CompositeRate(row=row, label="x", kind="pair", images=2, composites=1, rate=0.5,
                                    detector_accuracy=1.0)

    calibration = metric.CalibrationRecord(seam_threshold=0.5, split_threshold=0.9, accuracy=1.0, positives=2,
                                           negatives=2)
    best = metric.BestEpoch(kind="pair", stage=1, row="stage1-e000002", epoch=2, rate=0.5)
    records = [[rate("base"), rate("stage1"), calibration], [rate("base"), rate("stage1-e000002"), best]]
    out = [r.model_dump() for r in compared_records(compared, runs, records)]
    assert [(r["metric"], r.get("label"), r["run"]) for r in out] == [
        ("composite_rate", "base model", "a (sequential)"),
        ("composite_rate", "a (sequential) · stage 1 final", "a (sequential)"),
        ("calibration", None, "a (sequential)"),
        ("composite_rate", "b (joint) · joint epoch 2 (final)", "b (joint)"),  # b's base is a's base: once
        ("best_epoch", None, "b (joint)")]
    assert out[3]["row"] == "b/stage1-e000002" and out[4]["row"] == "stage1-e000002"


def sources(name: str, roots: tuple[str, ...] = ("/d/src",), **triggers: str) -> RunSources:
    chars = triggers or {"alice": "alice", "bob": "bob"}
    return RunSources(name=name, roots=tuple(Path(r) for r in roots), characters=tuple(chars.items()))


def test_source_differences_are_named() -> None:
    assert source_difference(sources("a", ("/d/x", "/d/y")), sources("b", ("/d/y", "/d/x"))) is None
    assert source_difference(sources("a"), sources("b", ("/d/other",))) == "b was prepared from /d/other, a from /d/src"
    found = source_difference(sources("a"), sources("b", alice="alice", carol="carol"))
    assert found == "the runs' characters differ: only a has bob; only b has carol"
    found = source_difference(sources("a"), sources("b", alice="alice", bob="bobby"))
    assert found == "the runs' triggers differ: bob: 'bob' in a, 'bobby' in b"


def test_refusals_are_one_line_usage_errors() -> None:
    refuse_other_sources([sources("a"), sources("b")])
    with pytest.raises(UsageError, match=r"^evaluate: cannot compare runs of different sources: .*only c has carol"):
        refuse_other_sources([sources("a"), sources("b"), sources("c", alice="alice", bob="bob", carol="carol")])
    with pytest.raises(UsageError, match="given twice"):
        refuse_repeated_runs([Path("/r/a"), Path("/r/b"), Path("/r/a")])


def test_run_names_are_folder_names_with_the_parent_where_two_collide() -> None:
    assert run_names([Path("/x/seq"), Path("/x/joint")]) == ["seq", "joint"]
    assert run_names([Path("/x/run"), Path("/y/run"), Path("/y/z")]) == ["x/run", "y/run", "z"]
