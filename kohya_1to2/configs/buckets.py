"""sd-scripts' aspect-ratio bucketing, re-done in pure Python for the plan preview.

Mirrors `model_util.make_bucket_resolutions` and `BucketManager.select_bucket` (upscaling mode, the default)
of the pinned version, so the preview shows where each composite lands and how much of it is cropped.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict

from kohya_1to2.models import Stage2Scale


class BucketSettings(BaseModel):
    """The dataset keys that decide the buckets (sd-scripts defaults)."""

    model_config = ConfigDict(frozen=True)

    resolution: tuple[int, int]
    min_bucket_reso: int = 256
    max_bucket_reso: int = 1024
    bucket_reso_steps: int = 64


SD_BUCKET_DEFAULTS = BucketSettings(resolution=(512, 512))
"""sd-scripts' bucket defaults (config_util), the one place other modules read them from."""


class BucketCount(BaseModel):
    """How many images land in one bucket and the mean fraction of their pixels cropped away."""

    model_config = ConfigDict(frozen=True)

    width: int
    height: int
    images: int
    mean_crop: float


def make_bucket_resolutions(
    max_reso: tuple[int, int], min_size: int, max_size: int, divisible: int
) -> list[tuple[int, int]]:
    """Every bucket (w, h) sd-scripts predefines for this area (model_util.make_bucket_resolutions)."""
    max_area = max_reso[0] * max_reso[1]
    resos: set[tuple[int, int]] = set()
    side = int(math.sqrt(max_area) // divisible) * divisible
    resos.add((side, side))
    width = min_size
    while width <= max_size:
        height = min(max_size, int((max_area // width) // divisible) * divisible)
        if height >= min_size:
            resos.add((width, height))
            resos.add((height, width))
        width += divisible
    return sorted(resos)


def buckets_for(settings: BucketSettings) -> list[tuple[int, int]]:
    steps = settings.bucket_reso_steps
    # sd-scripts rounds min down and max up to multiples of the step (adjust_min_max_bucket_reso_by_steps)
    low = settings.min_bucket_reso - settings.min_bucket_reso % steps
    high = settings.max_bucket_reso + (-settings.max_bucket_reso) % steps
    return make_bucket_resolutions(settings.resolution, low, high, steps)


def select_bucket(size: tuple[int, int], resos: Sequence[tuple[int, int]]) -> tuple[tuple[int, int], float]:
    """(bucket, fraction of the resized image cropped away) for one image (BucketManager.select_bucket)."""
    width, height = size
    aspect = width / height
    if (width, height) in resos:
        reso = (width, height)
    else:
        # argmin of |bucket aspect - image aspect|; the first (sorted) bucket wins a tie, like numpy's argmin
        reso = min(resos, key=lambda r: abs(r[0] / r[1] - aspect))
    scale = reso[1] / height if aspect > reso[0] / reso[1] else reso[0] / width
    resized = (int(width * scale + 0.5), int(height * scale + 0.5))
    crop = 1.0 - (reso[0] * reso[1]) / (resized[0] * resized[1])
    return reso, max(0.0, crop)


def assign_buckets(sizes: Sequence[tuple[int, int]], settings: BucketSettings) -> list[BucketCount]:
    """Bucket counts for a set of image sizes, sorted by bucket."""
    resos = buckets_for(settings)
    grouped: dict[tuple[int, int], list[float]] = {}
    for size in sizes:
        reso, crop = select_bucket(size, resos)
        grouped.setdefault(reso, []).append(crop)
    return [
        BucketCount(width=w, height=h, images=len(crops), mean_crop=sum(crops) / len(crops))
        for (w, h), crops in sorted(grouped.items())
    ]


# ------------------------------------------------------------------------------------------- stage-2 choice

COMMON_COMPOSITE_ASPECTS: tuple[float, ...] = (2.0, 1.5)
"""Composite aspects when the run's are unknown: two square sources (2:1), two 3:4 sources (1.5:1)."""

MAX_CROP = 0.02
"""The most of a composite that bucketing may cut away (heads and feet sit at the frame edge)."""

STEPS_BY_FAMILY: dict[str, tuple[int, ...]] = {"sd1": (64,), "sd2": (64,), "sdxl": (64, 32)}
"""Bucket steps tried, coarsest first: train_network.py asserts a multiple of 64 (verify_bucket_reso_steps(64)),
sdxl_train_network.py a multiple of 32."""

_PROBE_HEIGHT = 1200
"""Composites are probed at this height: larger than any bucket, so selection only depends on the aspect."""


class Stage2Buckets(BaseModel):
    """The stage-2 bucket keys chosen for a scale, and what they do to each composite aspect."""

    model_config = ConfigDict(frozen=True)

    settings: BucketSettings
    scale: Stage2Scale
    target_pixels: int
    """Pixels per composite aimed at: stage 1's per image (area), or twice that (character)."""
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


def _round_down(value: float, step: int) -> int:
    return max(step, int(value // step) * step)


def choose_stage2_buckets(
    resolution: int, scale: Stage2Scale, aspects: Sequence[float] = COMMON_COMPOSITE_ASPECTS, *,
    steps: Sequence[int] = (SD_BUCKET_DEFAULTS.bucket_reso_steps,),
    min_bucket_reso: int = SD_BUCKET_DEFAULTS.min_bucket_reso,
    max_bucket_reso: int = SD_BUCKET_DEFAULTS.max_bucket_reso,
) -> Stage2Buckets:
    """Stage 2's resolution and bucket range/step so composites land in buckets of their own aspect
    (crop <= MAX_CROP) at about the target pixels.

    `aspects` are the run's composites (one per composite; repeats weigh), or the common ones. `area` aims each
    composite at stage 1's pixels per image (the method's "identical settings"); `character` at twice that, so
    each half gets stage 1's pixels. Candidates: the resolution side within +-12% of the target, written as a
    square (area) or a 2:1 pair (character, e.g. [1024, 512]), for each allowed step. The winner crops least
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
    target = resolution * resolution * (2 if scale == "character" else 1)
    best: tuple[tuple[float, ...], BucketSettings, tuple[tuple[float, tuple[int, int], float], ...]] | None = None
    for order, step in enumerate(steps):
        for delta in range(-resolution // 8, resolution // 8 + 1, 8):
            side = resolution + delta
            reso = (2 * side, side) if scale == "character" else (side, side)
            settings, landing = _candidate(reso, step, min_bucket_reso, max_bucket_reso, wanted)
            excess = sum(max(0.0, crop - MAX_CROP) * counts[a] for a, _, crop in landing) / total
            spread = sum(abs(math.log(b[0] * b[1] / target)) * counts[a] for a, b, _ in landing) / total
            key = (round(excess, 4), round(spread, 3), order, abs(delta))
            if best is None or key < best[0]:
                best = (key, settings, landing)
    assert best is not None
    return Stage2Buckets(settings=best[1], scale=scale, target_pixels=target, landing=best[2])
