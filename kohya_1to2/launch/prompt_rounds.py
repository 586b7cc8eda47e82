"""The sample prompt file while a stage runs: its pair rounds rotate at each epoch (the imperative half of
`configs.prompts`, which renders and rotates the text itself)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from kohya_1to2 import kohya
from kohya_1to2.configs.prompts import rotate_prompt_text
from kohya_1to2.fsutil import atomic_write_text

_EPOCH_LINE = kohya.EPOCH_LINE


@contextmanager
def rotating_sample_prompts(
    prompt_file: object, check: Callable[[str], str | None] | None = None
) -> Iterator[Callable[[str], str | None] | None]:
    """While a stage runs, switch the prompt file's active pair round at each `epoch N/M` line (sd-scripts
    re-reads the file every time it samples), so a stage's epochs cover every ordered pair; the file is
    restored afterwards, so `prepare` never mistakes the rotation for a hand edit. Wraps the line `check`."""
    path = Path(prompt_file) if isinstance(prompt_file, str) and prompt_file else None
    original = path.read_text(encoding="utf-8") if path is not None and path.is_file() else None
    if path is None or original is None or rotate_prompt_text(original, 2) == original:
        yield check
        return

    def observe(line: str) -> str | None:
        match = _EPOCH_LINE.match(line.strip())
        if match:
            atomic_write_text(path, rotate_prompt_text(original, int(match.group(1))))
        return check(line) if check is not None else None

    try:
        yield observe
    finally:
        if path.read_text(encoding="utf-8") != original:
            atomic_write_text(path, original)
