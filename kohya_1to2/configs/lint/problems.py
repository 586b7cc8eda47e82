"""What every lint rule shares: the problem record, the parser snapshot, and the wording helpers."""

from __future__ import annotations

import difflib
import functools
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import toml
from pydantic import BaseModel, ConfigDict

from kohya_1to2 import kohya
from kohya_1to2.errors import CheckError
from kohya_1to2.kohya import options as opt

SNAPSHOT = kohya.PARSER_SNAPSHOT
SD_SCRIPTS_CAPTION_DEFAULT = kohya.SUBSET_DEFAULTS[opt.CAPTION_EXTENSION]
NON_STRUCTURAL_NETWORK_ARGS = kohya.NON_STRUCTURAL_NETWORK_ARGS
MAX_COMPOSITE_CROP = 0.2


class ConfigProblem(BaseModel):
    """One finding in a TOML; errors fail `check` (exit 4), warnings are printed only."""

    model_config = ConfigDict(frozen=True)

    file: str
    key: str
    problem: str
    fix: str
    severity: Literal["error", "warning"] = "error"

    @property
    def line(self) -> str:
        return f"{self.file}: {self.key}: {self.problem} ({self.fix})"




@functools.lru_cache(maxsize=2)
def load_snapshot(path: Path = SNAPSHOT) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def parser_actions(script: str, snapshot: Mapping[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    snap = snapshot or load_snapshot()
    return {a["dest"]: a for a in snap["parsers"][script]}


def read_toml(path: Path) -> dict[str, Any]:
    """Parse with the `toml` library sd-scripts uses; a syntax error is a CheckError naming the file."""
    if not path.is_file():
        raise CheckError(f"{path}: not found", hint="run `python -m kohya_1to2 prepare` to generate it")
    try:
        return toml.loads(path.read_text(encoding="utf-8"))
    except (toml.TomlDecodeError, UnicodeDecodeError) as exc:
        raise CheckError(f"{path}: not valid TOML for sd-scripts: {exc}", hint="fix the syntax at that line") from None


def _suggest(key: str, candidates: Iterable[str]) -> str | None:
    matches = difflib.get_close_matches(key, list(candidates), n=1, cutoff=0.75)
    return matches[0] if matches else None


def _type_name(value: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a float", str: "a string", list: "an array",
            dict: "a table"}.get(type(value), type(value).__name__)


def _literal(value: Any) -> str:
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value) if isinstance(value, (int, float, list)) else repr(value)
