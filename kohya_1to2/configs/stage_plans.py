"""The plan preview (pure): per stage, subsets x repeats, steps per epoch and in total, bucket assignment,
pixels per character, and the time per step from a cost model fitted to measured runs (beside the measured
s/step once a stage has run); plus the check that refuses a stage that would train on nothing.

sd-scripts exits 0 after "No data found" on an empty dataset and only warns on a 0-image subset, so both are
errors here, before any training time is spent.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict
from rich.console import Group
from rich.table import Table
from rich.text import Text

from kohya_1to2 import kohya
from kohya_1to2.configs.buckets import BucketCount, BucketSettings, assign_buckets
from kohya_1to2.configs.prompts import sampling_load
from kohya_1to2.errors import DatasetError

CPU_SMOKE_RUNS = (
    ((36.7, (256, 256)), (28.8, (320, 192))),
    ((39.86, (256, 256)), (27.6, (384, 192))),
)
"""The smoke runs' measured s/step, (stage 1, stage 2) at batch 4 and 2 with their buckets: logs/stage1.log and
stage2.log of `launch` on the smoke preset, bundled example, 2 shared CPU cores (bench/README.md); the second run
is CI's e2e after stage 2's buckets were chosen per --stage2-scale. A shared machine's load moves each figure by
~10%, hence a least-squares fit over every run rather than the line through one pair."""


class SubsetPlan(BaseModel):
    """One subset: its folder, image count, repeats and (when known) image sizes."""

    model_config = ConfigDict(frozen=True)

    name: str
    image_dir: Path
    images: int
    repeats: int
    sizes: tuple[tuple[int, int], ...] = ()
    role: Literal["character", "composites", "replay", "reg"] = "character"
    image_repeats: tuple[int, ...] | None = None
    """Per image, how often sd-scripts shows it per epoch when that is not `repeats` (reg images are balanced)."""
    group_size: int = 2
    """Characters per composite (`--group-size`); read for the composites only."""

    @property
    def samples(self) -> int:
        return sum(self.image_repeats) if self.image_repeats is not None else self.images * self.repeats

    def repeated_sizes(self) -> list[tuple[int, int]]:
        counts = self.image_repeats if self.image_repeats is not None else [self.repeats] * len(self.sizes)
        return [size for size, count in zip(self.sizes, counts, strict=False) for _ in range(count)]


class DatasetPlan(BaseModel):
    """One [[datasets]] block: its subsets, batch size, buckets and steps (each block is batched on its own)."""

    model_config = ConfigDict(frozen=True)

    batch_size: int
    subsets: tuple[SubsetPlan, ...]
    buckets: tuple[BucketCount, ...]
    steps_per_epoch: int
    mean_pixels: float
    exact: bool

    @property
    def characters_per_image(self) -> int:
        return max((s.group_size for s in self.subsets if s.role == "composites"), default=1)

    @property
    def samples(self) -> int:
        return sum(s.samples for s in self.subsets)


class StagePlan(BaseModel):
    model_config = ConfigDict(frozen=True)

    stage: int
    datasets: tuple[DatasetPlan, ...]
    epochs: int
    total_steps: int
    mixed_precision: str | None = None
    sample_images: int = 0
    """Images sampled each time the stage samples (sample_prompts), and their sampler steps."""
    sample_steps: int = 0
    sample_every_epochs: int | None = None

    @property
    def subsets(self) -> tuple[SubsetPlan, ...]:
        return tuple(s for d in self.datasets for s in d.subsets)

    @property
    def buckets(self) -> tuple[BucketCount, ...]:
        return tuple(b for d in self.datasets for b in d.buckets)

    @property
    def batch_size(self) -> int:
        """The first block's batch size (each block has its own; see `datasets`)."""
        return self.datasets[0].batch_size if self.datasets else 1

    @property
    def steps_per_epoch(self) -> int:
        return sum(d.steps_per_epoch for d in self.datasets)

    @property
    def exact(self) -> bool:
        return all(d.exact for d in self.datasets)

    @property
    def mean_pixels(self) -> float:
        samples = sum(d.samples for d in self.datasets)
        return sum(d.mean_pixels * d.samples for d in self.datasets) / samples if samples else 0.0

    @property
    def pixels_per_character(self) -> float:
        """A single image trains one character, a composite two."""
        samples = sum(d.samples for d in self.datasets)
        return sum(d.mean_pixels / d.characters_per_image * d.samples for d in self.datasets) / samples \
            if samples else 0.0

    @property
    def samples(self) -> int:
        return sum(s.samples for s in self.subsets)

    def share(self, *roles: str) -> float:
        """The share of the stage's samples per epoch in subsets of these roles."""
        total = self.samples
        return sum(s.samples for s in self.subsets if s.role in roles) / total if total else 0.0


