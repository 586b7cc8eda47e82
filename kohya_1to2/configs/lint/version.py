"""Keys the pinned sd-scripts has that another install lacks: removed there, or renamed to a close new name.

sd-scripts silently ignores an unknown training key, so a preset written for the pin can train with a default
where it meant a setting; `check` and `launch` name the key and the install instead.
"""

from __future__ import annotations

import difflib
from collections.abc import Collection, Mapping
from typing import Any

from kohya_1to2 import kohya
from kohya_1to2.configs.lint.problems import load_snapshot, parser_actions

RENAME_CUTOFF = 0.6
"""difflib ratio from which a name only the install has is taken for a rename (the candidates are few: the
names the pin lacks)."""

INSTALL_KEY = "install"
"""The snapshot field environment.install adds: the tree's path (absent from the pin's snapshot)."""


def install_label(snapshot: Mapping[str, Any]) -> str | None:
    """`sd-scripts <version> at <path>` for another install's snapshot (an unknown version without its reason,
    which doctor and launch show once); None for the pin's."""
    install = snapshot.get(INSTALL_KEY)
    if not install:
        return None
    version = str(snapshot.get("sd_scripts") or "unknown")
    return f"sd-scripts at {install} (version unknown)" if version.startswith("unknown") else \
        f"sd-scripts {version} at {install}"


def renamed_to(key: str, pinned: Collection[str], actions: Collection[str]) -> str | None:
    """The close new name of `key` in the install (one the pin does not have), if there is one."""
    new_names = [name for name in actions if name not in pinned]
    matches = difflib.get_close_matches(key, new_names, n=1, cutoff=RENAME_CUTOFF)
    return matches[0] if matches else None


def _gap(key: str, label: str | None, pinned: Collection[str], theirs: Collection[str], what: str,
         consequence: str) -> tuple[str, str] | None:
    """(problem, fix) when the pin has `key` and the install (`label`) has not: removed, or renamed."""
    if label is None or key not in pinned or key in theirs:
        return None
    new = renamed_to(key, pinned, theirs)
    if new:
        return (f"{label} has no {what} {key!r}: renamed to {new!r}? ({consequence})",
                f"rename it to {new} if it means the same there")
    return (f"{label} has no {what} {key!r}, which the pinned {kohya.SD_SCRIPTS_TAG} has ({consequence})",
            "remove it, or run the pinned sd-scripts (without --sd-scripts)")


def version_gap(key: str, script: str, snapshot: Mapping[str, Any]) -> tuple[str, str] | None:
    """(problem, fix) when the pin's `script` has option `key` and the install's does not, else None."""
    return _gap(key, install_label(snapshot), parser_actions(script, load_snapshot()),
                parser_actions(script, snapshot), "option", f"sd-scripts would ignore {key!r}")


def dataset_keys(snapshot: Mapping[str, Any]) -> set[str]:
    """Every key the dataset schema allows, at any level."""
    return {key for level in snapshot["dataset_schema"].values() for key in level}


def dataset_version_gap(key: str, snapshot: Mapping[str, Any]) -> tuple[str, str] | None:
    """(problem, fix) when the pin's dataset schema has `key` at some level and the install's has it at none."""
    return _gap(key, install_label(snapshot), dataset_keys(load_snapshot()), dataset_keys(snapshot),
                "dataset option", "sd-scripts rejects the file")
