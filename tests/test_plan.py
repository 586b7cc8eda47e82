"""Plan preview: steps per epoch as sd-scripts counts them, buckets, cost ratio, and refusing empty data."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from rich.console import Console

from kohya_1to2.configs.buckets import BucketSettings
from kohya_1to2.configs.generate import check_plan, plans_from_run_dir, render_plan, write_run_configs
from kohya_1to2.configs.plan import SubsetPlan, check_stage_plans, plan_stage, step_cost_ratio
from kohya_1to2.errors import DatasetError
from kohya_1to2.models import Character, Job, SourceImage, SourceSettings, TrainingSettings

SD1 = BucketSettings(resolution=(512, 512))


def subset(images: int, repeats: int = 1, size: tuple[int, int] | None = (512, 512)) -> SubsetPlan:
    return SubsetPlan(name="s", image_dir=Path("/x"), images=images, repeats=repeats,
                      sizes=(size,) * images if size else ())


def test_each_bucket_is_batched_on_its_own() -> None:
    wide = SubsetPlan(name="w", image_dir=Path("/w"), images=3, repeats=1, sizes=((1024, 512),) * 3)
    plan = plan_stage(2, [subset(3), wide], SD1, 2, {"max_train_epochs": 10})
    assert plan.steps_per_epoch == 4  # ceil(3/2) + ceil(3/2), not ceil(6/2)
    assert plan.total_steps == 40 and plan.epochs == 10 and plan.exact


def test_repeats_multiply_samples() -> None:
    plan = plan_stage(1, [subset(5, repeats=3)], SD1, 4, {"max_train_epochs": 1})
    assert plan.samples == 15 and plan.steps_per_epoch == 4


def test_max_train_steps_without_epochs_sets_the_total() -> None:
    plan = plan_stage(1, [subset(8)], SD1, 4, {"max_train_steps": 3})
    assert plan.total_steps == 3 and plan.epochs == 2
    default = plan_stage(1, [subset(8)], SD1, 4, {})
    assert default.total_steps == 1600  # sd-scripts' default max_train_steps


def test_unknown_sizes_estimate_steps_from_the_sample_count() -> None:
    plan = plan_stage(1, [subset(9, size=None)], SD1, 4, {"max_train_epochs": 1})
    assert not plan.exact and plan.steps_per_epoch == 3 and plan.buckets == ()


def test_cost_ratio_weighs_batch_and_pixels() -> None:
    one = plan_stage(1, [subset(4)], SD1, 4, {"max_train_epochs": 1})
    wide = SubsetPlan(name="c", image_dir=Path("/c"), images=2, repeats=1, sizes=((1024, 512),) * 2)
    two = plan_stage(2, [wide], SD1, 2, {"max_train_epochs": 1})
    assert step_cost_ratio(one, two) == pytest.approx(2 * 704 * 320 / (4 * 512 * 512))


def test_zero_image_subset_and_empty_dataset_are_errors() -> None:
    ok = plan_stage(1, [subset(2)], SD1, 1, {})
    with pytest.raises(DatasetError, match="subset 's' has no images"):
        check_stage_plans([ok, plan_stage(2, [subset(2), subset(0)], SD1, 1, {})])
    with pytest.raises(DatasetError, match="stage 2: the dataset is empty"):
        check_stage_plans([ok, plan_stage(2, [], SD1, 1, {})])
    check_stage_plans([ok])


def _characters(root: Path) -> list[Character]:
    out = []
    for folder in sorted(root.iterdir()):
        images = tuple(SourceImage(path=p, character=folder.name, tags=(folder.name.split("_", 1)[1],))
                       for p in sorted(folder.glob("*.png")))
        name = folder.name.split("_", 1)[1]
        out.append(Character(name=name, trigger=name, repeats=1, folder=folder, images=images))
    return out


def test_prepare_interfaces_and_plan_of_the_written_run(tmp_path: Path,
                                                       kohya_dataset: Callable[..., Path]) -> None:
    chars = _characters(kohya_dataset({"alice": 3, "bob": 2}))
    run = tmp_path / "run"
    job = Job(out=run, sources=SourceSettings(roots=[tmp_path / "src"]), training=TrainingSettings(epochs=2))
    sizes = [(192, 128)] * 4
    check_plan(job, chars, run / "composites" / "1_composite", 1, sizes)
    console = Console(record=True, width=120)
    console.print(render_plan(job, chars, run / "composites" / "1_composite", 1, sizes))
    text = console.export_text()
    assert "alice" in text and "steps/epoch" in text and "stage-2 step" in text and "crop" in text
    with pytest.raises(DatasetError):
        check_plan(job, chars, run / "composites" / "1_composite", 1, [])
    write_run_configs(job, chars, composite_dir=run / "composites" / "1_composite", composite_repeats=1,
                      composite_sizes=sizes, run_dir=run)
    plans = plans_from_run_dir(run)
    assert [p.samples for p in plans] == [5, 0]  # composites not built in this test: the plan reads the disk
    assert plans[0].epochs == 2 and plans[0].batch_size == 4 and plans[0].exact
