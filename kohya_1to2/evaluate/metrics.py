"""Metrics of an evaluation (pure): one typed record kind per metric, its computation and its report cells together.

metrics.jsonl holds one JSON object per line, its kind in the `metric` key:
- `calibration`: the seam detector's thresholds and accuracy on the run's composites vs stage-1 sources;
- `composite_rate`: per weights row and prompt kind, the share of images judged side-by-side panels;
- `best_epoch`: per kind, the final stage's epoch chosen by BEST_EPOCH_RULE;
- `identity`: the identity status (why no number, or how they were made);
- `identity_scores`: per row, only when dghs-imgutils' models ran (see evaluate/identity.py).
A comparison of several runs writes the same records with `run` set to each run's title.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from kohya_1to2.evaluate.prompts import EvalPrompt, image_name
from kohya_1to2.evaluate.rows import Row
from kohya_1to2.evaluate.seams import Calibration, SeamScores
from kohya_1to2.fsutil import jsonl_records

BEST_EPOCH_RULE = ("lowest composite rate on pair prompts; ties go to the later epoch (longer trained on the "
                   "method's objective)")


class Record(BaseModel):
    """What every record has: its kind, and the run it belongs to in a comparison (None in a run's own file)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    run: str | None = None

    def for_run(self, title: str, **update: Any) -> Record:
        """This record in a comparison's table: tagged with its run (and relabelled, for a per-row record)."""
        return self.model_copy(update={"run": title, **update})


class CalibrationRecord(Record):
    metric: Literal["calibration"] = "calibration"
    seam_threshold: float
    split_threshold: float
    accuracy: float
    positives: int
    negatives: int
    positives_are: str = "the run's composites"
    negatives_are: str = "stage-1 source images"

    @classmethod
    def of(cls, calibration: Calibration) -> CalibrationRecord:
        return cls(seam_threshold=round(calibration.seam_threshold, 4),
                   split_threshold=round(calibration.split_threshold, 4), accuracy=round(calibration.accuracy, 4),
                   positives=calibration.positives, negatives=calibration.negatives)

    def sentence(self) -> str:
        return (f"Composite detector: calibrated on {self.positives} of the run's composites vs {self.negatives} "
                f"stage-1 sources, accuracy {self.accuracy:.1%}.")


class RowRecord(Record):
    """A record of one weights row."""

    row: str
    label: str
    stage: int | None = None
    epoch: int | None = None


class CompositeRate(RowRecord):
    metric: Literal["composite_rate"] = "composite_rate"
    kind: str
    images: int
    composites: int
    rate: float | None
    detector_accuracy: float

    HEADERS: ClassVar[tuple[str, ...]] = (
        "row", "prompt kind", "images", "judged composites", "composite rate", "detector accuracy")

    def cells(self) -> tuple[object, ...]:
        """Its line in the report's composite-rate table (HEADERS)."""
        rate = "-" if self.rate is None else f"{self.rate:.0%}"
        return (self.label, self.kind, self.images, self.composites, rate, f"{self.detector_accuracy:.1%}")


class BestEpoch(Record):
    metric: Literal["best_epoch"] = "best_epoch"
    kind: str
    rule: str = BEST_EPOCH_RULE
    stage: int
    row: str | None
    epoch: int | None
    rate: float | None

    @classmethod
    def of(cls, rates: Sequence[CompositeRate], kind: str = "pair", stage: int = 2) -> BestEpoch:
        """The best epoch of the run's final `stage` by BEST_EPOCH_RULE (None when that stage has no scored row)."""
        candidates = [r for r in rates if r.stage == stage and r.kind == kind and r.rate is not None]
        best = min(candidates, key=lambda r: (r.rate or 0.0, -(r.epoch or 0)), default=None)
        return cls(kind=kind, stage=stage, row=best.row if best else None, epoch=best.epoch if best else None,
                   rate=best.rate if best else None)


class IdentityStatus(Record):
    metric: Literal["identity"] = "identity"
    available: bool = False
    status: str


class IdentityScores(RowRecord):
    metric: Literal["identity_scores"] = "identity_scores"
    images: int
    figures: int
    similarity: dict[str, float | None]
    pair_images: int
    both_present_rate: float | None
    clone_rate: float | None
    ccip_threshold: float

    @classmethod
    def of(cls, row: Row, scores: Mapping[str, Any], threshold: float) -> IdentityScores:
        """One row's identity numbers (evaluate/identity.py's RowIdentity): similarity per character,
        both-present and clone rates over its pair images, with the CCIP threshold that decided recognition."""
        return cls(row=row.id, label=row.label, stage=row.stage, epoch=row.epoch, images=scores["images"],
                   figures=scores["figures"], similarity=dict(scores["similarity"]),
                   pair_images=scores["pair_images"], both_present_rate=scores["both_present_rate"],
                   clone_rate=scores["clone_rate"], ccip_threshold=round(threshold, 4))


MetricRecord = Annotated[CalibrationRecord | CompositeRate | BestEpoch | IdentityStatus | IdentityScores,
                         Field(discriminator="metric")]
_READER: TypeAdapter[MetricRecord] = TypeAdapter(MetricRecord)


def composite_rates(rows: Sequence[Row], prompts: Sequence[EvalPrompt], seeds: Sequence[int],
                    scores: Mapping[tuple[str, str], SeamScores], calibration: Calibration) -> list[CompositeRate]:
    """One record per row and prompt kind: images judged composites / images scored."""
    records = []
    kinds = [k for k in ("single", "pair", "user") if any(p.kind == k for p in prompts)]
    for row in rows:
        for kind in kinds:
            found = [scores[(row.id, image_name(p, s))] for p in prompts if p.kind == kind for s in seeds
                     if (row.id, image_name(p, s)) in scores]
            composites = sum(calibration.is_composite(s) for s in found)
            records.append(CompositeRate(
                row=row.id, label=row.label, stage=row.stage, epoch=row.epoch, kind=kind, images=len(found),
                composites=composites, rate=round(composites / len(found), 4) if found else None,
                detector_accuracy=round(calibration.accuracy, 4)))
    return records


def of_kind(records: Sequence[Record], kind: type[Any]) -> list[Any]:
    """The records of one kind, in file order."""
    return [r for r in records if isinstance(r, kind)]


def identity_table(records: Sequence[Record]) -> tuple[list[str], list[list[str]]]:
    """Headers and cells of the identity table, one line per `identity_scores` record ('-': nothing measured)."""
    scores: list[IdentityScores] = of_kind(records, IdentityScores)
    names = list(dict.fromkeys(c for r in scores for c in r.similarity))

    def cell(value: float | None, percent: bool = False) -> str:
        return "-" if value is None else f"{value:.0%}" if percent else f"{value:.3f}"

    headers = ["row", "pair images", "both present", "clones", *(f"{name} similarity" for name in names)]
    lines = [[r.label, str(r.pair_images), cell(r.both_present_rate, True), cell(r.clone_rate, True),
              *(cell(r.similarity.get(name)) for name in names)] for r in scores]
    return headers, lines


def metrics_text(records: Sequence[Record]) -> str:
    """metrics.jsonl: one sorted-key JSON object per record (`run` only in a comparison's file)."""
    return "".join(json.dumps(r.model_dump(exclude={"run"} if r.run is None else set()), ensure_ascii=False,
                              sort_keys=True) + "\n" for r in records)


def read_metrics(text: str) -> list[Record]:
    """The records of a metrics.jsonl; a line of an unknown kind or shape (another version's) is skipped."""
    records: list[Record] = []
    for raw in jsonl_records(text):
        try:
            records.append(_READER.validate_python(raw))
        except ValidationError:
            continue
    return records
