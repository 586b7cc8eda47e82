"""`--mode joint|replay` and `--reg`: the [[datasets]] blocks of each mode, joint's composite share, replay's draw,
reg balancing as sd-scripts does it, and goldens of every mode's generated TOMLs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import toml
from sample_images import write_image

from kohya_1to2.configs.generate import plans_from_documents, render_run_files
from kohya_1to2.configs.modes import joint_composite_repeats, singles_samples, stage_datasets
from kohya_1to2.configs.render import SubsetSpec
from kohya_1to2.dataset.replay import plan_replay, replay_share, write_replay
from kohya_1to2.errors import UsageError
from kohya_1to2.kohya import flatten_training_config, reg_repeats
from kohya_1to2.launch.pipeline import select_stages
from kohya_1to2.models import Character, Job, RegSet, SourceImage, SourceSettings, TrainingSettings

GOLDEN = Path(__file__).parent / "golden" / "configs"
RUN = Path("/runs/example")
COMPOSITES = SubsetSpec(name="composite", image_dir=RUN / "composites" / "1_composite", num_repeats=1, images=6,
                        role="composites")


def characters(names: tuple[str, ...] = ("alice", "bob"), images: int = 3, repeats: int = 2) -> list[Character]:
    out = []
    for name in names:
        folder = Path("/data/src") / f"{repeats}_{name}"
        imgs = tuple(SourceImage(path=folder / f"{name}_{i}.png", character=name, tags=(name, "1girl"),
                                 caption_path=folder / f"{name}_{i}.txt") for i in range(images))
        out.append(Character(name=name, trigger=name, repeats=repeats, folder=folder, images=imgs))
    return out


def reg_set(images: int = 4, repeats: int = 1) -> RegSet:
    folder = Path("/data/reg") / f"{repeats}_1girl"
    return RegSet(name="1girl", repeats=repeats, folder=folder,
                  images=tuple(SourceImage(path=folder / f"g{i}.png", character="1girl") for i in range(images)))


def job(mode: str = "sequential", reg: bool = False, **training: object) -> Job:
    sources = SourceSettings(roots=[Path("/data/src")], reg=[Path("/data/reg")] if reg else [])
    return Job(out=RUN, sources=sources, training=TrainingSettings(  # type: ignore[arg-type]
        base_model="/models/base.safetensors", mode=mode, **training))


def render(j: Job, reg: bool = False) -> dict[str, str]:
    chars = characters()
    replay = plan_replay(chars, 6, j.training.replay_share, 0) if j.training.mode == "replay" else []
    return render_run_files(j, chars, composite_dir=COMPOSITES.image_dir, composite_repeats=1, composite_count=6,
                            run_dir=RUN, reg_sets=[reg_set()] if reg else [], replay=replay)


# ---------------------------------------------------------------- goldens


GOLDEN_CASES = [("joint", False, "stage1.dataset.toml"), ("joint", False, "stage1.train.toml"),
                ("replay", False, "stage2.dataset.toml"), ("replay", False, "stage2.train.toml"),
                ("sequential", True, "stage1.dataset.toml"), ("sequential", True, "stage1.train.toml"),
                ("joint", True, "stage1.dataset.toml")]


@pytest.mark.parametrize(("mode", "reg", "name"), GOLDEN_CASES)
def test_each_mode_matches_its_golden(mode: str, reg: bool, name: str) -> None:
    text = render(job(mode, reg=reg), reg=reg)[name]
    golden = GOLDEN / f"seed.{mode}{'.reg' if reg else ''}.{name}"
    if os.environ.get("UPDATE_GOLDEN") == "1":
        golden.write_text(text, encoding="utf-8")
    assert text == golden.read_text(encoding="utf-8"), f"regenerate with UPDATE_GOLDEN=1 if intended: {golden}"


def test_sequential_goldens_are_unchanged_by_the_modes() -> None:
    files = render(job("sequential"))
    for name in ("stage1.dataset.toml", "stage1.train.toml", "stage2.dataset.toml", "stage2.train.toml"):
        assert files[name] == (GOLDEN / f"seed.{name}").read_text(encoding="utf-8"), name


# ---------------------------------------------------------------- blocks per mode


def test_each_mode_has_its_stages_and_blocks() -> None:
    chars = characters()
    shape = {mode: {stage: [(b.kind, [s.role for s in b.subsets]) for b in blocks]
                    for stage, blocks in stage_datasets(job(mode), chars, COMPOSITES, reg_sets=[reg_set()],
                                                        replay=plan_replay(chars, 6, 0.25, 0)).items()}
             for mode in ("sequential", "joint", "replay")}
    singles = ("singles", ["character", "character", "reg"])
    assert shape["sequential"] == {1: [singles], 2: [("composites", ["composites"])]}
    assert shape["joint"] == {1: [singles, ("composites", ["composites"])]}
    assert shape["replay"] == {1: [singles], 2: [("composites", ["composites"]), ("singles", ["replay", "replay"])]}
    assert job("joint").stages == (1,) and job("replay").stages == (1, 2)


def test_joint_is_one_stage_whose_network_is_the_final_one() -> None:
    files = render(job("joint"))
    assert set(files) == {"stage1.dataset.toml", "stage1.train.toml", "sample_prompts.txt"}
    flat = flatten_training_config(toml.loads(files["stage1.train.toml"]))
    assert flat["output_name"] == "1to2" and "network_weights" not in flat
    blocks = toml.loads(files["stage1.dataset.toml"])["datasets"]
    # each block keeps its own buckets and batch size: singles at stage 1's, composites at stage 2's
    assert [(b["batch_size"], b["resolution"]) for b in blocks] == [(4, 512), (2, blocks[1]["resolution"])]
    sequential = {n: toml.loads(text) for n, text in render(job()).items() if n.endswith("dataset.toml")}
    for block, name in zip(blocks, ("stage1.dataset.toml", "stage2.dataset.toml"), strict=True):
        for key in ("resolution", "min_bucket_reso", "max_bucket_reso", "bucket_reso_steps"):
            assert block[key] == sequential[name]["general"][key], (name, key)


def test_reg_subsets_are_is_reg_with_class_tokens_and_prior_loss_weight_is_written() -> None:
    files = render(job("sequential", reg=True, prior_loss_weight=0.5), reg=True)
    subsets = toml.loads(files["stage1.dataset.toml"])["datasets"][0]["subsets"]
    assert [(s.get("is_reg", False), s.get("class_tokens")) for s in subsets] == [
        (False, None), (False, None), (True, "1girl")]
    for name in ("stage1.train.toml", "stage2.train.toml"):  # identical settings in both stages
        assert flatten_training_config(toml.loads(files[name]))["prior_loss_weight"] == 0.5
    assert "prior_loss_weight" not in flatten_training_config(toml.loads(render(job())["stage1.train.toml"]))


# ---------------------------------------------------------------- shares


def test_reg_repeats_follow_sd_scripts_balancing() -> None:
    # first pass registers each image with its repeats until the training count is reached ...
    assert reg_repeats(5, [2, 2, 2, 2]) == [2, 2, 2, 0]
    # ... then adds one repeat per image in turn
    assert reg_repeats(7, [1, 1]) == [4, 3]
    assert reg_repeats(0, [1, 1]) == [0, 0] and reg_repeats(3, []) == []


@pytest.mark.parametrize("share", [0.25, 0.5, 0.75])
def test_joint_composite_repeats_reach_the_share(share: float) -> None:
    chars = characters(images=10, repeats=3)  # 60 single samples per epoch
    repeats = joint_composite_repeats(chars, [], 20, share)
    assert repeats * 20 / (repeats * 20 + 60) == pytest.approx(share, abs=0.1)
    assert joint_composite_repeats(chars, [reg_set()], 20, 0.5) == 6  # reg images count: 60 + 60 balanced
    assert singles_samples(chars, [reg_set()]) == 120


def test_replay_draws_evenly_per_character_and_reaches_the_share() -> None:
    chars = characters(("alice", "bob", "cid"), images=5)
    picks = plan_replay(chars, composite_samples=12, share=0.25, seed=3)
    assert [p.samples for p in picks] == [2, 1, 1]  # 4 = 0.25 / 0.75 x 12, as evenly as whole numbers go
    assert replay_share(picks, 12) == 0.25
    assert picks == plan_replay(list(reversed(chars)), 12, 0.25, 3), "same job, same draw"
    assert plan_replay(chars, 12, 0.25, 4) != picks, "the seed draws"
    many = plan_replay(chars, composite_samples=60, share=0.5, seed=0)  # 20 per character from 5 images
    assert [(len(p.images), p.repeats) for p in many] == [(5, 4)] * 3


def test_write_replay_mirrors_the_picks_and_removes_what_is_no_longer_picked(tmp_path: Path) -> None:
    src = tmp_path / "src" / "1_alice"
    images = []
    for i in range(3):
        write_image(src / f"a{i}.png", size=(8, 8))
        (src / f"a{i}.txt").write_text("alice, x", encoding="utf-8")
        images.append(SourceImage(path=src / f"a{i}.png", character="alice", caption_path=src / f"a{i}.txt"))
    alice = Character(name="alice", trigger="alice", repeats=1, folder=src, images=tuple(images))
    root = tmp_path / "run" / "replay"
    (root / "gone").mkdir(parents=True)
    first = plan_replay([alice], composite_samples=6, share=0.25, seed=0)  # 2 images
    assert write_replay(first, root) == 4
    assert sorted(p.name for p in (root / "alice").iterdir()) == sorted(
        n for i in first[0].images for n in (i.path.name, f"{i.path.stem}.txt"))
    assert not (root / "gone").exists()
    smaller = plan_replay([alice], composite_samples=3, share=0.25, seed=0)  # 1 image
    write_replay(smaller, root)
    assert len(list((root / "alice").iterdir())) == 2
    assert (src / "a0.png").is_file() and len(list(src.iterdir())) == 6, "sources are never touched"


# ---------------------------------------------------------------- plan of each mode


def test_plan_states_each_block_and_the_shares(tmp_path: Path) -> None:
    files = render(job("joint", composite_share=0.5))
    documents = {1: (toml.loads(files["stage1.dataset.toml"]), toml.loads(files["stage1.train.toml"]))}
    known = {c.folder: (3, ((512, 512),) * 3) for c in characters()}
    known[COMPOSITES.image_dir] = (6, ((1024, 512),) * 6)
    [plan] = plans_from_documents(documents, known)
    assert [d.batch_size for d in plan.datasets] == [4, 2]
    assert [d.steps_per_epoch for d in plan.datasets] == [3, 3]  # 12 singles / 4, 6 composites / 2
    assert plan.share("composites") == pytest.approx(6 / 18)


# ---------------------------------------------------------------- misuse


def test_shares_and_repeats_outside_their_mode_are_refused() -> None:
    with pytest.raises(ValueError, match="composite_share applies to mode 'joint'"):
        TrainingSettings(composite_share=0.3)
    with pytest.raises(ValueError, match="replay_share applies to mode 'replay'"):
        TrainingSettings(mode="joint", replay_share=0.3)
    with pytest.raises(ValueError, match="composites' repeats follow composite_share"):
        Job.model_validate({"out": "/r", "sources": {"roots": ["/s"]}, "composites": {"repeats": 3},
                            "training": {"mode": "joint"}})


def test_stage_selection_knows_the_modes_stages() -> None:
    assert select_stages(None, None, (1,)) == (1,)
    with pytest.raises(UsageError, match="trains stage 1 only"):
        select_stages(2, None, (1,))
    assert select_stages(None, 2, (1, 2)) == (2,)


# ---------------------------------------------------------------- a new mode is one registry entry


def test_a_toy_mode_added_to_the_registry_alone_gets_prepare_plan_and_report_rows(
        kohya_dataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 22: adding a mode touches `kohya_1to2.modes` only. A mode no code knows of (one stage training the
    composites alone) gets --mode, prepare --dry-run, prepare, plan, and its evaluate/report rows."""
    from kohya_1to2 import modes
    from kohya_1to2.cli import main
    from kohya_1to2.evaluate.report import build_report
    from kohya_1to2.evaluate.rows import build_rows

    toy = modes.Mode("composites-only", "composites-only: one stage on the composites alone", {1: ("composites",)})
    monkeypatch.setitem(modes.MODES, toy.name, toy)
    src, out = kohya_dataset({"alice": 2, "bob": 2}), tmp_path / "run"
    argv = ["prepare", str(src), "--out", str(out), "--mode", toy.name, "--workers", "1"]

    assert main([*argv, "--dry-run"]) == 0
    dry = capsys.readouterr().out
    assert subset_names(dry) == ["composite"]
    assert main(argv) == 0
    said = capsys.readouterr().out
    assert toy.summary in said
    assert json_mode(out) == toy.name
    datasets = toml.loads((out / "stage1.dataset.toml").read_text(encoding="utf-8"))["datasets"]
    assert [Path(s["image_dir"]).name for d in datasets for s in d["subsets"]] == ["1_composite"]
    assert not (out / "stage2.train.toml").exists()

    assert main(["plan", str(out)]) == 0
    assert subset_names(capsys.readouterr().out) == ["composite"]

    rows = build_rows((1,), {}, [(1, out / "e1.safetensors")], 1, toy.name)
    assert [row.label for row in rows] == ["base model", "composites-only epoch 1 (final)"]
    assert subset_names(build_report(out).replace("&#x27;", "'")) == ["composite"]


def subset_names(text: str) -> list[str]:
    """The subset column of every stage table a plan prints (its rows: `name │ images │ ...`)."""
    names = []
    for line in text.splitlines():
        cells = [c.strip() for c in line.split("│")]
        if len(cells) == 4 and cells[1].isdigit():
            names.append(cells[0])
    return names


def json_mode(run_dir: Path) -> str:
    import json

    return str(json.loads((run_dir / "job.json").read_text(encoding="utf-8"))["training"]["mode"])


def test_an_unknown_mode_is_refused_naming_the_known_ones() -> None:
    with pytest.raises(ValueError, match="sequential, joint, replay"):
        TrainingSettings(mode="nope")
