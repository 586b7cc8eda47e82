"""Caption parsing and the composite caption (pure)."""

from __future__ import annotations

import re
import string
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from kohya_1to2.errors import UsageError
from kohya_1to2.kohya import escape_attention, first_caption_line
from kohya_1to2.models import CaptionRules, Character, SourceImage, group_joins, group_separators, name_problem

normalise_caption_text = first_caption_line
"""Strip a BOM, unify line endings and keep the first line, as sd-scripts reads it."""


def split_tags(text: str, separator: str = ",") -> tuple[str, ...]:
    """Tags of a caption: split on the separator, whitespace trimmed, empty tags dropped."""
    first_line = normalise_caption_text(text)
    return tuple(tag for tag in (part.strip() for part in first_line.split(separator)) if tag)


_COUNT_TAG = re.compile(r"^(\d+)(\+?)(girl|boy|other)s?$")
_COUNT_CAP = 6  # danbooru stops counting at "6+girls"


def _count_tag(kind: str, count: int) -> str:
    if count >= _COUNT_CAP:
        return f"{_COUNT_CAP}+{kind}s"
    return f"1{kind}" if count == 1 else f"{count}{kind}s"


def _merge_count_tags(*members: list[str]) -> list[list[str]]:
    """`1girl` + `1girl` -> `2girls` (at the first count tag's place); other tags untouched."""
    totals: dict[str, int] = {}
    for tag in (tag for tags in members for tag in tags):
        if match := _COUNT_TAG.match(tag):
            totals[match.group(3)] = totals.get(match.group(3), 0) + int(match.group(1))
    placed: set[str] = set()

    def merged(tags: list[str]) -> list[str]:
        out: list[str] = []
        for tag in tags:
            match = _COUNT_TAG.match(tag)
            if not match:
                out.append(tag)
            elif (kind := match.group(3)) not in placed:
                placed.add(kind)
                out.append(_count_tag(kind, totals[kind]))
        return out

    return [merged(tags) for tags in members]


def validate_triggers(characters: Iterable[Character], rules: CaptionRules, separator: str = ",") -> None:
    """Refuse (exit 2) a trigger that would split the composite caption's `Left/Right/COMPOSITE` group or
    the caption itself: no `,`, no `/`, none of the template's group separators, not the caption separator."""
    forbidden = CaptionTemplate(rules).separators | {separator.strip()}
    for character in characters:
        if problem := name_problem(character.trigger, forbidden):
            raise UsageError(
                f"character {character.name!r}: trigger {character.trigger!r} {problem}",
                hint="rename the folder (with --trigger-from folder) or the first caption tag",
            )


def stage1_caption_prefix(trigger: str, separator: str = ",") -> str:
    """sd-scripts prepends `caption_prefix + " "` before splitting on the separator (process_caption), so the
    prefix ends with the separator: the trigger becomes the first tag, which keep_tokens = 1 keeps in place."""
    return f"{trigger}{separator.strip()}"


def descriptive_tags(image: SourceImage, trigger: str) -> list[str]:
    """An image's descriptive tags: its caption tags without the character's trigger."""
    return [tag for tag in image.tags if tag != trigger]


def composite_caption(
    left: Character, right: Character, left_image: SourceImage, right_image: SourceImage, rules: CaptionRules
) -> str:
    """`CharLeft/CharRight/COMPOSITE, TagsLeft, TagsRight` by default; the character group stays the first
    comma-separated token so sd-scripts' `keep_tokens = 1` keeps all of it in place."""
    return group_caption((left, right), (left_image, right_image), rules)


def group_caption(characters: Sequence[Character], images: Sequence[SourceImage], rules: CaptionRules) -> str:
    """The caption of a composite of k characters (left to right): `A/B/C/COMPOSITE, tagsA, tagsB, tagsC` by
    default; the rules apply per member (drop_solo, max_tags_per_side), across all (merge_count_tags), and to
    a tag an earlier member already has (dedupe_shared)."""
    tags = [descriptive_tags(image, character.trigger) for character, image in zip(characters, images, strict=True)]
    if rules.drop_solo:
        tags = [[t for t in member if t != "solo"] for member in tags]
    if rules.merge_count_tags:
        tags = _merge_count_tags(*tags)
    if rules.dedupe_shared:
        seen: set[str] = set()
        deduped = []
        for member in tags:
            deduped.append([t for t in member if t not in seen])
            seen.update(member)
        tags = deduped
    if rules.max_tags_per_side is not None:
        tags = [member[: rules.max_tags_per_side] for member in tags]
    template = CaptionTemplate(rules, len(characters))
    return template.caption([c.trigger for c in characters], tags)


_TAG_MARK = "\x00"
"""Stands for the composite tag while it is cut out of a group (a caption can never hold it)."""


