"""sample_prompts.txt (pure): each character alone, then ordered pairs (or groups) with COMPOSITE as a negative.

sd-scripts splits a prompt line at every " --" and skips lines starting with "#" (train_util.load_prompts,
line_to_prompt_dict), so a trigger that would be misread there is rejected, never written. Its samplers (LPW,
like A1111 and ComfyUI) read `( ) [ ]` as attention weights, so triggers and tags are escaped.

The pinned sd-scripts samples the same file every epoch (it re-reads it each time; no wildcards, no
rotation). By default the file therefore holds every single and one *round* of N ordered pairs (2N prompts);
the N - 1 rounds together cover every ordered pair once. The active round sits between `ROUND_MARKER` and
the catalogue of `#pair` comment lines, so `rotate_prompt_text` can switch rounds from the text alone,
e.g. at each epoch start; `--sample-pairs all` writes every pair every time instead. A run of groups of k
(`--group-size`) samples groups the same way: rounds of N groups, each character once in every position.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from itertools import combinations, permutations, zip_longest

from kohya_1to2 import kohya
from kohya_1to2.configs.presets import PresetSettings
from kohya_1to2.dataset.captions import CaptionTemplate
from kohya_1to2.errors import DatasetError, UsageError
from kohya_1to2.kohya import escape_attention
from kohya_1to2.models import CaptionRules

_OPTION_LIKE = kohya.OPTION_LIKE

PAIR_CANVAS: dict[tuple[int, int], tuple[int, int]] = {(512, 512): (768, 512), (1024, 1024): (1216, 832)}
"""Landscape canvas for pair samples, by the single samples' size (SD1 and SDXL); others: 1.5x the width."""

ROUND_MARKER = "# pairs of round "
PAIR_CATALOGUE_PREFIX = "#pair "


def prompt_text_problem(text: str) -> str | None:
    """Why `text` cannot be written into a sample prompt line, or None."""
    if not text.strip():
        return "is empty"
    if "\n" in text or "\r" in text:
        return "contains a line break"
    if kohya.PROMPT_OPTION_SEPARATOR in text:
        return "contains ' --', which sd-scripts reads as the start of a prompt option"
    if text.lstrip().startswith(kohya.PROMPT_COMMENT):
        return "starts with '#', so sd-scripts would skip the whole prompt line as a comment"
    if _OPTION_LIKE.match(text.strip()):
        return "starts like a prompt option (e.g. 'n ...' or 'w 512'), which sd-scripts would parse as one"
    return None


def check_trigger(trigger: str, character: str) -> None:
    if problem := prompt_text_problem(trigger):
        raise DatasetError(
            f"character {character!r}: trigger {trigger!r} {problem}",
            hint="rename the trigger (first caption tag) in that folder's captions",
        )


def pair_prompt(left: str, right: str, captions: CaptionRules) -> str:
    """The character group of a composite caption without the composite tag, e.g. `alice/bob`."""
    return CaptionTemplate(captions).group_prompt((left, right))


def group_prompt(triggers: Sequence[str], captions: CaptionRules) -> str:
    """`pair_prompt` for a group of k, e.g. `alice/bob/carol`."""
    return CaptionTemplate(captions, len(triggers)).group_prompt(triggers)


def pair_rounds(count: int) -> list[list[tuple[int, int]]]:
    """N - 1 rounds of N ordered pairs (i, i + r + 1 mod N): each ordered pair in exactly one round."""
    return [[(i, (i + shift) % count) for i in range(count)] for shift in range(1, count)]


def group_rounds(count: int, group_size: int) -> list[list[tuple[int, ...]]]:
    """Rounds of N groups (i, i + s, i + 2s, ... mod N), one round per step s whose N groups are distinct and new
    (a round's groups are rotations of one, so rounds share all their groups or none): in each round every
    character sits once in every position. Pairs are `pair_rounds`."""
    if group_size == 2:
        return [list(round_) for round_ in pair_rounds(count)]
    rounds: list[list[tuple[int, ...]]] = []
    seen: set[frozenset[int]] = set()
    for step in range(1, count):
        groups = [tuple((i + step * j) % count for j in range(group_size)) for i in range(count)]
        keys = {frozenset(group) for group in groups}
        if any(len(set(group)) < group_size for group in groups) or len(keys) < count or keys <= seen:
            continue  # a member twice, a group twice in the round, or an earlier round's groups (step N - s)
        seen |= keys
        rounds.append(groups)
    return rounds


