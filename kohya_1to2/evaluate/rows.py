"""The rows of an evaluation: the base model alone, each earlier stage's final network, the final stage's epochs.

Which stages a run has comes from its job (`Job.stages`): a sequential or replay run shows stage 1's final
network, then stage 2's chosen epochs; a joint run (one stage) shows that stage's epochs right after the base.
`select_epochs` and `build_rows` are pure; `saved_epochs` reads an output folder and each file's safetensors
header (no torch).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from kohya_1to2 import kohya
from kohya_1to2.errors import UsageError


class Row(BaseModel):
    """One row of every grid: which weights (None = base model alone) and how to label them."""

    model_config = ConfigDict(frozen=True)

    id: str
    label: str
    weights: Path | None = None
    stage: int = 0
    epoch: int | None = None


def stage_title(stages: Sequence[int], stage: int, mode: str) -> str:
    """How rows, report headings and messages name a stage: `stage N`, or the mode's name for a one-stage run."""
    return f"stage {stage}" if len(stages) > 1 else mode


def parse_epochs(spec: str) -> str | tuple[int, ...]:
    """`last`, `all` or `N,M,...` (epoch numbers from 1)."""
    text = spec.strip().lower()
    if text in ("last", "all"):
        return text
    try:
        numbers = tuple(sorted({int(part) for part in text.split(",") if part.strip()}))
    except ValueError:
        numbers = ()
    if not numbers or min(numbers) < 1:
        raise UsageError(f"--epochs {spec!r} is not last, all or a list of epoch numbers", hint="e.g. --epochs 2,4")
    return numbers


def select_epochs(available: Sequence[tuple[int, Path]], spec: str | tuple[int, ...],
                  stage_name: str = "stage 2") -> list[tuple[int, Path]]:
    """The (epoch, file) pairs `--epochs` asks for, in epoch order; a missing number is an error naming the rest."""
    ordered = sorted(available)
    if not ordered:
        return []
    if spec == "last":
        return ordered[-1:]
    if isinstance(spec, str):  # "all"
        return ordered
    by_epoch = dict(ordered)
    missing = [n for n in spec if n not in by_epoch]
    if missing:
        raise UsageError(f"--epochs: {stage_name} has no saved epoch {', '.join(map(str, missing))}",
                         hint=f"saved epochs: {', '.join(str(e) for e, _ in ordered)}")
    return [(n, by_epoch[n]) for n in spec]


def saved_epochs(output_dir: Path, output_name: str, ext: str = "safetensors") -> list[tuple[int, Path]]:
    """A stage's saved networks by epoch: `<name>-NNNNNN.<ext>` files plus the final `<name>.<ext>`."""
    found: dict[int, Path] = {}
    pattern = re.compile(re.escape(output_name) + r"-(\d{6})\." + re.escape(ext) + "$")
    if output_dir.is_dir():
        for path in output_dir.iterdir():
            if match := pattern.match(path.name):
                found[int(match.group(1))] = path
    final = output_dir / f"{output_name}.{ext}"
    if final.is_file():
        epoch = kohya.safetensors_metadata(final).get(kohya.EPOCH_METADATA_KEY, "")
        number = int(epoch) if epoch.isdigit() else max(found, default=0) + 1
        found[number] = final
    return sorted(found.items())


def build_rows(stages: Sequence[int], earlier_finals: Mapping[int, Path | None],
               final_epochs: Sequence[tuple[int, Path]], last_epoch: int | None, mode: str) -> list[Row]:
    """base, each earlier stage's final network (when trained), then each chosen epoch of the final stage."""
    *earlier, final_stage = stages
    rows = [Row(id="base", label="base model")]
    for stage in earlier:
        weights = earlier_finals.get(stage)
        if weights is not None:
            rows.append(Row(id=f"stage{stage}", label=f"{stage_title(stages, stage, mode)} final", weights=weights,
                            stage=stage))
    title = stage_title(stages, final_stage, mode)
    for epoch, path in final_epochs:
        final = " (final)" if epoch == last_epoch else ""
        rows.append(Row(id=f"stage{final_stage}-e{epoch:06d}", label=f"{title} epoch {epoch}{final}", weights=path,
                        stage=final_stage, epoch=epoch))
    return rows
