"""Metrics of an evaluation (pure): composite rate per row and prompt kind, the best stage-2 epoch.

metrics.jsonl holds one JSON object per line with a `metric` key: `calibration` (the seam detector's thresholds
and accuracy on the run's composites vs stage-1 sources), `composite_rate` (per row and kind),
`best_epoch` (per kind, with the rule), `identity` (status: why no number, or how they were made) and
`identity_scores` (per row, only when dghs-imgutils' models ran: see evaluate/identity.py).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from kohya_1to2.evaluate.prompts import EvalPrompt, image_name
from kohya_1to2.evaluate.rows import Row
from kohya_1to2.evaluate.seams import Calibration, SeamScores
from kohya_1to2.fsutil import jsonl_records

BEST_EPOCH_RULE = ("lowest composite rate on pair prompts; ties go to the later epoch (longer trained on the "
                   "method's objective)")


def calibration_record(calibration: Calibration) -> dict[str, Any]:
    return {"metric": "calibration", "seam_threshold": round(calibration.seam_threshold, 4),
            "split_threshold": round(calibration.split_threshold, 4), "accuracy": round(calibration.accuracy, 4),
            "positives": calibration.positives, "negatives": calibration.negatives,
            "positives_are": "the run's composites", "negatives_are": "stage-1 source images"}


def composite_rates(rows: Sequence[Row], prompts: Sequence[EvalPrompt], seeds: Sequence[int],
                    scores: Mapping[tuple[str, str], SeamScores], calibration: Calibration) -> list[dict[str, Any]]:
    """One record per row and prompt kind: images judged composites / images scored."""
    records = []
    kinds = [k for k in ("single", "pair", "user") if any(p.kind == k for p in prompts)]
    for row in rows:
        for kind in kinds:
            found = [scores[(row.id, image_name(p, s))] for p in prompts if p.kind == kind for s in seeds
                     if (row.id, image_name(p, s)) in scores]
            composites = sum(calibration.is_composite(s) for s in found)
            records.append({
                "metric": "composite_rate", "row": row.id, "label": row.label, "stage": row.stage,
                "epoch": row.epoch, "kind": kind, "images": len(found), "composites": composites,
                "rate": round(composites / len(found), 4) if found else None,
                "detector_accuracy": round(calibration.accuracy, 4),
            })
    return records


def best_epoch(rates: Sequence[Mapping[str, Any]], kind: str = "pair", stage: int = 2) -> dict[str, Any]:
    """The best epoch of the run's final `stage` by BEST_EPOCH_RULE (None when that stage has no scored row)."""
    candidates = [r for r in rates if r["stage"] == stage and r["kind"] == kind and r["rate"] is not None]
    best = min(candidates, key=lambda r: (r["rate"], -(r["epoch"] or 0)), default=None)
    return {"metric": "best_epoch", "kind": kind, "rule": BEST_EPOCH_RULE, "stage": stage,
            "row": best["row"] if best else None, "epoch": best["epoch"] if best else None,
            "rate": best["rate"] if best else None}


def identity_record(status: str, *, available: bool = False) -> dict[str, Any]:
    """The identity status: why there are no numbers, or how the `identity_scores` records were made."""
    return {"metric": "identity", "available": available, "status": status}


def identity_scores_record(row: Row, scores: Mapping[str, Any], threshold: float) -> dict[str, Any]:
    """One row's identity numbers (evaluate/identity.py's RowIdentity): similarity per character, both-present
    and clone rates over its pair images, with the CCIP threshold that decided recognition."""
    return {"metric": "identity_scores", "row": row.id, "label": row.label, "stage": row.stage, "epoch": row.epoch,
            "images": scores["images"], "figures": scores["figures"], "similarity": dict(scores["similarity"]),
            "pair_images": scores["pair_images"], "both_present_rate": scores["both_present_rate"],
            "clone_rate": scores["clone_rate"], "ccip_threshold": round(threshold, 4)}


def identity_table(records: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Headers and cells of the identity table, one line per `identity_scores` record ('-': nothing measured)."""
    scores = [r for r in records if r["metric"] == "identity_scores"]
    names = list(dict.fromkeys(c for r in scores for c in r["similarity"]))

    def cell(value: float | None, percent: bool = False) -> str:
        return "-" if value is None else f"{value:.0%}" if percent else f"{value:.3f}"

    headers = ["row", "pair images", "both present", "clones", *(f"{name} similarity" for name in names)]
    lines = [[str(r["label"]), str(r["pair_images"]), cell(r["both_present_rate"], True), cell(r["clone_rate"], True),
              *(cell(r["similarity"].get(name)) for name in names)] for r in scores]
    return headers, lines


def metrics_text(records: Sequence[Mapping[str, Any]]) -> str:
    return "".join(json.dumps(dict(r), ensure_ascii=False, sort_keys=True) + "\n" for r in records)


def read_metrics(text: str) -> list[dict[str, Any]]:
    return jsonl_records(text)
