"""Rendering of both stages' TOMLs: goldens of the seed preset, stage differences, toml==0.10.2 round trips."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import toml
import tomlkit
from hypothesis import given, settings
from hypothesis import strategies as st

from kohya_1to2.configs.generate import render_run_files
from kohya_1to2.configs.presets import load_preset
from kohya_1to2.configs.render import STAGE_SPECIFIC_KEYS, fill_placeholder, training_document
from kohya_1to2.errors import UsageError
from kohya_1to2.kohya import flatten_training_config
from kohya_1to2.models import Character, Job, SourceImage, SourceSettings, TrainingSettings

GOLDEN = Path(__file__).parent / "golden" / "configs"
RUN = Path("/runs/example")


def characters(root: Path, names: tuple[str, ...] = ("alice", "bob"), images: int = 3, repeats: int = 2,
               ) -> list[Character]:
    out = []
    for name in names:
        folder = root / f"{repeats}_{name}"
        imgs = tuple(SourceImage(path=folder / f"{name}_{i}.png", character=name, tags=(name, "1girl"))
                     for i in range(images))
        out.append(Character(name=name, trigger=name, repeats=repeats, folder=folder, images=imgs))
    return out


def job(run: Path = RUN, **training: object) -> Job:
    training.setdefault("base_model", "/models/base.safetensors")
    return Job(out=run, sources=SourceSettings(roots=[Path("/data/src")]),
               training=TrainingSettings(**training))  # type: ignore[arg-type]


def render(j: Job, chars: list[Character] | None = None, run: Path = RUN) -> dict[str, str]:
    return render_run_files(j, chars if chars is not None else characters(Path("/data/src")),
                            composite_dir=run / "composites" / "1_composite", composite_repeats=1,
                            composite_count=6, run_dir=run)


@pytest.mark.parametrize("name", ["stage1.dataset.toml", "stage1.train.toml", "stage2.dataset.toml",
                                  "stage2.train.toml", "sample_prompts.txt"])
def test_seed_preset_matches_golden(name: str) -> None:
    text = render(job())[name]
    golden = GOLDEN / f"seed.{name}"
    if os.environ.get("UPDATE_GOLDEN") == "1":
        golden.write_text(text, encoding="utf-8")
    assert text == golden.read_text(encoding="utf-8"), f"regenerate with UPDATE_GOLDEN=1 if intended: {golden}"


@pytest.mark.parametrize("preset", ["illustrious", "noobai-vpred"])
@pytest.mark.parametrize("name", ["stage1.dataset.toml", "stage1.train.toml", "stage2.train.toml",
                                  "sample_prompts.txt"])
def test_sdxl_anime_presets_match_their_goldens(preset: str, name: str) -> None:
    text = render(job(preset=preset))[name]
    golden = GOLDEN / f"{preset}.{name}"
    if os.environ.get("UPDATE_GOLDEN") == "1":
        golden.write_text(text, encoding="utf-8")
    assert text == golden.read_text(encoding="utf-8"), f"regenerate with UPDATE_GOLDEN=1 if intended: {golden}"


@pytest.mark.parametrize(("preset", "vpred"), [("illustrious", False), ("noobai-vpred", True)])
def test_the_prediction_type_follows_the_preset_in_both_stages(preset: str, vpred: bool) -> None:
    files = render(job(preset=preset))
    for stage in (1, 2):
        flat = flatten_training_config(toml.loads(files[f"stage{stage}.train.toml"]))
        assert bool(flat.get("v_parameterization")) is vpred
        assert bool(flat.get("zero_terminal_snr")) is vpred
        # v-pred samples with plain Euler (the model card's advice); eps keeps the reference's k_euler_a
        assert flat["sample_sampler"] == ("euler" if vpred else "k_euler_a")
    scale = "4.5" if vpred else "6"
    assert all(f" --l {scale} " in line for line in files["sample_prompts.txt"].splitlines()
               if line and not line.startswith("#"))


def test_v_parameterization_flag_turns_v_pred_on_for_an_eps_preset() -> None:
    flat = flatten_training_config(toml.loads(render(job(preset="illustrious", v_parameterization=True))[
        "stage1.train.toml"]))
    assert flat["v_parameterization"] is True


def test_stages_differ_only_in_documented_keys() -> None:
    files = render(job())
    one = flatten_training_config(toml.loads(files["stage1.train.toml"]))
    two = flatten_training_config(toml.loads(files["stage2.train.toml"]))
    differing = {k for k in one.keys() | two.keys() if one.get(k) != two.get(k)}
    assert differing == set(STAGE_SPECIFIC_KEYS)
    assert two["train_batch_size"] == 2 and one["train_batch_size"] == 4
    assert two["network_weights"] == str(Path(one["output_dir"]) / f"{one['output_name']}.safetensors")
    assert one["output_name"] == "1to2_stage1" and two["output_name"] == "1to2"


def test_seed_values_reach_sd_scripts_types() -> None:
    files = render(job())
    flat = flatten_training_config(toml.loads(files["stage1.train.toml"]))
    assert flat["network_args"] == ["conv_dim=0", "conv_alpha=16", "algo=loha"]
    assert flat["clip_skip"] == 2 and flat["max_token_length"] == 225
    assert isinstance(flat["network_alpha"], float) and isinstance(flat["learning_rate"], float)
    assert "resolution" not in flat, "resolution belongs in the dataset TOML"
    dataset = toml.loads(files["stage1.dataset.toml"])
    assert dataset["general"]["resolution"] == 512
    assert dataset["general"]["keep_tokens"] == 1 and dataset["general"]["shuffle_caption"] is True
    assert dataset["general"]["caption_extension"] == ".txt"
    subsets = dataset["datasets"][0]["subsets"]
    assert [s["num_repeats"] for s in subsets] == [2, 2]
    assert [Path(s["image_dir"]).name for s in subsets] == ["2_alice", "2_bob"]


def test_job_choices_override_the_preset() -> None:
    files = render(job(epochs=7, resolution=768, stage1_batch_size=3, output_name="duo", sample=False,
                       family="sd2", v_parameterization=True))
    one = flatten_training_config(toml.loads(files["stage1.train.toml"]))
    two = flatten_training_config(toml.loads(files["stage2.train.toml"]))
    assert one["max_train_epochs"] == 7 and one["train_batch_size"] == 3 and two["train_batch_size"] == 2
    assert one["v2"] is True and one["v_parameterization"] is True
    assert two["network_weights"].endswith("duo_stage1.safetensors")
    assert not any(k.startswith("sample_") for k in one), "sampling off removes the sampling keys"
    assert toml.loads(files["stage1.dataset.toml"])["general"]["resolution"] == 768
    assert "--w 768 --h 768" in files["sample_prompts.txt"], "samples follow the stage's resolution"


def test_sdxl_stage2_buckets_fit_composites() -> None:
    files = render(job(preset="sdxl"))
    general = toml.loads(files["stage2.dataset.toml"])["general"]
    assert general["resolution"] == 1056 and general["max_bucket_reso"] == 1536  # 1472x736 and 1280x864 buckets
    flat = flatten_training_config(toml.loads(files["stage1.train.toml"]))
    assert "clip_skip" not in flat and "v2" not in flat
    assert "--w 1024 --h 1024" in files["sample_prompts.txt"]


def test_family_that_does_not_fit_the_preset_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="--family sdxl does not fit preset 'seed'") as caught:
        render(job(family="sdxl"))
    assert caught.value.hint == "use --preset sdxl"


def test_smoke_preset_runs_two_steps_on_cpu_with_offline_tokenizer() -> None:
    files = render(job(preset="smoke", base_model="/models/tiny sd"))
    flat = flatten_training_config(toml.loads(files["stage1.train.toml"]))
    assert flat["max_train_steps"] == 2 and "max_train_epochs" not in flat
    assert flat["mixed_precision"] == "no" and flat["sdpa"] is True and "xformers" not in flat
    assert flat["tokenizer_cache_dir"] == str(Path("/models/tiny sd") / "tokenizer_cache")
    assert "--w 128 --h 128 --s 2" in files["sample_prompts.txt"]


def test_smoke_without_base_model_leaves_derived_paths_out() -> None:
    flat = flatten_training_config(toml.loads(render(job(preset="smoke", base_model=None))["stage1.train.toml"]))
    assert "tokenizer_cache_dir" not in flat and "pretrained_model_name_or_path" not in flat


def test_every_rendered_key_has_a_comment() -> None:
    doc = training_document(job(), load_preset("seed"), 2, RUN)
    for section, table in doc.items():
        body = table.value.body
        for index, (key, _) in enumerate(body):
            if key is not None:
                previous = body[index - 1][1]
                assert isinstance(previous, tomlkit.items.Comment), f"{section}.{key} has no comment"


def test_unknown_placeholder_names_the_template_key() -> None:
    with pytest.raises(UsageError, match=r"training\.x.*\{nope\}"):
        fill_placeholder("{nope}", {"base_model": ""}, "training.x")


_path_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="/\x00"), min_size=1, max_size=12
)


@settings(max_examples=25, deadline=None)
@given(parts=st.lists(_path_text, min_size=1, max_size=3), base=st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=30))
def test_any_path_round_trips_through_toml_0_10_2(parts: list[str], base: str) -> None:
    """Spaces, quotes, unicode and Windows backslashes are escaped so sd-scripts' parser gets them back."""
    run = Path("/runs", *parts)
    files = render(job(run=run, base_model=base + "\\w\"'é"), characters(run / "src" / "a b\\c"), run=run)
    one = flatten_training_config(toml.loads(files["stage1.train.toml"]))
    assert one["pretrained_model_name_or_path"] == base + "\\w\"'é"
    assert one["output_dir"] == str(run / "output" / "stage1")
    dataset = toml.loads(files["stage1.dataset.toml"])
    assert dataset["datasets"][0]["subsets"][0]["image_dir"] == str(run / "src" / "a b\\c" / "2_alice")