_COUNT_WORDS = {2: "two", 3: "three", 4: "four"}


@dataclass(frozen=True)
class CaptionTemplate:
    """The one reader of `CaptionRules.template` (`{left}/{right}/{tag}, {left_tags}, {right_tags}` by default):
    the composites' captions, the group token that `keep_tokens = 1` keeps, the group as a prompt (the sample and
    evaluate group prompts), the composite-negative text, and the characters named in a written caption (the
    report). A group is `group_size` triggers in order: `{left}` names the first, `{right}` the last, and those
    between are joined in with the text between the two (`A/B/C/COMPOSITE, tagsA, tagsB, tagsC`)."""

    rules: CaptionRules
    group_size: int = 2

    @property
    def separators(self) -> frozenset[str]:
        """What joins the group (and `,`): no trigger may contain one."""
        return group_separators(self.rules.template)

    def caption(self, triggers: Sequence[str], tags: Sequence[Sequence[str]]) -> str:
        """The composite's caption; empty tag lists leave no `, ,` behind."""
        text = self.rules.template.format(tag=self.rules.composite_tag, **self._fields(triggers, tags))
        return ", ".join(part.strip() for part in text.split(",") if part.strip())

    def group(self, triggers: Sequence[str]) -> str:
        """The caption's first comma-separated token, e.g. `alice/bob/COMPOSITE`."""
        return self._group_template().format(tag=self.rules.composite_tag, **self._fields(triggers)).strip()

    def group_prompt(self, triggers: Sequence[str]) -> str:
        """The group without the composite tag, as group prompts use it: `alice/bob`."""
        text = self._group_template().format(tag=_TAG_MARK, **self._fields(triggers)).strip()
        # the tag goes with the separator before it (after it, where the tag comes first)
        pattern = rf"{_TAG_MARK}\s*[^\w\s]?\s*" if text.startswith(_TAG_MARK) else rf"\s*[^\w\s]?\s*{_TAG_MARK}"
        text = re.sub(pattern, "", text, count=1).strip()
        return text or "/".join(triggers)

    def composite_negative(self, negative: str = "") -> str:
        """The negative prompt of a group prompt: the composite tag (escaped: it is meant literally), then the
        preset's own negative (not escaped: its weights are meant)."""
        return ", ".join(p for p in (escape_attention(self.rules.composite_tag), negative.strip()) if p)

    def characters_in(self, caption: str) -> tuple[str, ...]:
        """The triggers a caption written from this template names, in order; () when it does not match (or names
        another number of characters)."""
        joins = group_joins(self.rules.template)
        pattern = ""
        for literal, field, _, _ in string.Formatter().parse(self._group_template()):
            pattern += re.escape(literal)
            if field in ("left", "right"):  # `left` of a group holds all but the last member, joined
                pattern += "(.+)" if field == "left" and not isinstance(joins, str) else "(.+?)"
            elif field == "tag":
                pattern += re.escape(self.rules.composite_tag)
            elif field is not None:
                pattern += ".*?"
        match = re.fullmatch(pattern.strip(), caption.split(",", 1)[0].strip())
        if not match:
            return ()
        if isinstance(joins, str):  # a template that names pairs only
            return tuple(match.groups()) if self.group_size == 2 else ()
        first, last = match.groups()
        named = (*first.split(joins[0]), last)  # a trigger never holds a join's separator
        return named if len(named) == self.group_size and joins[0] not in last else ()

    def _group_template(self) -> str:
        return self.rules.template.split(",", 1)[0]

    def _joins(self) -> tuple[str, str | None]:
        joins = group_joins(self.rules.template)
        if isinstance(joins, str):
            raise ValueError(f"the caption template names two characters, not {self.group_size}: {joins}")
        return joins

    def _fields(self, triggers: Sequence[str], tags: Sequence[Sequence[str]] | None = None) -> dict[str, str]:
        """The template's fields for a group: `left` holds every member but the last, joined (so the template's
        own text between `{left}` and `{right}` joins the last one too); the tags likewise."""
        tags = [()] * len(triggers) if tags is None else tags
        if len(triggers) != self.group_size or len(tags) != self.group_size:
            words = _COUNT_WORDS.get(self.group_size, str(self.group_size))
            raise ValueError(f"the caption template names {words} characters, not {len(triggers)}")
        if self.group_size == 2:
            return {"left": triggers[0], "right": triggers[1], "left_tags": ", ".join(tags[0]),
                    "right_tags": ", ".join(tags[1])}
        join, tag_join = self._joins()
        return {"left": join.join(triggers[:-1]), "right": triggers[-1],
                "left_tags": (tag_join or "").join(", ".join(member) for member in tags[:-1]),
                "right_tags": ", ".join(tags[-1])}
