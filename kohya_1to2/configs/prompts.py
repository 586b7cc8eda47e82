"""sample_prompts.txt (pure): each character alone, then ordered pairs with COMPOSITE as a negative.

sd-scripts splits a prompt line at every " --" and skips lines starting with "#" (train_util.load_prompts,
line_to_prompt_dict), so a trigger that would be misread there is rejected, never written. Its samplers (LPW,
like A1111 and ComfyUI) read `( ) [ ]` as attention weights, so triggers and tags are escaped.

The pinned sd-scripts samples the same file every epoch (it re-reads it each time; no wildcards, no
rotation). By default the file therefore holds every single and one *round* of N ordered pairs (2N prompts);
the N - 1 rounds together cover every ordered pair once. The active round sits between `ROUND_MARKER` and
the catalogue of `#pair` comment lines, so `rotate_prompt_text` can switch rounds from the text alone,
e.g. at each epoch start; `--sample-pairs all` writes every pair every time instead.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from itertools import permutations, zip_longest

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


def pair_rounds(count: int) -> list[list[tuple[int, int]]]:
    """N - 1 rounds of N ordered pairs (i, i + r + 1 mod N): each ordered pair in exactly one round."""
    return [[(i, (i + shift) % count) for i in range(count)] for shift in range(1, count)]


def pair_canvas(settings: PresetSettings, size: tuple[int, int] | None = None) -> tuple[int, int]:
    """Width and height of pair samples: two characters side by side need a landscape canvas."""
    if size is not None:
        return size
    square = (settings.sample_width, settings.sample_height)
    if square in PAIR_CANVAS:
        return PAIR_CANVAS[square]
    return (settings.sample_width * 3 // 2 // 8 * 8, settings.sample_height)


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
    """The pieces of a prompt file: single lines, and pair lines by ordered pair (both complete)."""

    def __init__(self, triggers: Sequence[tuple[str, str]], settings: PresetSettings, captions: CaptionRules,
                 pair_size: tuple[int, int] | None) -> None:
        for name, trigger in triggers:
            check_trigger(trigger, name)
        negative = settings.sample_negative.strip()
        if negative and (problem := prompt_text_problem(negative)):
            raise UsageError(f"preset sample_negative {negative!r} {problem}",
                             hint="edit the preset's [preset] table")
        composite_negative = CaptionTemplate(captions).composite_negative(negative)
        steps = f"--s {settings.sample_steps}" + _scale_option(settings)
        single = f"--w {settings.sample_width} --h {settings.sample_height} {steps}"
        width, height = pair_canvas(settings, pair_size)
        neg = f" --n {negative}" if negative else ""
        escaped = [escape_attention(trigger) for _, trigger in triggers]
        self.count = len(triggers)
        self.singles = [f"{t}{neg} {single} --d {1000 + n}" for n, t in enumerate(escaped)]
        self.pairs = {
            (i, j): f"{pair_prompt(escaped[i], escaped[j], captions)} --n {composite_negative} "
                    f"--w {width} --h {height} {steps} --d {2000 + i * self.count + j}"
            for i, j in permutations(range(self.count), 2)
        }


def sample_prompt_lines(
    triggers: Sequence[tuple[str, str]], settings: PresetSettings, captions: CaptionRules, *,
    pairs: str = "all", pair_size: tuple[int, int] | None = None, round_index: int = 0,
) -> list[str]:
    """Prompt lines sd-scripts samples: singles, then every pair (`all`) or one round of N pairs (`rotate`)."""
    built = _Prompts(triggers, settings, captions, pair_size)
    if pairs == "rotate" and built.count > 2:
        rounds = pair_rounds(built.count)
        chosen = [built.pairs[p] for p in rounds[round_index % len(rounds)]]
    else:
        chosen = [built.pairs[p] for p in sorted(built.pairs)]
    prompts = built.singles + chosen
    if settings.sample_max_prompts:
        # Alternate single and pair prompts so even a cap of 2 shows one character alone and one pair.
        alternating = [p for duo in zip_longest(built.singles, chosen) for p in duo if p is not None]
        prompts = alternating[: settings.sample_max_prompts]
    return prompts


def sample_prompts_text(
    triggers: Sequence[tuple[str, str]], settings: PresetSettings, captions: CaptionRules, *,
    pairs: str = "rotate", pair_size: tuple[int, int] | None = None,
) -> str:
    header = [
        "# kohya-1to2 sample prompts (sd-scripts format: prompt --n negative --w width --h height --s steps --d seed).",
        "# Each character alone, then pairs (composite tag in the negative prompt) on a landscape canvas.",
        "# ( ) [ ] : \\ in triggers are escaped so the sampler reads them literally, not as attention weights.",
    ]
    built = _Prompts(triggers, settings, captions, pair_size)
    if pairs != "rotate" or built.count <= 2 or settings.sample_max_prompts:
        lines = sample_prompt_lines(triggers, settings, captions, pairs="all", pair_size=pair_size)
        return "\n".join([*header, *lines]) + "\n"
    rounds = pair_rounds(built.count)
    catalogue = [f"{PAIR_CATALOGUE_PREFIX}{r}: {built.pairs[p]}" for r, pairs_ in enumerate(rounds) for p in pairs_]
    header.append(f"# {len(rounds)} rounds of {built.count} ordered pairs cover every pair once "
                  "(--sample-pairs all: every pair each epoch).")
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