def every_group(count: int, group_size: int) -> list[tuple[int, ...]]:
    """Every ordered pair, or every unordered group once (seated in turn, so positions vary)."""
    if group_size == 2:
        return sorted(permutations(range(count), 2))
    return [group[n % group_size:] + group[:n % group_size]
            for n, group in enumerate(combinations(range(count), group_size))]


def pair_canvas(settings: PresetSettings, size: tuple[int, int] | None = None) -> tuple[int, int]:
    """Width and height of pair samples: two characters side by side need a landscape canvas."""
    if size is not None:
        return size
    square = (settings.sample_width, settings.sample_height)
    if square in PAIR_CANVAS:
        return PAIR_CANVAS[square]
    return (settings.sample_width * 3 // 2 // 8 * 8, settings.sample_height)


def group_canvas(settings: PresetSettings, group_size: int, size: tuple[int, int] | None = None) -> tuple[int, int]:
    """The canvas of group samples: as high as the pair canvas, and as wide as k characters at a pair's width
    per character (SD1: 3 -> 1152x512, 4 -> 1536x512), so each character gets the room it has in a pair."""
    width, height = pair_canvas(settings, size)
    if size is not None or group_size == 2:
        return (width, height)
    return (width * group_size // 2 // 8 * 8, height)


def parse_size(text: str) -> tuple[int, int]:
    """`768x512` -> (768, 512); a UsageError otherwise."""
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not match or min(int(match.group(1)), int(match.group(2))) < 64:
        raise UsageError(f"sample size {text!r} is not WIDTHxHEIGHT with both sides >= 64", hint="e.g. 768x512")
    return int(match.group(1)), int(match.group(2))


def _scale_option(settings: PresetSettings) -> str:
    """` --l 4.5` where the preset sets a guidance scale; nothing keeps sd-scripts' default."""
    scale = settings.sample_cfg_scale
    return "" if scale is None else f" --l {scale:g}"


class _Prompts:
    """The pieces of a prompt file: single lines, and group lines by ordered group (pairs: ordered pairs)."""

    def __init__(self, triggers: Sequence[tuple[str, str]], settings: PresetSettings, captions: CaptionRules,
                 pair_size: tuple[int, int] | None, group_size: int = 2) -> None:
        for name, trigger in triggers:
            check_trigger(trigger, name)
        negative = settings.sample_negative.strip()
        if negative and (problem := prompt_text_problem(negative)):
            raise UsageError(f"preset sample_negative {negative!r} {problem}",
                             hint="edit the preset's [preset] table")
        composite_negative = CaptionTemplate(captions).composite_negative(negative)
        steps = f"--s {settings.sample_steps}" + _scale_option(settings)
        single = f"--w {settings.sample_width} --h {settings.sample_height} {steps}"
        width, height = group_canvas(settings, group_size, pair_size)
        neg = f" --n {negative}" if negative else ""
        escaped = [escape_attention(trigger) for _, trigger in triggers]
        self.count, self.group_size = len(triggers), group_size
        self.singles = [f"{t}{neg} {single} --d {1000 + n}" for n, t in enumerate(escaped)]
        self._group_options = f"--n {composite_negative} --w {width} --h {height} {steps}"
        self._escaped, self._captions = escaped, captions
        self.every = every_group(self.count, group_size) if self.count >= group_size else []
        """Every ordered pair, or every group once (`--sample-pairs all`)."""

    def line(self, group: tuple[int, ...]) -> str:
        """The prompt line of an ordered group; its seed reads the group as a number in base N (i * N + j)."""
        seed = 2000 + sum(c * self.count ** p for p, c in enumerate(reversed(group)))
        return f"{group_prompt([self._escaped[c] for c in group], self._captions)} {self._group_options} --d {seed}"


def sample_prompt_lines(
    triggers: Sequence[tuple[str, str]], settings: PresetSettings, captions: CaptionRules, *,
    pairs: str = "all", pair_size: tuple[int, int] | None = None, round_index: int = 0, group_size: int = 2,
) -> list[str]:
    """Prompt lines sd-scripts samples: singles, then every pair (`all`) or one round of N pairs (`rotate`);
    groups of `group_size` likewise."""
    built = _Prompts(triggers, settings, captions, pair_size, group_size)
    if pairs == "rotate" and built.count > group_size:
        rounds = group_rounds(built.count, group_size)
        chosen = [built.line(p) for p in rounds[round_index % len(rounds)]]
    else:
        chosen = [built.line(p) for p in built.every]
    prompts = built.singles + chosen
    if settings.sample_max_prompts:
        # Alternate single and pair prompts so even a cap of 2 shows one character alone and one pair.
        alternating = [p for duo in zip_longest(built.singles, chosen) for p in duo if p is not None]
        prompts = alternating[: settings.sample_max_prompts]
    return prompts


def sample_prompts_text(
    triggers: Sequence[tuple[str, str]], settings: PresetSettings, captions: CaptionRules, *,
    pairs: str = "rotate", pair_size: tuple[int, int] | None = None, group_size: int = 2,
) -> str:
    what = "pairs" if group_size == 2 else f"groups of {group_size}"
    header = [
        "# kohya-1to2 sample prompts (sd-scripts format: prompt --n negative --w width --h height --s steps --d seed).",
        f"# Each character alone, then {what} (composite tag in the negative prompt) on a "
        f"{'landscape' if group_size == 2 else 'wide'} canvas.",
        "# ( ) [ ] : \\ in triggers are escaped so the sampler reads them literally, not as attention weights.",
    ]
    built = _Prompts(triggers, settings, captions, pair_size, group_size)
    rounds = group_rounds(built.count, group_size) if built.count > group_size else []
    if pairs != "rotate" or len(rounds) <= 1 or settings.sample_max_prompts:
        lines = sample_prompt_lines(triggers, settings, captions, pairs="all" if len(rounds) != 1 else pairs,
                                    pair_size=pair_size, group_size=group_size)
        return "\n".join([*header, *lines]) + "\n"
    catalogue = [f"{PAIR_CATALOGUE_PREFIX}{r}: {built.line(p)}" for r, pairs_ in enumerate(rounds) for p in pairs_]
    header.append(f"# {len(rounds)} rounds of {built.count} ordered pairs cover every pair once "
                  "(--sample-pairs all: every pair each epoch)." if group_size == 2 else
                  f"# {len(rounds)} rounds of {built.count} groups, each character once in every position "
                  "(--sample-pairs all: every group each epoch).")
    return "\n".join([*header, *built.singles, *_round_block(catalogue, 0, len(rounds)), *catalogue]) + "\n"


def _round_block(catalogue: Sequence[str], round_index: int, rounds: int) -> list[str]:
    active = [line.split(": ", 1)[1] for line in catalogue
              if line.startswith(f"{PAIR_CATALOGUE_PREFIX}{round_index}: ")]
    return [f"{ROUND_MARKER}{round_index + 1} of {rounds} (the #pair lines below list every round)", *active]


def rotate_prompt_text(text: str, epoch: int) -> str:
    """The prompt file with round `(epoch - 1) mod rounds` active (epochs count from 1); unchanged without one."""
    lines = text.splitlines()
    marker = next((n for n, line in enumerate(lines) if line.startswith(ROUND_MARKER)), None)
    catalogue = [line for line in lines if line.startswith(PAIR_CATALOGUE_PREFIX)]
    if marker is None or not catalogue:
        return text
    rounds = 1 + max(int(line[len(PAIR_CATALOGUE_PREFIX):].split(":", 1)[0]) for line in catalogue)
    block = _round_block(catalogue, (epoch - 1) % rounds, rounds)
    return "\n".join([*lines[:marker], *block, *catalogue]) + "\n"


def prompts_per_sampling(text: str) -> int:
    """How many images sd-scripts samples from this file each time (non-empty lines not starting with #)."""
    return sum(1 for line in text.splitlines() if line.strip() and not line.startswith("#"))


SD_SCRIPTS_DEFAULT_SAMPLE_STEPS = kohya.DEFAULT_SAMPLE_STEPS


def sampling_load(text: str) -> tuple[int, int]:
    """(images, sampler steps) of one sampling from this prompt file, as sd-scripts reads it."""
    images = steps = 0
    for line in text.splitlines():
        if not line.strip() or line.startswith(kohya.PROMPT_COMMENT):
            continue
        images += 1
        found = [int(m.group(1)) for part in kohya.prompt_parts(line.strip())[1:]
                 if (m := kohya.STEPS_OPTION.match(part.strip()))]
        steps += min(max(found[-1], 1), 1000) if found else SD_SCRIPTS_DEFAULT_SAMPLE_STEPS
    return images, steps


