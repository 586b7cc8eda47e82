"""sample_prompts.txt: singles, ordered pairs with the composite negative, and text sd-scripts would misread."""

from __future__ import annotations

import re

import pytest

from kohya_1to2.configs.presets import PresetSettings, load_preset
from kohya_1to2.configs.prompts import (
    escape_attention,
    pair_canvas,
    pair_prompt,
    pair_rounds,
    parse_size,
    prompt_text_problem,
    prompts_per_sampling,
    rotate_prompt_text,
    sample_prompt_lines,
    sample_prompts_text,
)
from kohya_1to2.errors import DatasetError, UsageError
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
    assert all((p["w"], p["h"], p["s"]) == ("640", "384", "9") for p in parsed[:3])
    assert all((p["w"], p["h"]) == ("960", "384") for p in parsed[3:]), "pairs on a landscape canvas"
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


def test_attention_syntax_in_triggers_is_escaped_in_every_prompt() -> None:
    assert escape_attention("akari (genshin impact)") == r"akari \(genshin impact\)"
    assert escape_attention(r"a[1]:b\c") == r"a\[1\]\:b\\c"
    lines = sample_prompt_lines([("a", "akari (genshin impact)"), ("b", "bob")], SETTINGS,
                                CaptionRules(composite_tag="multi(view)"))
    parsed = [parse_line(line) for line in lines]
    assert parsed[0]["prompt"] == r"akari \(genshin impact\)"
    assert parsed[2]["prompt"] == r"akari \(genshin impact\)/bob"
    assert parsed[2]["n"].startswith(r"multi\(view\), ")


def test_pair_rounds_cover_every_ordered_pair_exactly_once() -> None:
    for count in (3, 4, 10):
        rounds = pair_rounds(count)
        flat = [pair for round_ in rounds for pair in round_]
        assert len(rounds) == count - 1 and all(len(r) == count for r in rounds)
        assert sorted(flat) == sorted((i, j) for i in range(count) for j in range(count) if i != j)


def test_ten_characters_sample_at_most_2n_per_epoch_and_every_pair_per_stage() -> None:
    triggers = [(f"c{i}", f"char{i}") for i in range(10)]
    text = sample_prompts_text(triggers, SETTINGS, CaptionRules())
    epochs = 40
    seen: set[str] = set()
    for epoch in range(1, epochs + 1):
        text = rotate_prompt_text(text, epoch)
        assert prompts_per_sampling(text) <= 20
        prompts = [parse_line(line)["prompt"] for line in text.splitlines() if line and not line.startswith("#")]
        seen |= {p for p in prompts if "/" in p}
    assert seen == {f"char{i}/char{j}" for i in range(10) for j in range(10) if i != j}
    assert len(sample_prompt_lines(triggers, SETTINGS, CaptionRules(), pairs="all")) == 10 + 90
    every = sample_prompts_text(triggers, SETTINGS, CaptionRules(), pairs="all")
    assert prompts_per_sampling(every) == 100 and rotate_prompt_text(every, 3) == every


def test_rotation_changes_only_the_active_round() -> None:
    triggers = [(f"c{i}", f"char{i}") for i in range(4)]
    first = sample_prompts_text(triggers, SETTINGS, CaptionRules())
    assert rotate_prompt_text(first, 1) == first and rotate_prompt_text(first, 4) == first
    second = rotate_prompt_text(first, 2)
    assert second != first and prompts_per_sampling(second) == 8
    assert "char0/char2" in second.split("\n#pair ", 1)[0] and "char0/char1" not in second.split("\n#pair ", 1)[0]


def test_pair_canvas_is_landscape_and_changeable() -> None:
    sd1 = SETTINGS.model_copy(update={"sample_width": 512, "sample_height": 512})
    sdxl = SETTINGS.model_copy(update={"sample_width": 1024, "sample_height": 1024, "family": "sdxl"})
    assert pair_canvas(sd1) == (768, 512) and pair_canvas(sdxl) == (1216, 832)
    assert pair_canvas(sd1, (1024, 512)) == (1024, 512)
    assert parse_size("896x512") == (896, 512)
    with pytest.raises(UsageError):
        parse_size("wide")