def balance_reg(subsets: Sequence[SubsetPlan]) -> list[SubsetPlan]:
    """Reg subsets with the per-image repeats sd-scripts gives them in this block (kohya.reg_repeats)."""
    train = sum(s.samples for s in subsets if s.role != "reg")
    regs = [s for s in subsets if s.role == "reg"]
    counts = kohya.reg_repeats(train, [s.repeats for s in regs for _ in range(s.images)])
    out, at = [], 0
    for subset in subsets:
        if subset.role == "reg":
            out.append(subset.model_copy(update={"image_repeats": tuple(counts[at:at + subset.images])}))
            at += subset.images
        else:
            out.append(subset)
    return out


def plan_dataset(subsets: Sequence[SubsetPlan], bucket_settings: BucketSettings, batch_size: int) -> DatasetPlan:
    """Steps and buckets of one block, as sd-scripts counts them (each bucket is batched on its own)."""
    subsets = balance_reg(subsets)
    exact = all(len(s.sizes) == s.images for s in subsets)
    if exact:
        sizes = [size for s in subsets for size in s.repeated_sizes()]
        buckets = tuple(assign_buckets(sizes, bucket_settings))
        steps = sum(math.ceil(b.images / batch_size) for b in buckets)
        area = sum(b.width * b.height * b.images for b in buckets) / max(1, len(sizes))
    else:
        buckets = ()
        steps = math.ceil(sum(s.samples for s in subsets) / batch_size)
        area = float(bucket_settings.resolution[0] * bucket_settings.resolution[1])
    return DatasetPlan(batch_size=batch_size, subsets=tuple(subsets), buckets=buckets, steps_per_epoch=steps,
                       mean_pixels=area, exact=exact)


def plan_stage(
    stage: int, subsets: Sequence[SubsetPlan], bucket_settings: BucketSettings, batch_size: int,
    training: Mapping[str, Any],
) -> StagePlan:
    """A stage of one [[datasets]] block."""
    return plan_stage_datasets(stage, [plan_dataset(subsets, bucket_settings, batch_size)], training)


def plan_stage_datasets(stage: int, datasets: Sequence[DatasetPlan], training: Mapping[str, Any]) -> StagePlan:
    """Epochs and total steps of a stage whose blocks are planned (sd-scripts concatenates their batches)."""
    steps = sum(d.steps_per_epoch for d in datasets)
    epochs_value = training.get(kohya.MAX_TRAIN_EPOCHS)
    if isinstance(epochs_value, int) and epochs_value > 0:
        epochs, total = epochs_value, epochs_value * steps
    else:
        max_steps = training.get(kohya.MAX_TRAIN_STEPS)
        total = max_steps if isinstance(max_steps, int) and max_steps > 0 else kohya.DEFAULT_MAX_TRAIN_STEPS
        epochs = math.ceil(total / steps) if steps else 0
    return StagePlan(stage=stage, datasets=tuple(datasets), epochs=epochs, total_steps=total if steps else 0,
                     mixed_precision=_precision(training.get(kohya.MIXED_PRECISION)), **_sampling(training))


def _sampling(training: Mapping[str, Any]) -> dict[str, Any]:
    """What the stage samples per epoch, from its sample_prompts file (nothing when sampling is off)."""
    path, every = training.get(kohya.SAMPLE_PROMPTS), training.get(kohya.SAMPLE_EVERY_N_EPOCHS)
    if not isinstance(path, str) or not isinstance(every, int) or every < 1 or not Path(path).is_file():
        return {}
    images, steps = sampling_load(Path(path).read_text(encoding="utf-8", errors="replace"))
    return {"sample_images": images, "sample_steps": steps, "sample_every_epochs": every}


def _precision(value: Any) -> str | None:
    return value if isinstance(value, str) else None


class MeasuredStep(BaseModel):
    """One measured training step: seconds, batch and the bucket it trained."""

    model_config = ConfigDict(frozen=True)

    seconds: float
    batch: int
    width: int
    height: int

    @property
    def megapixels(self) -> float:
        return self.batch * self.width * self.height / 1e6


