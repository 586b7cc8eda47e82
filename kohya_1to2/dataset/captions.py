"""Caption parsing and the composite caption (pure)."""

from __future__ import annotations


def normalise_caption_text(text: str) -> str:
    """Strip a BOM, unify line endings and keep the first line, as sd-scripts reads it."""
    text = text.lstrip("\ufeff").replace("\r\n", "\n").replace("\r", "\n")
    return text.split("\n", 1)[0].strip()


def split_tags(text: str, separator: str = ",") -> tuple[str, ...]:
    """Tags of a caption: split on the separator, whitespace trimmed, empty tags dropped."""
    first_line = normalise_caption_text(text)
    return tuple(tag for tag in (part.strip() for part in first_line.split(separator)) if tag)
