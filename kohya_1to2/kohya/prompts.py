"""The prompt-file grammar of training samples (train_util.load_prompts, line_to_prompt_dict,
sample_image_inference) and the epoch line train_network prints before each epoch."""

from __future__ import annotations

import re

PROMPT_OPTION_SEPARATOR = " --"
"""A prompt line is split at every " --": the first part is the prompt, each other part one option."""

PROMPT_COMMENT = "#"
"""Lines starting with this (and empty lines) are skipped."""

OPTION_LIKE = re.compile(r"^(?:[whdslg] \d|(?:n|ss|cn|ctr|rcfg|fs) .)", re.IGNORECASE)
"""line_to_prompt_dict matches these option patterns against the prompt text itself too."""

STEPS_OPTION = re.compile(r"s (\d+)", re.IGNORECASE)
"""The `--s N` option: sampling steps, clamped to 1..1000 by sample_image_inference."""

DEFAULT_SAMPLE_STEPS = 30
"""sample_image_inference's default when a prompt has no `--s`."""

EPOCH_LINE = re.compile(r"^epoch (\d+)/(\d+)\s*$")
"""train_network.py prints `epoch N/M` (accelerator.print) as each epoch starts; it samples at the epoch's end."""


def prompt_parts(line: str) -> list[str]:
    """[prompt, option, option, ...] of a prompt line, split as sd-scripts splits it."""
    return line.split(PROMPT_OPTION_SEPARATOR)


_ATTENTION_CHARS = re.compile(r"([\\()\[\]:])")


def escape_attention(text: str) -> str:
    """Backslash-escape `\\ ( ) [ ] :` so the LPW parser (parse_prompt_attention) returns the text literally."""
    return _ATTENTION_CHARS.sub(r"\\\1", text)
