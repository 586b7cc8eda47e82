"""How sd-scripts finds an image's caption and reads it (train_util: glob_images, read_caption)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

CAPTION_ENCODING = "utf-8"
"""read_caption opens captions with encoding="utf-8" whatever the user's files are (UnicodeDecodeError)."""

EMPTY_CAPTION_ASSERTION = "caption file is empty"
"""read_caption asserts a non-empty first line: an empty caption file stops training with this AssertionError."""


def globbed_suffixes(extensions: Iterable[str]) -> frozenset[str]:
    """Suffixes glob_images finds: each extension as written and upper-cased (`*.png`, `*.PNG`), so on Linux a
    mixed-case `.Png` is never trained."""
    return frozenset(extensions) | {ext.upper() for ext in extensions}


def caption_path_for(image: Path, caption_extension: str) -> Path:
    """`<stem><ext>` beside the image, exactly as sd-scripts builds it (splitext, not with_suffix)."""
    return image.with_name(os.path.splitext(image.name)[0] + caption_extension)


def first_caption_line(text: str) -> str:
    """What read_caption keeps: a BOM stripped, line endings unified, the first line, stripped."""
    text = text.lstrip("\ufeff").replace("\r\n", "\n").replace("\r", "\n")
    return text.split("\n", 1)[0].strip()
