"""Plan preview: steps per epoch as sd-scripts counts them, buckets, cost ratio, and refusing empty data."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from rich.console import Console

from kohya_1to2.configs.buckets import BucketSettings
from kohya_1to2.configs.generate import check_plan, plans_from_run_dir, render_plan, write_run_configs
from kohya_1to2.configs.stage_plans import (
    CPU_SMOKE,
    GPU_SD1,
    GPU_SDXL,
    StepCost,
    SubsetPlan,
    check_stage_plans,
    plan_stage,
    render_stage_plans,
    step_cost_for,
    step_cost_ratio,
)
from kohya_1to2.errors import DatasetError
from kohya_1to2.kohya import measured_seconds_per_step
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


def _ratio(cost: StepCost, stage1: tuple[int, int, int], stage2: tuple[int, int, int]) -> float:
    """Plan's stage-2/stage-1 step ratio for (batch, width, height) of each stage, through plan_stage."""
    plans = []
    for stage, (batch, width, height) in ((1, stage1), (2, stage2)):
        sized = SubsetPlan(name="s", image_dir=Path("/s"), images=batch, repeats=1, sizes=((width, height),) * batch)
        plans.append(plan_stage(stage, [sized], BucketSettings(resolution=(width, height), max_bucket_reso=2048),
                                batch, {"max_train_epochs": 1}))
    return step_cost_ratio(plans[0], plans[1], cost)


@pytest.mark.parametrize(("cost", "stage1", "stage2", "measured"), [
    (GPU_SD1, (4, 512, 512), (2, 704, 320), 0.44 / 0.48),      # H200 SD1 seed preset, one run
    (GPU_SD1, (4, 512, 512), (2, 1024, 512), 0.48 / 0.42),     # H200 SD1, stage 2 at [1024, 512], another run
    (GPU_SDXL, (4, 1024, 1024), (2, 1408, 704), 2.11 / 2.31),  # H200 SDXL preset
])
def test_estimated_step_ratio_is_within_15_percent_of_the_gpu_measurements(
        cost: StepCost, stage1: tuple[int, int, int], stage2: tuple[int, int, int], measured: float) -> None:
    estimate = _ratio(cost, stage1, stage2)
    assert abs(estimate / measured - 1) <= 0.15, (estimate, measured)
    pixels_only = (stage2[0] * stage2[1] * stage2[2]) / (stage1[0] * stage1[1] * stage1[2])
    if abs(pixels_only / measured - 1) > 0.15:
        assert abs(estimate / measured - 1) < abs(pixels_only / measured - 1), "better than pixels alone"


def test_cost_model_is_chosen_by_family_and_precision() -> None:
    assert step_cost_for("sd1", "fp16") is GPU_SD1 and step_cost_for("sd2", "bf16") is GPU_SD1
    assert step_cost_for("sdxl", "bf16") is GPU_SDXL
    assert step_cost_for("sdxl", "no") is CPU_SMOKE and step_cost_for(None, None) is CPU_SMOKE
    for cost in (GPU_SD1, GPU_SDXL, CPU_SMOKE):
        assert cost.fixed_s > 0 and cost.per_megapixel_s > 0 and "measured" in cost.source


def test_measured_seconds_per_step_from_sd_scripts_progress_lines() -> None:
    log = ("caching latents\n100%|██████████| 4/4 [00:00<00:00, 12.30it/s]\n"
           "steps:   0%|          | 0/2 [00:00<?, ?it/s]\rsteps:  50%|█████     | 1/2 [00:03<00:03,  3.05s/it, "
           "avr_loss=0.1]\rsteps: 100%|██████████| 2/2 [00:05<00:00,  2.50s/it, avr_loss=0.1]\n")
    assert measured_seconds_per_step(log) == (2.5, 2)
    assert measured_seconds_per_step("steps: 100%|███| 20/20 [00:09<00:00,  2.00it/s, avr_loss=0.1]") == (0.5, 20)
    assert measured_seconds_per_step("steps:   0%|          | 0/2 [00:00<?, ?it/s]") is None


