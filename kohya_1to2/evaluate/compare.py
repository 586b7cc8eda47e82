"""`evaluate RUN1 RUN2 ...` (pure): which runs may be compared, and the rows of their one grid per prompt.

Runs are comparable when they were prepared from the same sources (roots, characters and triggers), so their
prompts are the same; every run is then sampled with the first run's prompts, seeds, sizes and steps. A row
whose every cell was made from the same inputs as an earlier row's (same prompt line, generation options,
weights and base model: the reuse keys of `generate.py`) shows the same images, so it is shown once: the base
model of runs with the same base model and settings, for one.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from kohya_1to2.errors import UsageError
from kohya_1to2.evaluate import metrics as metric
from kohya_1to2.evaluate.rows import Row

COMPARE_FOLDER = "compare"
"""<first run>/eval/compare/: the comparison's grids, metrics.jsonl and comparison.json."""
COMPARISON_FILE = "comparison.json"


class RunSources(BaseModel):
    """What makes two runs comparable: their source roots and the characters (name, trigger) scanned there."""

    model_config = ConfigDict(frozen=True)

    name: str
    roots: tuple[Path, ...]
    characters: tuple[tuple[str, str], ...]


class RunRows(BaseModel):
    """One run of a comparison: its name, mode, rows and each row's cell reuse keys (see generate.plan_row)."""

    model_config = ConfigDict(frozen=True)

    name: str
    mode: str
    rows: tuple[Row, ...]
    cells: dict[str, tuple[str, ...]]

    @property
    def title(self) -> str:
        return f"{self.name} ({self.mode})"


class ComparedRow(BaseModel):
    """One row of the comparison grid: the run whose images it shows, that run's row, and every run it stands for."""

    model_config = ConfigDict(frozen=True)

    id: str
    label: str
    run: int
    row: Row
    shared_by: tuple[int, ...]


def run_names(paths: Sequence[Path]) -> list[str]:
    """Each run's folder name; where two runs share one, the parent folder is added (`a/run`, `b/run`)."""
    names = [path.name for path in paths]
    return [f"{path.parent.name}/{path.name}" if names.count(path.name) > 1 else path.name for path in paths]


def refuse_repeated_runs(paths: Sequence[Path]) -> None:
    """The same run directory twice would compare a run with itself."""
    seen: set[Path] = set()
    for path in paths:
        if path in seen:
            raise UsageError(f"evaluate: run {path} is given twice", hint="name each run directory once")
        seen.add(path)


def source_difference(first: RunSources, other: RunSources) -> str | None:
    """How `other`'s sources differ from `first`'s (roots, characters, triggers), or None when they are the same."""
    if sorted(first.roots) != sorted(other.roots):
        return (f"{other.name} was prepared from {', '.join(map(str, other.roots))}, {first.name} from "
                f"{', '.join(map(str, first.roots))}")
    mine, theirs = dict(first.characters), dict(other.characters)
    if mine.keys() != theirs.keys():
        parts = []
        if only := sorted(mine.keys() - theirs.keys()):
            parts.append(f"only {first.name} has {', '.join(only)}")
        if only := sorted(theirs.keys() - mine.keys()):
            parts.append(f"only {other.name} has {', '.join(only)}")
        return "the runs' characters differ: " + "; ".join(parts)
    triggers = [f"{name}: {mine[name]!r} in {first.name}, {theirs[name]!r} in {other.name}"
                for name in sorted(mine) if mine[name] != theirs[name]]
    if triggers:
        return "the runs' triggers differ: " + "; ".join(triggers)
    return None


def refuse_other_sources(runs: Sequence[RunSources]) -> None:
    """Runs of other sources would be asked other prompts: one line naming the first difference."""
    for other in runs[1:]:
        if difference := source_difference(runs[0], other):
            raise UsageError(f"evaluate: cannot compare runs of different sources: {difference}",
                             hint="compare runs prepared from the same sources (the same roots, characters and "
                                  "triggers), or evaluate each run alone")


def plan_comparison(runs: Sequence[RunRows]) -> list[ComparedRow]:
    """Every run's rows in run order, a row with the same cells as an earlier one shown once (labelled for all)."""
    first_with: dict[tuple[str, ...], int] = {}
    planned: list[tuple[int, Row, list[int]]] = []
    for index, run in enumerate(runs):
        for row in run.rows:
            key = run.cells.get(row.id, ())
            if key and key in first_with:
                planned[first_with[key]][2].append(index)
                continue
            if key:
                first_with[key] = len(planned)
            planned.append((index, row, [index]))
    compared = []
    for index, row, shared_by in planned:
        if len(shared_by) == len(runs) and row.weights is None:
            label, row_id = row.label, row.id  # the one base model of every run
        else:
            who = "all runs" if len(shared_by) == len(runs) else ", ".join(runs[i].title for i in shared_by)
            label, row_id = f"{who} · {row.label}", f"{runs[index].name}/{row.id}"
        compared.append(ComparedRow(id=row_id, label=label, run=index, row=row, shared_by=tuple(shared_by)))
    return compared


def compared_records(compared: Sequence[ComparedRow], runs: Sequence[RunRows],
                     records: Sequence[Sequence[metric.Record]]) -> list[metric.Record]:
    """One metrics list for the comparison: each shown row's records relabelled; each run's other records
    (detector calibration, best epoch, identity status) tagged with the run."""
    shown = {(row.run, row.row.id): row for row in compared}
    out: list[metric.Record] = []
    for index, run_records in enumerate(records):
        for record in run_records:
            if isinstance(record, metric.RowRecord):
                row = shown.get((index, record.row))
                if row is not None:
                    out.append(record.for_run(runs[index].title, row=row.id, label=row.label))
            else:
                out.append(record.for_run(runs[index].title))
    return out


def relative_link(path: Path, start: Path) -> str:
    """A path as seen from `start` (comparison.json names the other runs relative to the first)."""
    return Path(os.path.relpath(path, start)).as_posix()
