"""Every `--mode` (and `--reg`) as the REAL pinned sd-scripts reads it: each stage's TOMLs through
`read_config_from_file`, the sanitizer and `generate_dataset_group_by_blueprint` on a prepared run, and `plan`'s
figures (steps, samples, shares per block) against what sd-scripts' dataset code builds from the same files."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from sample_images import write_image
from sd_scripts_child import DATASET_GROUP, requires_sd_scripts, run_in_sd_scripts

from kohya_1to2.commands.prepare import PrepareOptions, prepare
from kohya_1to2.configs.generate import plans_from_run_dir
from kohya_1to2.models import CompositeSettings, Job, SourceSettings, TrainingSettings
from kohya_1to2.rundir import RunDir

pytestmark = requires_sd_scripts()

READER = DATASET_GROUP + r"""
out = []
for path in request["training"]:
    args, group = dataset_group(path)
    stage = {"prior_loss_weight": args.prior_loss_weight, "batches": len(group), "datasets": []}
    for dataset in group.datasets:
        images = []
        for key, info in dataset.image_data.items():
            subset = dataset.image_to_subset[key]
            images.append({"dir": subset.image_dir, "repeats": info.num_repeats, "is_reg": info.is_reg,
                           "caption": dataset.process_caption(subset, info.caption) if info.is_reg else None})
        info = (dataset.bucket_info or {}).get("buckets", {})
        buckets = sorted([*b["resolution"], b["count"]] for b in info.values())
        stage["datasets"].append({"batch_size": dataset.batch_size, "batches": len(dataset), "buckets": buckets,
                                  "train": dataset.num_train_images, "reg": dataset.num_reg_images,
                                  "images": images})
    out.append(stage)
print("@@" + json.dumps(out))
"""


def _sources(root: Path) -> tuple[Path, Path]:
    """Three characters of four captioned images (square and portrait), and a reg root of one uncaptioned class."""
    src = root / "src"
    for n, name in enumerate(("akari", "bell", "clover")):
        for i in range(4):
            image = write_image(src / f"{n + 1}_{name}" / f"{name}{i}.png", size=(64, 64 if i % 2 else 96))
            image.with_suffix(".txt").write_text(f"{name}, 1girl, tag{i}", encoding="utf-8")
    reg = root / "reg"
    for i in range(3):
        write_image(reg / "2_person" / f"p{i}.png", size=(64, 64))
    return src, reg


def _prepared(tmp_path: Path, mode: str, reg: bool, **training: Any) -> Path:
    src, reg_root = _sources(tmp_path)
    run = tmp_path / f"run {mode}"
    job = Job(out=run, sources=SourceSettings(roots=[src], reg=[reg_root] if reg else []),
              composites=CompositeSettings(budget=12),
              training=TrainingSettings(preset="smoke", mode=mode, **training))  # type: ignore[arg-type]
    assert prepare(job, PrepareOptions(), Console(file=io.StringIO(), width=200)) == 0
    return run


def _read(run: Path, stages: tuple[int, ...]) -> list[dict[str, Any]]:
    return run_in_sd_scripts(READER, {"training": [str(RunDir(run).train_toml(s)) for s in stages]})


def _samples(dataset: dict[str, Any], *, reg: bool | None = None, under: str | None = None) -> int:
    return sum(i["repeats"] for i in dataset["images"]
               if (reg is None or i["is_reg"] == reg) and (under is None or Path(i["dir"]).parent.name == under))


@pytest.mark.parametrize(("mode", "reg", "stages"), [("sequential", True, (1, 2)), ("joint", True, (1,)),
                                                     ("replay", False, (1, 2))])
def test_plan_figures_match_sd_scripts_dataset_for_each_mode(tmp_path: Path, mode: str, reg: bool,
                                                             stages: tuple[int, ...]) -> None:
    run = _prepared(tmp_path, mode, reg)
    plans = plans_from_run_dir(run)
    read = _read(run, stages)
    assert [p.stage for p in plans] == list(stages)
    for plan, stage in zip(plans, read, strict=True):
        assert stage["batches"] == plan.steps_per_epoch, plan.stage
        assert [d["batch_size"] for d in stage["datasets"]] == [d.batch_size for d in plan.datasets]
        assert [d["batches"] for d in stage["datasets"]] == [d.steps_per_epoch for d in plan.datasets]
        assert [_samples(d) for d in stage["datasets"]] == [d.samples for d in plan.datasets]
        assert [d["buckets"] for d in stage["datasets"]] == [
            sorted([b.width, b.height, b.images] for b in d.buckets) for d in plan.datasets]
        total = sum(_samples(d) for d in stage["datasets"])
        composites = sum(_samples(d, under="composites") for d in stage["datasets"])
        assert plan.share("composites") == pytest.approx(composites / total)


def test_joint_composites_take_the_stated_share_and_reg_images_are_is_reg(tmp_path: Path) -> None:
    run = _prepared(tmp_path, "joint", True, composite_share=0.5, prior_loss_weight=0.7)
    [stage] = _read(run, (1,))
    singles, composites = stage["datasets"]
    reg_images = [i for i in singles["images"] if i["is_reg"]]
    assert {Path(i["dir"]).name for i in reg_images} == {"2_person"} and len(reg_images) == 3
    assert all(i["caption"] == "person" for i in reg_images), "class_tokens caption the uncaptioned reg images"
    assert singles["reg"] == 6 and _samples(singles, reg=True) == singles["train"], "sd-scripts balances reg"
    assert stage["prior_loss_weight"] == 0.7
    share = _samples(composites) / (_samples(singles) + _samples(composites))
    assert share == pytest.approx(0.5, abs=0.1)


def test_replay_stage_2_holds_the_stated_share_of_singles_drawn_evenly(tmp_path: Path) -> None:
    run = _prepared(tmp_path, "replay", False, replay_share=0.25)
    _, stage2 = _read(run, (1, 2))
    composites, singles = stage2["datasets"]
    share = _samples(singles) / (_samples(singles) + _samples(composites))
    assert share == pytest.approx(0.25, abs=0.03)
    per_character: dict[str, int] = {}
    for image in singles["images"]:
        per_character[Path(image["dir"]).name] = per_character.get(Path(image["dir"]).name, 0) + image["repeats"]
    assert sorted(per_character) == ["akari", "bell", "clover"]
    assert max(per_character.values()) - min(per_character.values()) <= 1
    assert not any(i["is_reg"] for d in stage2["datasets"] for i in d["images"]), "reg belongs to stage 1 only"
