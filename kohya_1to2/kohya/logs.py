"""What sd-scripts prints that we read back: the weight-loading report, the no-data line, the progress bar."""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from typing import Any

NO_DATA_MARKER = "No data found"
"""train_network logs this and returns: exit code 0 with nothing trained."""

WEIGHTS_REPORT_PREFIX = "load network weights from"
"""How train_network starts its weight-loading report (train_network.py, `--network_weights`)."""

_WEIGHTS_REPORT = re.compile(
    re.escape(WEIGHTS_REPORT_PREFIX) + r" (?P<file>.+?): (?P<info>\{.*\}|_IncompatibleKeys\(.*\)|<.*>)\s*$"
)


@dataclass(frozen=True)
class WeightsReport:
    """Stage 2's `load network weights from <file>: <info>` line, parsed."""

    file: str
    missing: tuple[str, ...]
    unexpected: tuple[str, ...]

    @property
    def clean(self) -> bool:
        return not self.missing and not self.unexpected


def _literal(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return None


def _string_list(value: Any) -> list[str]:
    return [str(item) for item in value] if isinstance(value, list | tuple) else []


def parse_weights_report(log_text: str) -> WeightsReport | None:
    """Find the weight-loading report in a log (LyCORIS prints `{}` or `{'missing keys': [...]}`; the
    built-in LoRA prints torch's `_IncompatibleKeys(missing_keys=[...], unexpected_keys=[...])`)."""
    for line in reversed(log_text.splitlines()):
        match = _WEIGHTS_REPORT.search(line)
        if not match:
            continue
        info = match.group("info")
        missing: list[str] = []
        unexpected: list[str] = []
        if info.startswith("{"):
            value = _literal(info)
            if not isinstance(value, dict):
                # Unparseable but non-empty: report it rather than pass it silently.
                return WeightsReport(match.group("file"), (info,), ())
            missing = _string_list(value.get("missing keys", value.get("missing_keys")))
            unexpected = _string_list(value.get("unexpected keys", value.get("unexpected_keys")))
            other = {k: v for k, v in value.items() if k not in {"missing keys", "missing_keys",
                                                               "unexpected keys", "unexpected_keys"}}
            missing += [f"{k}: {v}" for k, v in other.items()]
        elif info.startswith("_IncompatibleKeys"):
            parts = re.match(r"_IncompatibleKeys\(missing_keys=(\[.*?\]), unexpected_keys=(\[.*?\])\)", info)
            if parts:
                missing = _string_list(_literal(parts.group(1)))
                unexpected = _string_list(_literal(parts.group(2)))
        return WeightsReport(match.group("file"), tuple(missing), tuple(unexpected))
    return None


_STEP_PROGRESS = re.compile(
    r"steps:\s+\d+%\|[^|]*\|\s*(?P<n>\d+)/(?P<total>\d+)\s*\[(?P<elapsed>[\d:]+)<[^,\]]*,\s*"
    r"(?P<rate>[\d.]+)(?P<unit>s/it|it/s)"
)
"""train_network's progress bar: `tqdm(..., smoothing=0, desc="steps")` (train_network.py:1357), so the rate it
prints is the mean over every step so far: `steps:  50%|█▌ | 1/2 [00:03<00:03,  3.05s/it, avr_loss=0.1]`."""


def measured_seconds_per_step(log_text: str) -> tuple[float, int] | None:
    """(mean seconds per step, steps done) from the last training progress line of a stage log, or None."""
    last = None
    for match in _STEP_PROGRESS.finditer(log_text):
        if int(match.group("n")) > 0:
            last = match
    if last is None:
        return None
    rate = float(last.group("rate"))
    if rate <= 0:
        return None
    seconds = rate if last.group("unit") == "s/it" else 1.0 / rate
    return seconds, int(last.group("n"))
