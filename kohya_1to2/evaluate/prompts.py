"""Evaluation prompts (pure): each character alone, each ordered pair (or group), the user's lines; gen_img lines.

Pair prompts are the sample prompts' pairs (`alice/bob`, the composite tag first in the negative prompt, on the
landscape pair canvas), so `evaluate` asks the model exactly what stage 2 trained it for; a run of groups of k
gets every group once (`alice/bob/carol`, kind "pair": a prompt of several characters) on the wider group canvas.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict

from kohya_1to2 import kohya
from kohya_1to2.configs.presets import PresetSettings
from kohya_1to2.configs.prompts import every_group, group_canvas, group_prompt
from kohya_1to2.dataset.captions import CaptionTemplate
from kohya_1to2.errors import UsageError
from kohya_1to2.kohya import escape_attention
from kohya_1to2.models import CaptionRules

PromptKind = Literal["single", "pair", "user"]

# `--d` and `--f` are ours (seed per column, file name per cell); a user line's own are dropped.
_OURS = re.compile(r"^(?:d|f)\s", re.IGNORECASE)
_SIZE = re.compile(r"^(w|h)\s+(\d+)\s*$", re.IGNORECASE)


class EvalPrompt(BaseModel):
    """One prompt of the evaluation: its id (file-name safe), kind, text and gen_img options."""

    model_config = ConfigDict(frozen=True)

    id: str
    kind: PromptKind
    text: str
    negative: str = ""
    width: int
    height: int
    characters: tuple[str, ...] = ()
    options: tuple[str, ...] = ()
    """Further per-line options: a user line's own (e.g. `l 5`), kept verbatim, else the preset's guidance scale."""


def scale_options(settings: PresetSettings) -> tuple[str, ...]:
    """The preset's guidance scale as a prompt option (`l 4.5`), so evaluate samples as training does."""
    scale = settings.sample_cfg_scale
    return () if scale is None else (f"l {scale:g}",)


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")[:40] or "prompt"


def character_prompts(
    triggers: Sequence[tuple[str, str]], settings: PresetSettings, captions: CaptionRules, *,
    singles: int | None = None, pairs: int | None = None, group_size: int = 2,
) -> list[EvalPrompt]:
    """Each character alone, then each ordered pair, or each group of `group_size` once (`None` = all; a number
    keeps the first ones)."""
    negative = settings.sample_negative.strip()
    composite_negative = CaptionTemplate(captions).composite_negative(negative)
    width, height = group_canvas(settings, group_size)
    single_prompts = [
        EvalPrompt(id=f"single_{_safe(name)}", kind="single", text=escape_attention(trigger), negative=negative,
                   width=settings.sample_width, height=settings.sample_height, characters=(name,),
                   options=scale_options(settings))
        for name, trigger in triggers
    ]
    kind = "pair" if group_size == 2 else "group"
    pair_prompts = [
        EvalPrompt(
            id=f"{kind}_" + "__".join(_safe(triggers[c][0]) for c in group), kind="pair",
            text=group_prompt([escape_attention(triggers[c][1]) for c in group], captions),
            negative=composite_negative, width=width, height=height, characters=tuple(triggers[c][0] for c in group),
            options=scale_options(settings),
        )
        for group in (every_group(len(triggers), group_size) if len(triggers) >= group_size else [])
    ]
    return single_prompts[:singles] + pair_prompts[:pairs]


def parse_user_prompts(text: str, settings: PresetSettings, source: str) -> list[EvalPrompt]:
    """Lines of a user prompt file in sd-scripts' syntax (`prompt --n neg --w 512 --h 768 ...`)."""
    prompts: list[EvalPrompt] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = kohya.prompt_parts(" " + line)  # a leading " --" leaves an empty prompt, as in sd-scripts
        prompt, negative, options = parts[0].strip(), "", []
        width, height = settings.sample_width, settings.sample_height
        for option in parts[1:]:
            option = option.strip()
            size = _SIZE.match(option)
            if option[:2].lower() == "n ":
                negative = option[2:].strip()
            elif size:
                value = int(size.group(2))
                if value < 64:
                    raise UsageError(f"{source}:{number}: --{option} is below 64 px", hint="use --w/--h >= 64")
                width, height = (value, height) if size.group(1).lower() == "w" else (width, value)
            elif not _OURS.match(option):
                options.append(option)
        if not prompt:
            raise UsageError(f"{source}:{number}: the line has options but no prompt", hint="write the prompt first")
        if not any(option[:2].lower() == "l " for option in options):
            options += scale_options(settings)
        digest = hashlib.sha256(line.encode("utf-8")).hexdigest()[:6]
        prompts.append(EvalPrompt(id=f"user{number:03d}_{_safe(prompt)}_{digest}", kind="user", text=prompt,
                                  negative=negative, width=width, height=height, options=tuple(options)))
    if not prompts:
        raise UsageError(f"{source}: no prompt lines", hint="one prompt per line, sd-scripts' prompt syntax")
    return prompts


def image_name(prompt: EvalPrompt, seed: int) -> str:
    """The file of one cell: the prompt's id and the column's seed."""
    return f"{prompt.id}_s{seed}.png"


def prompt_line(prompt: EvalPrompt, seed: int, steps: int) -> str:
    """One gen_img `--from_file` line: the prompt, its options, our seed, steps and output file name."""
    parts = [prompt.text]
    if prompt.negative:
        parts.append(f"--n {prompt.negative}")
    parts += [f"--w {prompt.width}", f"--h {prompt.height}", f"--s {steps}"]
    parts += [f"--{option}" for option in prompt.options]
    parts += [f"--d {seed}", f"--f {image_name(prompt, seed)}"]
    return " ".join(parts)


def column_seeds(count: int, first: int = 1000) -> list[int]:
    """The seeds of the grid's columns: the same in every row, so rows differ only by weights."""
    return [first + n for n in range(count)]
