"""evaluate/prompts.py: which prompts an evaluation asks, and the gen_img lines that ask them."""

from __future__ import annotations

import pytest

from kohya_1to2.configs.presets import load_preset
from kohya_1to2.errors import UsageError
from kohya_1to2.evaluate.prompts import (
    character_prompts,
    column_seeds,
    image_name,
    parse_user_prompts,
    prompt_line,
)
from kohya_1to2.models import CaptionRules

SETTINGS = load_preset("smoke").settings
TRIGGERS = [("alice", "alice"), ("bob", "bob (cat)"), ("carol", "carol")]


def test_each_character_alone_then_each_ordered_pair_on_the_landscape_canvas() -> None:
    prompts = character_prompts(TRIGGERS, SETTINGS, CaptionRules())
    singles = [p for p in prompts if p.kind == "single"]
    pairs = [p for p in prompts if p.kind == "pair"]
    assert [p.characters for p in singles] == [("alice",), ("bob",), ("carol",)]
    assert len(pairs) == 6 and {p.characters for p in pairs} == {
        (a, b) for a in ("alice", "bob", "carol") for b in ("alice", "bob", "carol") if a != b}
    pair = next(p for p in pairs if p.characters == ("alice", "bob"))
    assert pair.text == r"alice/bob \(cat\)"  # the caption's character group, escaped for the LPW parser
    assert pair.negative.startswith("COMPOSITE, ") and SETTINGS.sample_negative in pair.negative
    assert pair.width > pair.height and (singles[0].width, singles[0].height) == (128, 128)
    assert "COMPOSITE" not in singles[0].negative
    assert len({p.id for p in prompts}) == len(prompts)


def test_limits_keep_the_first_single_and_pair() -> None:
    prompts = character_prompts(TRIGGERS, SETTINGS, CaptionRules(), singles=1, pairs=1)
    assert [(p.kind, p.characters) for p in prompts] == [("single", ("alice",)), ("pair", ("alice", "bob"))]


def test_prompt_line_carries_seed_steps_and_file_name_last() -> None:
    prompt = character_prompts(TRIGGERS, SETTINGS, CaptionRules(), singles=0, pairs=1)[0]
    line = prompt_line(prompt, 1234, 2)
    parts = line.split(" --")
    assert parts[0] == prompt.text and f"n {prompt.negative}" in parts
    assert {"s 2", "d 1234", f"w {prompt.width}", f"h {prompt.height}"} <= set(parts)
    assert parts[-1] == f"f {image_name(prompt, 1234)}"  # gen_img's `f (.+)` takes the rest of the line


def test_user_prompt_file_keeps_its_options_but_not_seed_or_file_name() -> None:
    text = "# comment\n\na knight --n blurry --w 640 --h 384 --l 5 --d 99 --f x.png\nsecond prompt\n"
    first, second = parse_user_prompts(text, SETTINGS, "mine.txt")
    assert (first.kind, first.text, first.negative) == ("user", "a knight", "blurry")
    assert (first.width, first.height) == (640, 384)
    assert first.options == ("l 5",)
    line = prompt_line(first, 7, 3)
    assert "--d 7" in line and "--d 99" not in line and "x.png" not in line
    assert (second.width, second.height) == (SETTINGS.sample_width, SETTINGS.sample_height)
    assert first.id != second.id


def test_the_presets_guidance_scale_reaches_every_prompt_a_user_line_does_not_set() -> None:
    settings = load_preset("noobai-vpred").settings
    assert settings.sample_cfg_scale == 4.5
    assert all(p.options == ("l 4.5",) for p in character_prompts(TRIGGERS, settings, CaptionRules()))
    mine, plain = parse_user_prompts("a knight --l 7\nplain\n", settings, "mine.txt")
    assert (mine.options, plain.options) == (("l 7",), ("l 4.5",))
    assert " --l 4.5 " in prompt_line(plain, 1, 28)
    assert all(p.options == () for p in character_prompts(TRIGGERS, SETTINGS, CaptionRules()))  # smoke: default


@pytest.mark.parametrize("text", ["", "# only a comment\n", "--n only options\n", "x --w 10\n"])
def test_bad_user_prompt_files_are_one_line_errors(text: str) -> None:
    with pytest.raises(UsageError):
        parse_user_prompts(text, SETTINGS, "mine.txt")


def test_same_seeds_for_every_row() -> None:
    assert column_seeds(3) == [1000, 1001, 1002] == column_seeds(3)


def test_a_run_of_groups_evaluates_every_group_once_on_the_group_canvas() -> None:
    from kohya_1to2.configs.prompts import group_canvas

    triggers = [*TRIGGERS, ("dan", "dan")]
    prompts = character_prompts(triggers, SETTINGS, CaptionRules(), group_size=3)
    groups = [p for p in prompts if p.kind == "pair"]
    assert len(groups) == 4 and {frozenset(p.characters) for p in groups} == {
        frozenset(g) for g in ({"alice", "bob", "carol"}, {"alice", "bob", "dan"}, {"alice", "carol", "dan"},
                               {"bob", "carol", "dan"})}
    first = groups[0]
    assert first.text == r"alice/bob \(cat\)/carol" and first.id == "group_alice__bob__carol"
    assert first.negative.startswith("COMPOSITE, ")
    assert (first.width, first.height) == group_canvas(SETTINGS, 3) and first.width > character_prompts(
        triggers, SETTINGS, CaptionRules())[-1].width
    assert character_prompts(TRIGGERS, SETTINGS, CaptionRules(), group_size=2) == character_prompts(
        TRIGGERS, SETTINGS, CaptionRules())