def test_plan_shows_pixels_per_character_and_measured_seconds() -> None:
    one = plan_stage(1, [subset(4)], SD1, 4, {"max_train_epochs": 1, "mixed_precision": "fp16"})
    wide = SubsetPlan(name="c", image_dir=Path("/c"), images=2, repeats=1, sizes=((1024, 512),) * 2,
                      role="composites")
    two = plan_stage(2, [wide], BucketSettings(resolution=(1024, 512)), 2, {"max_train_epochs": 1})
    console = Console(record=True, width=200)
    console.print(render_stage_plans([one, two], family="sd1", measured={1: (0.42, 20), 2: (0.48, 20)}))
    text = console.export_text()
    assert "512x512 px per image, 512x512 px per character" in text
    assert "1024x512" in text and "724x724 px per composite, 512x512 px per character" in text
    assert f"estimated {GPU_SD1.seconds(4, 512 * 512):.2f} s/step" in text
    assert "measured 0.42 s/step (logs/stage1.log, 20 steps)" in text and "measured 0.48 s/step" in text
    assert "H200" in text and "measured: one stage-2 step = 1.14x" in text


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


def test_plan_shows_sample_images_and_steps_per_epoch(tmp_path: Path) -> None:
    from kohya_1to2.configs.presets import load_preset
    from kohya_1to2.configs.prompts import sample_prompts_text
    from kohya_1to2.models import CaptionRules

    prompts = tmp_path / "sample_prompts.txt"
    triggers = [(f"c{i}", f"char{i}") for i in range(10)]
    prompts.write_text(sample_prompts_text(triggers, load_preset("seed").settings, CaptionRules()), encoding="utf-8")
    training = {"max_train_epochs": 40, "sample_prompts": str(prompts), "sample_every_n_epochs": 1}
    plan = plan_stage(1, [subset(4)], SD1, 4, training)
    assert (plan.sample_images, plan.sample_steps, plan.sample_every_epochs) == (20, 20 * 28, 1)
    console = Console(width=200, record=True)
    console.print(render_stage_plans([plan]))
    assert "samples each epoch: 20 images, 560 sampler steps" in console.export_text()
    assert plan_stage(1, [subset(4)], SD1, 4, {**training, "sample_every_n_epochs": None}).sample_images == 0


def test_plan_command_shows_the_measured_seconds_of_a_stage_that_ran(
        tmp_path: Path, kohya_dataset: Callable[..., Path]) -> None:
    import argparse

    from kohya_1to2.commands import plan as plan_command

    chars = _characters(kohya_dataset({"alice": 3, "bob": 2}))
    run = tmp_path / "run"
    job = Job(out=run, sources=SourceSettings(roots=[tmp_path / "src"]), training=TrainingSettings(epochs=2))
    write_run_configs(job, chars, composite_dir=run / "composites" / "1_composite", composite_repeats=1,
                      composite_sizes=[(192, 128)] * 4, run_dir=run)
    (run / "logs").mkdir()
    (run / "logs" / "stage1.log").write_text(
        "steps:   0%|          | 0/4 [00:00<?, ?it/s]\rsteps: 100%|██████████| 4/4 [00:02<00:00,  1.60it/s, "
        "avr_loss=0.1]2026-11-26 INFO saving\n", encoding="utf-8")
    console = Console(record=True, width=200)
    with pytest.raises(DatasetError, match="composite"):  # composites not built here: printed, then refused
        plan_command.run(argparse.Namespace(run_dir=run), console)
    text = console.export_text()
    assert "measured 0.62 s/step (logs/stage1.log, 4 steps)" in text
    assert text.count("measured") == 1 + text.count("measured on"), "stage 2 has not run: no measured figure"


def test_plan_command_shows_the_prediction_type_and_what_the_base_model_says(
        tmp_path: Path, kohya_dataset: Callable[..., Path]) -> None:
    import argparse

    from kohya_1to2.commands import plan as plan_command

    chars = _characters(kohya_dataset({"alice": 3, "bob": 2}))
    run = tmp_path / "run"
    base = tmp_path / "noobaiXL-vpred-1.0.safetensors"
    base.write_bytes(b"fake")
    job = Job(out=run, sources=SourceSettings(roots=[tmp_path / "src"]),
              training=TrainingSettings(preset="noobai-vpred", base_model=str(base)))
    write_run_configs(job, chars, composite_dir=run / "composites" / "1_composite", composite_repeats=1,
                      composite_sizes=[(192, 128)] * 4, run_dir=run)
    console = Console(record=True, width=300)
    with pytest.raises(DatasetError, match="composite"):  # composites not built here: printed, then refused
        plan_command.run(argparse.Namespace(run_dir=run), console)
    assert ("prediction: trains v-prediction with zero terminal SNR; base model: v-prediction (its name "
            "'noobaiXL-vpred-1.0.safetensors' says v-pred)") in console.export_text()
