"""Stage 2's bucket choice: a resolution and bucket range/step where the composites land in buckets of their own
aspect (over kohya.buckets, the port of sd-scripts' bucketing)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict

from kohya_1to2 import kohya
from kohya_1to2.kohya.buckets import SD_BUCKET_DEFAULTS as SD_BUCKET_DEFAULTS
from kohya_1to2.kohya.buckets import BucketCount as BucketCount
from kohya_1to2.kohya.buckets import BucketSettings as BucketSettings
from kohya_1to2.kohya.buckets import assign_buckets as assign_buckets
from kohya_1to2.kohya.buckets import buckets_for as buckets_for
from kohya_1to2.kohya.buckets import make_bucket_resolutions as make_bucket_resolutions
from kohya_1to2.kohya.buckets import select_bucket as select_bucket
from kohya_1to2.models import Stage2Scale

# ------------------------------------------------------------------------------------------- stage-2 choice

COMMON_COMPOSITE_ASPECTS: tuple[float, ...] = (2.0, 1.5)
"""Composite aspects when the run's are unknown: two square sources (2:1), two 3:4 sources (1.5:1)."""

MAX_CROP = 0.02
"""The most of a composite that bucketing may cut away (heads and feet sit at the frame edge)."""

STEPS_TRIED = (64, 32)
"""Bucket steps a stage-2 choice tries, coarsest first (finer steps only multiply the buckets)."""

STEPS_BY_FAMILY: dict[str, tuple[int, ...]] = {
    family: tuple(step for step in STEPS_TRIED if step % unit == 0) for family, unit in kohya.BUCKET_STEP_UNIT.items()
}
"""The steps each family's script accepts (a multiple of kohya.BUCKET_STEP_UNIT): SD1/SD2 (64,), SDXL (64, 32)."""

_PROBE_HEIGHT = 1200
"""Composites are probed at this height: larger than any bucket, so selection only depends on the aspect."""


class Stage2Buckets(BaseModel):
    """The stage-2 bucket keys chosen for a scale, and what they do to each composite aspect."""

    model_config = ConfigDict(frozen=True)

    settings: BucketSettings
    scale: Stage2Scale
    target_pixels: int
    """Pixels per composite aimed at: stage 1's per image (area), or that times the characters in a composite
    (character)."""
    landing: tuple[tuple[float, tuple[int, int], float], ...]
    """(aspect, bucket, crop) for each aspect the choice covers."""

    @property
    def max_crop(self) -> float:
        return max((crop for _, _, crop in self.landing), default=0.0)


def _round_up(value: float, step: int) -> int:
    return int(math.ceil(value / step) * step)


def _candidate(resolution: tuple[int, int], steps: int, min_reso: int, max_reso: int,
               aspects: Sequence[float]) -> tuple[BucketSettings, tuple[tuple[float, tuple[int, int], float], ...]]:
    area = resolution[0] * resolution[1]
    widest = math.sqrt(area * max(aspects)) if aspects else 0
    tallest = math.sqrt(area / min(aspects)) if aspects else 0
    low = min(min_reso, _round_down(min(math.sqrt(area / max(aspects)), math.sqrt(area * min(aspects))), steps)
              if aspects else min_reso, min(resolution))
    settings = BucketSettings(
        resolution=resolution, min_bucket_reso=low - low % steps or steps,
        max_bucket_reso=_round_up(max(max_reso, widest, tallest, *resolution), steps), bucket_reso_steps=steps,
    )
    resos = buckets_for(settings)
    landing = []
    for aspect in aspects:
        bucket, crop = select_bucket((round(_PROBE_HEIGHT * aspect), _PROBE_HEIGHT), resos)
        landing.append((aspect, bucket, crop))
    return settings, tuple(landing)


def bucket_fits(sizes: Sequence[tuple[int, int]], settings: BucketSettings) -> list[tuple[int, int] | None]:
    """Per composite size: the bucket sd-scripts puts it in when that would crop more than MAX_CROP (the
    composite is then padded to that bucket's aspect, compose.pad_to_aspect), else None (built as it is)."""
    resos = buckets_for(settings)
    fits: list[tuple[int, int] | None] = []
    for size in sizes:
        bucket, crop = select_bucket(size, resos) if size[0] and size[1] else (size, 0.0)
        fits.append(bucket if crop > MAX_CROP else None)
    return fits


def _round_down(value: float, step: int) -> int:
    return max(step, int(value // step) * step)


def choose_stage2_buckets(
    resolution: int, scale: Stage2Scale, aspects: Sequence[float] = COMMON_COMPOSITE_ASPECTS, *,
    steps: Sequence[int] = (SD_BUCKET_DEFAULTS.bucket_reso_steps,),
    min_bucket_reso: int = SD_BUCKET_DEFAULTS.min_bucket_reso,
    max_bucket_reso: int = SD_BUCKET_DEFAULTS.max_bucket_reso,
    members: int = 2,
) -> Stage2Buckets:
    """Stage 2's resolution and bucket range/step so composites land in buckets of their own aspect
    (crop <= MAX_CROP) at about the target pixels.

    `aspects` are the run's composites (one per composite; repeats weigh), or the common ones. `area` aims each
    composite at stage 1's pixels per image (the method's "identical settings"); `character` at `members` times
    that (the characters side by side in one composite: 2 for pairs, k for --group-size k), so each character
    gets stage 1's pixels. Candidates: the resolution side within +-12% of the target, written as a square
    (area) or a k:1 row (character, e.g. [1024, 512] for pairs), for each allowed step. The winner crops least
    beyond MAX_CROP (weighted by composites), then has bucket areas closest to the target (log scale), then the
    coarser step and the smaller change. With steps of 64 only (SD1), 2:1 and 1.5:1 together cannot both be
    exact at exactly the target: the crop wins, the pixels move (the plan shows by how much).
    """
    counts: dict[float, int] = {}
    for aspect in aspects:
        if aspect > 0:
            counts[round(aspect, 2)] = counts.get(round(aspect, 2), 0) + 1
    if not counts:
        counts = {a: 1 for a in COMMON_COMPOSITE_ASPECTS}
    wanted = sorted(counts)
    total = sum(counts.values())
    target = resolution * resolution * (members if scale == "character" else 1)
    best: tuple[tuple[float, ...], BucketSettings, tuple[tuple[float, tuple[int, int], float], ...]] | None = None
    for order, step in enumerate(steps):
        for delta in range(-resolution // 8, resolution // 8 + 1, 8):
            side = resolution + delta
            reso = (members * side, side) if scale == "character" else (side, side)
            settings, landing = _candidate(reso, step, min_bucket_reso, max_bucket_reso, wanted)
            excess = sum(max(0.0, crop - MAX_CROP) * counts[a] for a, _, crop in landing) / total
            spread = sum(abs(math.log(b[0] * b[1] / target)) * counts[a] for a, b, _ in landing) / total
            key = (round(excess, 4), round(spread, 3), order, abs(delta))
            if best is None or key < best[0]:
                best = (key, settings, landing)
    assert best is not None
    return Stage2Buckets(settings=best[1], scale=scale, target_pixels=target, landing=best[2])
