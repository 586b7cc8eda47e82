"""The plan preview (pure): per stage, subsets x repeats, steps per epoch and in total, bucket assignment,
and the stage-2/stage-1 cost ratio; plus the check that refuses a stage that would train on nothing.

sd-scripts exits 0 after "No data found" on an empty dataset and only warns on a 0-image subset, so both are
errors here, before any training time is spent.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict
from rich.console import Group
from rich.table import Table
from rich.text import Text

from kohya_1to2.configs.buckets import BucketCount, BucketSettings, assign_buckets
from kohya_1to2.errors import DatasetError

SD_SCRIPTS_DEFAULT_MAX_TRAIN_STEPS = 1600


class SubsetPlan(BaseModel):
    """One subset: its folder, image count, repeats and (when known) image sizes."""

    model_config = ConfigDict(frozen=True)

    name: str
    image_dir: Path
    images: int
    repeats: int
    sizes: tuple[tuple[int, int], ...] = ()

    @property
    def samples(self) -> int:
        return self.images * self.repeats


class StagePlan(BaseModel):
    model_config = ConfigDict(frozen=True)

    stage: int
    batch_size: int
    subsets: tuple[SubsetPlan, ...]
    buckets: tuple[BucketCount, ...]
    steps_per_epoch: int
    epochs: int
    total_steps: int
    mean_pixels: float
    exact: bool

    @property
    def samples(self) -> int:
        return sum(s.samples for s in self.subsets)


def plan_stage(
    stage: int, subsets: Sequence[SubsetPlan], bucket_settings: BucketSettings, batch_size: int,
    training: Mapping[str, Any],
) -> StagePlan:
    """Steps and buckets of one stage, as sd-scripts counts them (each bucket is batched on its own)."""
    exact = all(len(s.sizes) == s.images for s in subsets)
    if exact:
        sizes = [size for s in subsets for size in s.sizes for _ in range(s.repeats)]
        buckets = tuple(assign_buckets(sizes, bucket_settings))
        steps = sum(math.ceil(b.images / batch_size) for b in buckets)
        area = sum(b.width * b.height * b.images for b in buckets) / max(1, len(sizes))
    else:
        buckets = ()
        steps = math.ceil(sum(s.samples for s in subsets) / batch_size)
        area = float(bucket_settings.resolution[0] * bucket_settings.resolution[1])
    epochs_value = training.get("max_train_epochs")
    if isinstance(epochs_value, int) and epochs_value > 0:
        epochs, total = epochs_value, epochs_value * steps
    else:
        max_steps = training.get("max_train_steps")
        total = max_steps if isinstance(max_steps, int) and max_steps > 0 else SD_SCRIPTS_DEFAULT_MAX_TRAIN_STEPS
        epochs = math.ceil(total / steps) if steps else 0
    return StagePlan(stage=stage, batch_size=batch_size, subsets=tuple(subsets), buckets=buckets,
                     steps_per_epoch=steps, epochs=epochs, total_steps=total if steps else 0,
                     mean_pixels=area, exact=exact)


def step_cost_ratio(stage1: StagePlan, stage2: StagePlan) -> float:
    """Estimated compute of one stage-2 step relative to one stage-1 step (batch x pixels per image)."""
    one = stage1.batch_size * stage1.mean_pixels
    return (stage2.batch_size * stage2.mean_pixels) / one if one else 0.0


def check_stage_plans(plans: Sequence[StagePlan]) -> None:
    """A subset with no images, or a stage with nothing to train on, is an error (sd-scripts would exit 0)."""
    for plan in plans:
        for subset in plan.subsets:
            if subset.images == 0:
                raise DatasetError(
                    f"stage {plan.stage}: subset {subset.name!r} has no images ({subset.image_dir})",
                    hint="add images to the folder or remove the subset from the dataset TOML",
                )
        if not plan.subsets or plan.samples == 0:
            raise DatasetError(
                f"stage {plan.stage}: the dataset is empty, sd-scripts would train on nothing",
                hint="check the source folders (N_name/ with images) and re-run prepare",
            )


def render_stage_plans(plans: Sequence[StagePlan]) -> Group:
    """The plan as rich tables (user text is passed as Text, never as markup)."""
    parts: list[Any] = []
    for plan in plans:
        table = Table(title=f"stage {plan.stage}", title_justify="left", show_edge=False)
        table.add_column("subset")
        table.add_column("images", justify="right")
        table.add_column("repeats", justify="right")
        table.add_column("per epoch", justify="right")
        for subset in plan.subsets:
            table.add_row(Text(subset.name), str(subset.images), str(subset.repeats), str(subset.samples))
        parts.append(table)
        approx = "" if plan.exact else "~"
        parts.append(Text(
            f"  batch {plan.batch_size} · {approx}{plan.steps_per_epoch} steps/epoch · "
            f"{plan.epochs} epoch{'' if plan.epochs == 1 else 's'} · "
            f"{approx}{plan.total_steps} steps in total"
        ))
        if plan.buckets:
            buckets = Table(show_edge=False, box=None, padding=(0, 2))
            buckets.add_column("  bucket")
            buckets.add_column("images x repeats", justify="right")
            buckets.add_column("mean crop", justify="right")
            for b in plan.buckets:
                buckets.add_row(f"  {b.width}x{b.height}", str(b.images), f"{b.mean_crop:.0%}")
            parts.append(buckets)
    if len(plans) == 2 and plans[0].total_steps:
        ratio = step_cost_ratio(plans[0], plans[1])
        total_ratio = ratio * plans[1].total_steps / plans[0].total_steps
        parts.append(Text(
            f"estimated cost: one stage-2 step ≈ {ratio:.2f}x a stage-1 step; "
            f"stage 2 in total ≈ {total_ratio:.2f}x stage 1"
        ))
    return Group(*parts)
