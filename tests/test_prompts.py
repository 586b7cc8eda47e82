"""sample_prompts.txt: singles, ordered pairs with the composite negative, and text sd-scripts would misread."""

from __future__ import annotations

import re

import pytest

from kohya_1to2.configs.presets import PresetSettings, load_preset
from kohya_1to2.configs.prompts import pair_prompt, prompt_text_problem, sample_prompt_lines
from kohya_1to2.errors import DatasetError
from kohya_1to2.models import CaptionRules

SETTINGS = PresetSettings(family="sd1", resolution=512, stage1_batch_size=4, stage2_batch_size=2,
                          stage2_max_bucket_reso=1024, sample_width=640, sample_height=384, sample_steps=9,
                          sample_negative="lowres")


def parse_line(line: str) -> dict[str, str]:
    """sd-scripts' own split (train_util.line_to_prompt_dict): prompt, then ' --' separated options."""
    prompt, *options = line.split(" --")
    return {"prompt": prompt, **{o.split(" ", 1)[0]: o.split(" ", 1)[1] for o in options}}


def test_each_character_alone_then_each_ordered_pair() -> None:
    lines = sample_prompt_lines([("a", "alice"), ("b", "bob"), ("c", "cid")], SETTINGS, CaptionRules())
    parsed = [parse_line(line) for line in lines]
    assert [p["prompt"] for p in parsed[:3]] == ["alice", "bob", "cid"]
    pairs = [p["prompt"] for p in parsed[3:]]
    assert sorted(pairs) == sorted(["alice/bob", "bob/alice", "alice/cid", "cid/alice", "bob/cid", "cid/bob"])
    assert all(p["n"] == "COMPOSITE, lowres" for p in parsed[3:])
    assert all(p["n"] == "lowres" for p in parsed[:3])
    assert all((p["w"], p["h"], p["s"]) == ("640", "384", "9") for p in parsed)
    assert len({p["d"] for p in parsed}) == len(parsed), "each prompt gets its own fixed seed"


def test_pair_prompt_follows_the_caption_template_without_the_composite_tag() -> None:
    assert pair_prompt("al", "bo", CaptionRules()) == "al/bo"
    custom = CaptionRules(template="{tag} {left} and {right}, {left_tags}, {right_tags}", composite_tag="X")
    assert pair_prompt("al", "bo", custom) == "al and bo"


@pytest.mark.parametrize("trigger", ["ali --n x", "#alice", "  #alice", "n alice", "w 512 girl", "a\nb", ""])
def test_misreadable_triggers_are_rejected_with_the_character(trigger: str) -> None:
    assert prompt_text_problem(trigger)
    with pytest.raises(DatasetError, match=re.escape("character 'zed'")):
        sample_prompt_lines([("zed", trigger), ("b", "bob")], SETTINGS, CaptionRules())


@pytest.mark.parametrize("trigger", ["alice", "alice-chan", "a--b", "naomi", "wanda 2", "c#"])
def test_ordinary_triggers_pass(trigger: str) -> None:
    assert prompt_text_problem(trigger) is None


def test_preset_sample_size_is_used() -> None:
    smoke = load_preset("smoke").settings
    line = sample_prompt_lines([("a", "alice"), ("b", "bob")], smoke, CaptionRules())[0]
    assert parse_line(line)["w"] == str(smoke.sample_width) and parse_line(line)["s"] == str(smoke.sample_steps)


def test_prompt_cap_alternates_single_and_pair_prompts():
    capped = SETTINGS.model_copy(update={"sample_max_prompts": 3})
    lines = sample_prompt_lines([("a", "alice"), ("b", "bob"), ("c", "cid")], capped, CaptionRules())
    assert [parse_line(line)["prompt"] for line in lines] == ["alice", "alice/bob", "bob"]
    assert len(sample_prompt_lines([("a", "alice"), ("b", "bob")], SETTINGS, CaptionRules())) == 4
