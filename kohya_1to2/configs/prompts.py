"""sample_prompts.txt (pure): each character alone, then each ordered pair with COMPOSITE as a negative.

sd-scripts splits a prompt line at every " --" and skips lines starting with "#" (train_util.load_prompts,
line_to_prompt_dict), so a trigger that would be misread there is rejected, never written.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from itertools import permutations, zip_longest

from kohya_1to2.configs.presets import PresetSettings
from kohya_1to2.errors import DatasetError, UsageError
from kohya_1to2.models import CaptionRules

# line_to_prompt_dict matches these option patterns against the prompt text itself too.
_OPTION_LIKE = re.compile(r"^(?:[whdslg] \d|(?:n|ss|cn|ctr|rcfg|fs) .)", re.IGNORECASE)


def prompt_text_problem(text: str) -> str | None:
    """Why `text` cannot be written into a sample prompt line, or None."""
    if not text.strip():
        return "is empty"
    if "\n" in text or "\r" in text:
        return "contains a line break"
    if " --" in text:
        return "contains ' --', which sd-scripts reads as the start of a prompt option"
    if text.lstrip().startswith("#"):
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
    first = captions.template.split(",", 1)[0]
    for pattern in ("/{tag}", "{tag}/", "{tag}"):
        first = first.replace(pattern, "")
    text = first.format(left=left, right=right).strip(" /")
    return text or f"{left}/{right}"


def sample_prompt_lines(
    triggers: Sequence[tuple[str, str]], settings: PresetSettings, captions: CaptionRules
) -> list[str]:
    """Prompt lines for (character name, trigger) pairs, in a stable order."""
    for name, trigger in triggers:
        check_trigger(trigger, name)
    negative = settings.sample_negative.strip()
    if negative and (problem := prompt_text_problem(negative)):
        raise UsageError(f"preset sample_negative {negative!r} {problem}", hint="edit the preset's [preset] table")
    composite_negative = ", ".join(p for p in (captions.composite_tag, negative) if p)
    size = f"--w {settings.sample_width} --h {settings.sample_height} --s {settings.sample_steps}"
    neg = f" --n {negative}" if negative else ""
    singles = [f"{trigger}{neg}" for _, trigger in triggers]
    pairs = [f"{pair_prompt(left, right, captions)} --n {composite_negative}"
             for (_, left), (_, right) in permutations(triggers, 2)]
    prompts = singles + pairs
    if settings.sample_max_prompts:
        # Alternate single and pair prompts so even a cap of 2 shows one character alone and one pair.
        alternating = [p for duo in zip_longest(singles, pairs) for p in duo if p is not None]
        prompts = alternating[: settings.sample_max_prompts]
    return [f"{prompt} {size} --d {1000 + n}" for n, prompt in enumerate(prompts)]


def sample_prompts_text(
    triggers: Sequence[tuple[str, str]], settings: PresetSettings, captions: CaptionRules
) -> str:
    header = [
        "# kohya-1to2 sample prompts (sd-scripts format: prompt --n negative --w width --h height --s steps --d seed).",
        "# Each character alone, then each pair in both orders with the composite tag in the negative prompt.",
    ]
    return "\n".join([*header, *sample_prompt_lines(triggers, settings, captions)]) + "\n"
