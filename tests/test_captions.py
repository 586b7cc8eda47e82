"""Composite captions: the literal template, the opt-in rules, and keep_tokens = 1 keeping the group."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from kohya_1to2.dataset.captions import composite_caption, normalise_caption_text, split_tags
from kohya_1to2.models import CaptionRules, Character, SourceImage


def character(name: str, tags: tuple[str, ...]) -> tuple[Character, SourceImage]:
    image = SourceImage(path=Path(f"/d/1_{name}/a.png"), character=name, tags=tags)
    return Character(name=name, trigger=name, repeats=1, folder=Path(f"/d/1_{name}"), images=(image,)), image


def caption(left_tags, right_tags, **rules) -> str:
    left, left_image = character("alice", ("alice", *left_tags))
    right, right_image = character("bob", ("bob", *right_tags))
    return composite_caption(left, right, left_image, right_image, CaptionRules(**rules))


def sd_scripts_keep_tokens(caption_text: str, keep_tokens: int, rng: random.Random) -> str:
    """sd-scripts' shuffle with keep_tokens (train_util.BaseDataset.process_caption): split on ",",
    strip, keep the first N tags fixed, shuffle the rest, join with ", "."""
    tokens = [t.strip() for t in caption_text.strip().split(",")]
    fixed, flex = tokens[:keep_tokens], tokens[keep_tokens:]
    rng.shuffle(flex)
    return ", ".join(fixed + flex)


def test_default_template_is_the_method_literally():
    text = caption(["1girl", "red hair", "solo"], ["1girl", "hat", "solo"])
    assert text == "alice/bob/COMPOSITE, 1girl, red hair, solo, 1girl, hat, solo"


def test_keep_tokens_one_keeps_the_whole_character_group_first():
    text = caption(["1girl", "red hair", "smile"], ["1boy", "hat"])
    for seed in range(20):
        assert sd_scripts_keep_tokens(text, 1, random.Random(seed)).split(", ")[0] == "alice/bob/COMPOSITE"


def test_empty_tag_lists_leave_no_dangling_separators():
    assert caption([], []) == "alice/bob/COMPOSITE"
    assert caption([], ["hat"]) == "alice/bob/COMPOSITE, hat"


def test_custom_composite_tag():
    assert caption(["x"], ["y"], composite_tag="duo").startswith("alice/bob/duo, ")


def test_drop_solo_rule():
    assert caption(["1girl", "solo"], ["solo", "hat"], drop_solo=True) == "alice/bob/COMPOSITE, 1girl, hat"


@pytest.mark.parametrize(
    ("left", "right", "expected"),
    [
        (["1girl", "smile"], ["1girl", "hat"], "alice/bob/COMPOSITE, 2girls, smile, hat"),
        (["1girl"], ["1boy"], "alice/bob/COMPOSITE, 1girl, 1boy"),
        (["2girls"], ["1girl", "1boy"], "alice/bob/COMPOSITE, 3girls, 1boy"),
        (["5girls"], ["3girls"], "alice/bob/COMPOSITE, 6+girls"),
    ],
)
def test_merge_count_tags_rule(left, right, expected):
    assert caption(left, right, merge_count_tags=True) == expected


def test_dedupe_shared_rule():
    assert caption(["1girl", "smile"], ["smile", "hat"], dedupe_shared=True) == "alice/bob/COMPOSITE, 1girl, smile, hat"


def test_rules_are_off_by_default():
    assert caption(["1girl", "solo", "smile"], ["1girl", "solo", "smile"]).count("solo") == 2


def test_trigger_is_not_repeated_in_the_tags():
    assert caption(["alice_extra"], []) == "alice/bob/COMPOSITE, alice_extra"


def test_split_tags_normalises_whitespace_bom_and_crlf():
    assert split_tags("\ufeff alice ,  1girl,,  red hair \r\nsecond line") == ("alice", "1girl", "red hair")
    assert split_tags("a;b ; c", ";") == ("a", "b", "c")
    assert normalise_caption_text("x\r\ny") == "x"


@pytest.mark.parametrize("template", ["{left_tags}, {left}/{right}", "{left}/{right} {left_tags}, x", "{bogus}"])
def test_templates_that_would_break_keep_tokens_are_rejected(template):
    with pytest.raises(ValueError):
        CaptionRules(template=template)


def test_triggers_that_break_the_character_group_are_usage_errors() -> None:
    from kohya_1to2.dataset.captions import validate_triggers
    from kohya_1to2.errors import UsageError

    for bad in ("car, ol", "ali/ce"):
        with pytest.raises(UsageError, match="splits the caption's character group") as info:
            validate_triggers([character(bad, ())[0]], CaptionRules())
        assert info.value.exit_code == 2
    with pytest.raises(UsageError, match="';'"):
        validate_triggers([character("a;b", ())[0]], CaptionRules(), separator=";")
    with pytest.raises(UsageError, match="'&'"):
        validate_triggers([character("a&b", ())[0]], CaptionRules(template="{left}&{right}&{tag}, {left_tags}"))
    validate_triggers([character("akari (genshin impact)", ())[0]], CaptionRules())


def test_stage1_caption_prefix_keeps_the_trigger_first_under_keep_tokens() -> None:
    from kohya_1to2.dataset.captions import stage1_caption_prefix

    prefix = stage1_caption_prefix("alice")
    rng = random.Random(0)
    for _ in range(20):  # process_caption joins prefix + " " + caption, then splits on the separator
        assert sd_scripts_keep_tokens(prefix + " " + "1girl, smile, hat", 1, rng).startswith("alice, ")


def test_max_tags_per_side_caps_each_side() -> None:
    assert caption(("1girl", "a", "b", "c"), ("1boy", "d"), max_tags_per_side=2) == (
        "alice/bob/COMPOSITE, 1girl, a, 1boy, d")


# ---------------------------------------------------------------- the caption template object (issue 22)

PLUS = "{left}+{right}+{tag}, {left_tags}, {right_tags}"


@pytest.mark.parametrize("template", [None, PLUS, "{tag} {left}+{right}, {left_tags}, {right_tags}"])
def test_the_template_reads_back_the_characters_of_the_captions_it_writes(template: str | None) -> None:
    from kohya_1to2.dataset.captions import CaptionTemplate

    rules = CaptionRules() if template is None else CaptionRules(template=template)
    written = caption(["1girl", "hat"], ["1boy"], **({} if template is None else {"template": template}))
    reader = CaptionTemplate(rules)
    assert written.split(",", 1)[0] == reader.group(("alice", "bob"))
    assert reader.characters_in(written) == ("alice", "bob")
    assert reader.characters_in("carol, 1girl") == ()


def test_the_template_gives_the_group_prompt_and_the_composite_negative() -> None:
    from kohya_1to2.dataset.captions import CaptionTemplate

    plus = CaptionTemplate(CaptionRules(template=PLUS, composite_tag="split:view"))
    assert plus.group(("alice", "bob")) == "alice+bob+split:view"
    assert plus.group_prompt(("alice", "bob")) == "alice+bob"
    assert CaptionTemplate(CaptionRules()).group_prompt(("alice", "bob")) == "alice/bob"
    assert plus.composite_negative("lowres") == "split\\:view, lowres", "the tag literal, the preset's own as is"
    assert plus.composite_negative("") == "split\\:view"
    assert "+" in plus.separators
    with pytest.raises(ValueError, match="two characters, not 3"):
        plus.group(("alice", "bob", "carol"))


# ---------------------------------------------------------------- groups of three or four (--group-size)

GROUP = [("alice", ("1girl", "solo", "red hair")), ("bob", ("1boy", "solo")), ("carol", ("1girl", "hat")),
         ("dan", ("1other",))]


def group_of(k: int, **rules: object) -> str:
    from kohya_1to2.dataset.captions import group_caption

    members = [character(name, (name, *tags)) for name, tags in GROUP[:k]]
    return group_caption([c for c, _ in members], [i for _, i in members], CaptionRules(**rules))


@pytest.mark.parametrize(("k", "expected"), [
    (2, "alice/bob/COMPOSITE, 1girl, solo, red hair, 1boy, solo"),
    (3, "alice/bob/carol/COMPOSITE, 1girl, solo, red hair, 1boy, solo, 1girl, hat"),
    (4, "alice/bob/carol/dan/COMPOSITE, 1girl, solo, red hair, 1boy, solo, 1girl, hat, 1other"),
])
def test_a_group_caption_names_every_member_in_the_group_then_their_tags(k: int, expected: str) -> None:
    text = group_of(k)
    assert text == expected
    for seed in range(10):  # keep_tokens = 1 keeps the whole group first
        assert sd_scripts_keep_tokens(text, 1, random.Random(seed)).split(", ")[0] == expected.split(", ")[0]


def test_a_pair_caption_is_the_same_through_either_function() -> None:
    assert group_of(2) == caption(["1girl", "solo", "red hair"], ["1boy", "solo"])


def test_the_tag_rules_apply_over_the_whole_group() -> None:
    merged = group_of(3, merge_count_tags=True, drop_solo=True)
    assert merged == "alice/bob/carol/COMPOSITE, 2girls, red hair, 1boy, hat"
    assert group_of(3, dedupe_shared=True) == "alice/bob/carol/COMPOSITE, 1girl, solo, red hair, 1boy, hat"
    assert group_of(3, max_tags_per_side=1) == "alice/bob/carol/COMPOSITE, 1girl, 1boy, 1girl"


@pytest.mark.parametrize("template", [None, PLUS, "{tag} {left}+{right}, {left_tags}, {right_tags}",
                                      "{left} & {right} ({tag}), {left_tags}; {right_tags}"])
@pytest.mark.parametrize("k", [2, 3, 4])
def test_group_captions_read_back_their_characters(template: str | None, k: int) -> None:
    from kohya_1to2.dataset.captions import CaptionTemplate

    rules = {} if template is None else {"template": template}
    written = group_of(k, **rules)
    reader = CaptionTemplate(CaptionRules(**rules), k)
    names = tuple(name for name, _ in GROUP[:k])
    assert reader.characters_in(written) == names
    assert written.split(",", 1)[0] == reader.group(names)
    assert CaptionTemplate(CaptionRules(**rules), 2 if k > 2 else 3).characters_in(written) == (), "another size"
    prompt = reader.group_prompt(names)
    assert all(name in prompt for name in names) and "COMPOSITE" not in prompt


def test_group_prompts_and_the_composite_negative_of_a_group() -> None:
    from kohya_1to2.dataset.captions import CaptionTemplate

    three = CaptionTemplate(CaptionRules(), 3)
    assert three.group(("alice", "bob", "carol")) == "alice/bob/carol/COMPOSITE"
    assert three.group_prompt(("alice", "bob", "carol")) == "alice/bob/carol"
    assert three.composite_negative("lowres") == "COMPOSITE, lowres"
    with pytest.raises(ValueError, match="names three characters, not 2"):
        three.group(("alice", "bob"))


@pytest.mark.parametrize(("template", "problem"), [
    ("{left} {right}/{tag}, {left_tags}, {right_tags}", "visible character"),
    ("{left}/{tag}/{right}, {left_tags}, {right_tags}", "must follow {left}"),
    ("{left}/{right}/{tag}, {left_tags}", "once each"),
])
def test_a_template_that_cannot_name_a_group_is_refused_for_groups_only(template: str, problem: str) -> None:
    from pydantic import ValidationError

    from kohya_1to2.models import CompositeSettings

    CompositeSettings(captions=CaptionRules(template=template))  # pairs: as before
    with pytest.raises(ValidationError, match=problem):
        CompositeSettings(group_size=3, captions=CaptionRules(template=template))