class StepCost(BaseModel):
    """Seconds per step = fixed part + part per megapixel x batch, fitted to two measured steps.

    Per-pixel FLOPs alone predict a stage-2 step at 0.43x a stage-1 step; measured, it is 0.91x: much of a step
    does not scale with pixels (LoHa rebuilds every module's weight each step, the text encoder is trained,
    the optimizer steps), so the fixed part carries it."""

    model_config = ConfigDict(frozen=True)

    name: str
    fixed_s: float
    per_megapixel_s: float
    source: str

    def seconds(self, batch: int, pixels: float) -> float:
        return self.fixed_s + self.per_megapixel_s * batch * pixels / 1e6


def fit_step_cost(name: str, steps: Sequence[MeasuredStep], source: str) -> StepCost:
    """The least-squares line through measured steps (for two, the line through them; non-negative parts)."""
    xs, ys = [step.megapixels for step in steps], [step.seconds for step in steps]
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    spread = sum((x - mean_x) ** 2 for x in xs)
    per = max(0.0, sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / spread) if spread else 0.0
    return StepCost(name=name, fixed_s=max(0.0, mean_y - per * mean_x), per_megapixel_s=per, source=source)


GPU_SD1 = fit_step_cost(
    "SD1 on a GPU", [MeasuredStep(seconds=0.48, batch=4, width=512, height=512),
                     MeasuredStep(seconds=0.44, batch=2, width=704, height=320)],
    "measured on an H200 (seed preset, fp16 + AdamW8bit + SDPA, 2026-11-26): stage 1 0.48 s/step at 4 x 512x512, "
    "stage 2 0.44 s/step at 2 x 704x320",
)
GPU_SDXL = fit_step_cost(
    "SDXL on a GPU", [MeasuredStep(seconds=2.31, batch=4, width=1024, height=1024),
                      MeasuredStep(seconds=2.11, batch=2, width=1408, height=704)],
    "measured on an H200 (sdxl preset, bf16 + AdamW8bit + gradient checkpointing, 2026-11-26): stage 1 2.31 "
    "s/step at 4 x 1024x1024, stage 2 2.11 s/step at 2 x 1408x704",
)
CPU_SMOKE = fit_step_cost(
    "CPU (fp32)",
    [MeasuredStep(seconds=seconds, batch=batch, width=size[0], height=size[1])
     for run in CPU_SMOKE_RUNS for (seconds, size), batch in zip(run, (4, 2), strict=True)],
    "measured on 2 shared CPU cores (smoke preset, tiny model, fp32; bench/README.md), two runs: stage 1 "
    + " and ".join(f"{one[0]} s/step at 4 x {one[1][0]}x{one[1][1]}" for one, _ in CPU_SMOKE_RUNS)
    + ", stage 2 " + " and ".join(f"{two[0]} s/step at 2 x {two[1][0]}x{two[1][1]}" for _, two in CPU_SMOKE_RUNS),
)


def step_cost_for(family: str | None, mixed_precision: str | None) -> StepCost:
    """The cost model of a run: fp32 (`mixed_precision = "no"`) is taken for a CPU run, else the family's GPU."""
    if mixed_precision in (None, "no"):
        return CPU_SMOKE
    return GPU_SDXL if family == "sdxl" else GPU_SD1


def step_seconds(plan: StagePlan, cost: StepCost) -> float:
    """Estimated seconds per step of a stage (its blocks' steps weighted by their count)."""
    steps = plan.steps_per_epoch
    if not steps:
        return cost.seconds(plan.batch_size, plan.mean_pixels)
    return sum(cost.seconds(d.batch_size, d.mean_pixels) * d.steps_per_epoch for d in plan.datasets) / steps


def step_cost_ratio(stage1: StagePlan, stage2: StagePlan, cost: StepCost = GPU_SD1) -> float:
    """Estimated time of one stage-2 step relative to one stage-1 step."""
    one = step_seconds(stage1, cost)
    return step_seconds(stage2, cost) / one if one else 0.0


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


def _side(pixels: float) -> str:
    side = round(math.sqrt(pixels)) if pixels > 0 else 0
    return f"{side}x{side}"


_ROLE_LABELS = {"character": "", "composites": "", "replay": " (replayed)", "reg": " (reg)"}


def _stage_title(plan: StagePlan, stages: int) -> str:
    return "joint stage (singles and composites together)" if stages == 1 and len(plan.datasets) > 1 \
        else f"stage {plan.stage}"


def _bucket_table(plan: DatasetPlan) -> Table:
    buckets = Table(show_edge=False, box=None, padding=(0, 2))
    buckets.add_column("  bucket")
    buckets.add_column("images x repeats", justify="right")
    buckets.add_column("mean crop", justify="right")
    for b in plan.buckets:
        buckets.add_row(f"  {b.width}x{b.height}", str(b.images), f"{b.mean_crop:.0%}")
    return buckets


