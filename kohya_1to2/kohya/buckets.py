"""sd-scripts' aspect-ratio bucketing, re-done in pure Python for the plan preview.

Mirrors `model_util.make_bucket_resolutions` and `BucketManager.select_bucket` (upscaling mode, the default)
of the pinned version, so the preview shows where each composite lands and how much of it is cropped.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict


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
