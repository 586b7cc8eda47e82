"""Waiting in tests without timing them: poll a condition, fail with what was awaited if it never comes."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_for(condition: Callable[[], object], timeout: float, what: str, interval: float = 0.05) -> None:
    """Return once `condition()` is true; fail after `timeout` seconds (a guard against hangs, not a speed test:
    give it ample room)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)
