"""Metrics of an evaluation (pure): composite rate per row and prompt kind, the best stage-2 epoch.

metrics.jsonl holds one JSON object per line with a `metric` key: `calibration` (the seam detector's thresholds
and accuracy on the run's composites vs stage-1 sources), `composite_rate` (per row and kind),
`best_epoch` (per kind, with the rule) and `identity` (status; numbers only when they were measured).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from kohya_1to2.evaluate.prompts import EvalPrompt, image_name
from kohya_1to2.evaluate.rows import Row
from kohya_1to2.evaluate.seams import Calibration, SeamScores

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


def identity_record(status: str) -> dict[str, Any]:
    return {"metric": "identity", "available": False, "status": status}


def metrics_text(records: Sequence[Mapping[str, Any]]) -> str:
    return "".join(json.dumps(dict(r), ensure_ascii=False, sort_keys=True) + "\n" for r in records)


def read_metrics(text: str) -> list[dict[str, Any]]:
    out = []
    for line in text.splitlines():
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            out.append(value)
    return out