def test_caption_prefix_and_separator_reach_the_stage1_dataset_toml() -> None:
    chars = characters(Path("/data/src"))
    chars[0] = chars[0].model_copy(update={"caption_prefix": "alice;"})
    semi = Job(out=RUN, sources=SourceSettings(roots=[Path("/data/src")], caption_separator=";"),
               training=TrainingSettings(base_model="/models/base.safetensors"))
    files = render(semi, chars)
    stage1 = toml.loads(files["stage1.dataset.toml"])
    assert stage1["general"]["caption_separator"] == ";"
    assert [s.get("caption_prefix") for s in stage1["datasets"][0]["subsets"]] == ["alice;", None]
    assert "caption_separator" not in toml.loads(files["stage2.dataset.toml"])["general"], \
        "composite captions are comma-joined"
    assert "caption_separator" not in toml.loads(render(job())["stage1.dataset.toml"])["general"]


@pytest.mark.parametrize("preset", ["seed", "sdxl", "smoke", "illustrious", "noobai-vpred"])
def test_every_preset_saves_state_logs_to_tensorboard_per_stage_and_sets_loader_workers(preset: str) -> None:
    files = render(job(preset=preset))
    for stage in (1, 2):
        flat = flatten_training_config(toml.loads(files[f"stage{stage}.train.toml"]))
        assert flat["save_state"] is True and flat["save_last_n_epochs_state"] == 2  # launch --resume needs it
        assert flat["log_with"] == "tensorboard"
        assert Path(flat["logging_dir"]) == RUN / "logs" / "tensorboard" / f"stage{stage}"
        # the CPU smoke preset loads in the trainer itself (its comment says why); the GPU presets keep the reference's
        workers = (0, False) if preset == "smoke" else (8, True)
        assert (flat["max_data_loader_n_workers"], flat["persistent_data_loader_workers"]) == workers
