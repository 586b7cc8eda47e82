"""Presets: every template loads, documents every key, and `seed` is the method's reference configuration."""

from __future__ import annotations

from pathlib import Path

import pytest
import toml

from kohya_1to2.configs.presets import PRESET_SECTION, available_presets, key_comments, load_preset
from kohya_1to2.errors import UsageError
from kohya_1to2.kohya import flatten_training_config


def test_shipped_presets_are_found() -> None:
    assert {"seed", "sdxl", "smoke", "illustrious", "noobai-vpred"} <= set(available_presets())


@pytest.mark.parametrize("name", ["seed", "sdxl", "smoke", "illustrious", "noobai-vpred"])
def test_every_key_has_a_comment(name: str) -> None:
    preset = load_preset(name)
    doc = preset.document()
    tables = [(PRESET_SECTION, doc[PRESET_SECTION]), ("preset.dataset", doc[PRESET_SECTION]["dataset"])]
    tables += [(section, table) for section, table in doc.items() if section != PRESET_SECTION]
    for section, table in tables:
        comments = key_comments(table)
        for key, value in table.items():
            if not isinstance(value, dict):
                assert comments.get(key), f"{name}: {section}.{key} needs a comment"


def test_seed_is_the_reference_configuration() -> None:
    preset = load_preset("seed")
    flat = flatten_training_config({k: v for k, v in toml.loads(preset.text).items() if k != PRESET_SECTION})
    expected = {
        "network_module": "lycoris.kohya", "network_args": ["conv_dim=0", "conv_alpha=16", "algo=loha"],
        "network_dim": 8, "network_alpha": 1.0, "unet_lr": 5e-4, "text_encoder_lr": 5e-4,
        "optimizer_type": "AdamW8bit", "max_grad_norm": 1.0, "lr_scheduler": "cosine", "lr_warmup_steps": 0,
        "clip_skip": 2, "max_token_length": 225, "mixed_precision": "fp16", "save_precision": "fp16",
        "xformers": True, "max_train_epochs": 40, "save_every_n_epochs": 1, "save_model_as": "safetensors",
        "sample_every_n_epochs": 1, "sample_sampler": "k_euler_a",
    }
    assert {k: flat[k] for k in expected} == expected
    assert preset.dataset["keep_tokens"] == 1 and preset.dataset["shuffle_caption"] is True
    assert preset.settings.stage2_batch_size == 2 and preset.settings.stage1_batch_size == 4
    assert "keep_tokens only acts when shuffling is on" in preset.text
    assert "train the same pixels per step" in preset.text and "fixed cost" in preset.text


def test_missing_preset_lists_the_available_ones() -> None:
    with pytest.raises(UsageError, match="preset 'nope' not found") as caught:
        load_preset("nope")
    assert "seed" in (caught.value.hint or "")


def test_bad_template_names_file_and_key(tmp_path: Path) -> None:
    bad = tmp_path / "mine.toml"
    bad.write_text(load_preset("seed").text.replace("stage2_batch_size = 2", "stage2_batch_size = 0"))
    with pytest.raises(UsageError, match=r"mine\.toml: preset\.stage2_batch_size"):
        load_preset(str(bad))


def test_template_path_can_be_given_directly(tmp_path: Path) -> None:
    mine = tmp_path / "mine.toml"
    mine.write_text(load_preset("seed").text.replace("network_dim = 8", "network_dim = 16"))
    assert "network_dim = 16" in load_preset(str(mine)).text


def test_command_line_choices_override_the_preset_in_one_place():
    from pathlib import Path

    from kohya_1to2.configs.presets import effective_settings, load_preset
    from kohya_1to2.models import Job, SourceSettings, TrainingSettings

    preset = load_preset("seed")
    job = Job(out=Path("run"), sources=SourceSettings(roots=[Path("src")]),
              training=TrainingSettings(resolution=768, stage1_batch_size=3, family="sd2"))
    settings = effective_settings(job, preset)
    assert (settings.resolution, settings.stage1_batch_size, settings.family) == (768, 3, "sd2")
    assert (settings.sample_width, settings.sample_height) == (768, 768), "samples follow --resolution"
    assert settings.stage2_batch_size == preset.settings.stage2_batch_size
    plain = effective_settings(Job(out=Path("run"), sources=SourceSettings(roots=[Path("src")])), preset)
    assert plain == preset.settings.model_copy(update={"family": preset.settings.family})