def render_stage_plans(plans: Sequence[StagePlan], family: str | None = None,
                       measured: Mapping[int, tuple[float, int]] | None = None) -> Group:
    """The plan as rich tables (user text is passed as Text, never as markup); `measured` maps a stage that
    has run to (s/step, steps) read from its log."""
    parts: list[Any] = []
    measured = measured or {}
    cost = step_cost_for(family, plans[0].mixed_precision if plans else None)
    for plan in plans:
        parts.append(_subset_table(plan, len(plans)))
        approx = "" if plan.exact else "~"
        batches = " + ".join(f"{d.steps_per_epoch} at batch {d.batch_size}" for d in plan.datasets)
        batch = f"batch {plan.batch_size}" if len(plan.datasets) == 1 else f"steps/epoch = {batches}"
        parts.append(Text(
            f"  {batch} · {approx}{plan.steps_per_epoch} steps/epoch · "
            f"{plan.epochs} epoch{'' if plan.epochs == 1 else 's'} · "
            f"{approx}{plan.total_steps} steps in total"
        ))
        if len(plan.datasets) > 1:
            parts.append(Text(f"  composites are {plan.share('composites'):.0%} of each epoch's images, single "
                              f"images {plan.share('character', 'replay'):.0%}"
                              + (f", reg images {plan.share('reg'):.0%}" if plan.share("reg") else "")
                              + "; each block keeps its own buckets and batch size"))
        elif plan.share("reg"):
            parts.append(Text(f"  reg images are {plan.share('reg'):.0%} of each epoch's images (sd-scripts repeats "
                              "them to the training images' count)"))
        if plan.sample_images:
            every = "each epoch" if plan.sample_every_epochs == 1 else f"every {plan.sample_every_epochs} epochs"
            parts.append(Text(f"  samples {every}: {plan.sample_images} images, {plan.sample_steps} sampler steps"))
        for dataset in plan.datasets:
            if dataset.buckets:
                parts.append(_bucket_table(dataset))
        per_image = "composite" if all(d.characters_per_image > 1 for d in plan.datasets) else "image"
        line = (f"  {approx}{_side(plan.mean_pixels)} px per {per_image}, {approx}{_side(plan.pixels_per_character)} "
                f"px per character · estimated {step_seconds(plan, cost):.2f} s/step")
        if plan.stage in measured:
            seconds, steps = measured[plan.stage]
            line += f" · measured {seconds:.2f} s/step (logs/stage{plan.stage}.log, {steps} steps)"
        parts.append(Text(line))
    parts += _cost_lines(plans, cost, measured)
    return Group(*parts)


def _subset_table(plan: StagePlan, stage_count: int) -> Table:
    table = Table(title=_stage_title(plan, stage_count), title_justify="left", show_edge=False)
    table.add_column("subset")
    table.add_column("images", justify="right")
    table.add_column("repeats", justify="right")
    table.add_column("per epoch", justify="right")
    for subset in plan.subsets:
        repeats = str(subset.repeats) if subset.image_repeats is None else "balanced"
        table.add_row(Text(subset.name + _ROLE_LABELS[subset.role]), str(subset.images), repeats, str(subset.samples))
    return table


def _cost_lines(plans: Sequence[StagePlan], cost: StepCost, measured: Mapping[int, tuple[float, int]]) -> list[Text]:
    """The estimated cost of the whole run (and the measured stage-2/stage-1 step ratio where both ran)."""
    parts: list[Text] = []
    seconds = sum(step_seconds(p, cost) * p.total_steps for p in plans)
    spent = f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.0f} min"
    if len(plans) == 2 and plans[0].total_steps:
        ratio = step_cost_ratio(plans[0], plans[1], cost)
        total_ratio = ratio * plans[1].total_steps / plans[0].total_steps
        text = (f"estimated cost: one stage-2 step ≈ {ratio:.2f}x a stage-1 step; "
                f"stage 2 in total ≈ {total_ratio:.2f}x stage 1; both stages ≈ {spent} of training steps")
        if 1 in measured and 2 in measured and measured[1][0]:
            text += f" (measured: one stage-2 step = {measured[2][0] / measured[1][0]:.2f}x a stage-1 step)"
        parts.append(Text(text))
    elif plans and plans[0].total_steps:
        parts.append(Text(f"estimated cost: ≈ {spent} of training steps"))
    if plans:
        parts.append(Text(
            f"cost model ({cost.name}): {cost.fixed_s:.2f} s + {cost.per_megapixel_s:.3f} s per megapixel x batch "
            f"per step, {cost.source}; start-up and sampling not included"
        ))
    return parts