def test_rotation_follows_the_epoch_lines_of_a_running_stage_and_restores_the_file(tmp_path) -> None:
    from kohya_1to2.launch.prompt_rounds import rotating_sample_prompts

    path = tmp_path / "sample_prompts.txt"
    original = sample_prompts_text([(f"c{i}", f"char{i}") for i in range(4)], SETTINGS, CaptionRules())
    path.write_text(original, encoding="utf-8")
    seen: list[str] = []
    with rotating_sample_prompts(str(path), lambda line: seen.append(line) or None) as check:
        assert check is not None
        assert check("steps:  10%|#   | 1/10") is None
        assert check("epoch 2/40") is None
        assert path.read_text(encoding="utf-8") == rotate_prompt_text(original, 2) != original
        check("epoch 3/40")
        assert path.read_text(encoding="utf-8") == rotate_prompt_text(original, 3)
    assert path.read_text(encoding="utf-8") == original, "restored: prepare must not see a hand edit"
    assert seen == ["steps:  10%|#   | 1/10", "epoch 2/40", "epoch 3/40"], "the wrapped check sees every line"
    two = sample_prompts_text([("a", "alice"), ("b", "bob")], SETTINGS, CaptionRules())
    path.write_text(two, encoding="utf-8")
    with rotating_sample_prompts(str(path), None) as check:
        assert check is None, "nothing to rotate with two characters"


# ---------------------------------------------------------------- groups of three or four (--group-size)


@pytest.mark.parametrize(("count", "k"), [(4, 3), (5, 3), (7, 3), (5, 4), (8, 4)])
def test_group_rounds_seat_every_character_once_in_every_position(count: int, k: int) -> None:
    from kohya_1to2.configs.prompts import group_rounds

    rounds = group_rounds(count, k)
    assert rounds
    for round_ in rounds:
        assert len(round_) == count and all(len(set(group)) == k for group in round_)
        for position in range(k):
            assert sorted(group[position] for group in round_) == list(range(count))
    keys = [frozenset(group) for round_ in rounds for group in round_]
    assert len(keys) == len(set(keys)), "no group in two rounds"
    assert group_rounds(count, 2) == [list(r) for r in pair_rounds(count)]


def test_a_run_of_groups_samples_group_prompts_on_a_wider_canvas() -> None:
    triggers = [(name, name) for name in ("alice", "bob", "carol", "dan", "eve")]
    text = sample_prompts_text(triggers, SETTINGS, CaptionRules(), group_size=3)
    lines = [parse_line(line) for line in text.splitlines() if line and not line.startswith("#")]
    groups = [line for line in lines if "/" in line["prompt"]]
    assert len(lines) == 5 + 5 and len(groups) == 5
    pair_width, height = pair_canvas(SETTINGS)
    for line in groups:
        assert len(line["prompt"].split("/")) == 3 and "COMPOSITE" not in line["prompt"]
        assert line["n"].startswith("COMPOSITE, ")
        assert (int(line["w"]), int(line["h"])) == (pair_width * 3 // 2 // 8 * 8, height)
    assert len({line["d"] for line in groups}) == 5
    seen: set[frozenset[str]] = set()
    for epoch in range(1, 5):
        rotated = rotate_prompt_text(text, epoch)
        seen |= {frozenset(parse_line(line)["prompt"].split("/")) for line in rotated.splitlines()
                 if line and not line.startswith("#") and "/" in line}
    assert len(seen) == 10, "the rounds together hold every group of 3 of 5"


def test_group_prompts_leave_a_pair_runs_file_as_it_was() -> None:
    triggers = [(f"c{i}", f"char{i}") for i in range(4)]
    for pairs in ("rotate", "all"):
        assert sample_prompts_text(triggers, SETTINGS, CaptionRules(), pairs=pairs, group_size=2) == \
            sample_prompts_text(triggers, SETTINGS, CaptionRules(), pairs=pairs)
    every = sample_prompts_text(triggers, SETTINGS, CaptionRules(), pairs="all", group_size=4)
    assert [parse_line(line)["prompt"] for line in every.splitlines() if "/" in line and not line.startswith("#")] \
        == ["char0/char1/char2/char3"]
