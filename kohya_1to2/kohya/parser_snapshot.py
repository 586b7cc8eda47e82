"""Dump an sd-scripts tree's training-argument parsers and dataset schema to JSON: the snapshot `check` reads.

Runs as a script in the Python of that install (it imports torch through sd-scripts), so it imports only the
standard library at the top and nothing of kohya_1to2: an external install's venv does not have our packages.

    <python> kohya_1to2/kohya/parser_snapshot.py SD_SCRIPTS --version TAG --scripts A.py B.py --out FILE

It imports the REAL `<script>.setup_parser()` of each script and `library.config_util.ConfigSanitizer(True, True,
False, True)` (as train_network builds it without --masked_loss); nothing in the snapshot is typed by hand.
tools/snapshot_kohya_parser.py calls `snapshot` for the pinned tree; environment/install.py runs this file for
another tree and caches what it writes.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import io
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

GENERATED_BY = "kohya_1to2/kohya/parser_snapshot.py"


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return str(value)


def dump_parser(parser: argparse.ArgumentParser) -> list[dict[str, Any]]:
    actions = []
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        kind = type(action).__name__
        actions.append({
            "dest": action.dest,
            "option_strings": list(action.option_strings),
            "action": kind,
            "type": getattr(action.type, "__name__", None) if action.type is not None else None,
            "choices": _jsonable(list(action.choices)) if action.choices is not None else None,
            "nargs": action.nargs,
            "default": _jsonable(action.default),
            "store_true": isinstance(action, argparse._StoreTrueAction),
        })
    return sorted(actions, key=lambda a: a["dest"])


def describe_validator(validator: Any) -> str:
    """A voluptuous value validator as a short type expression: bool, int, float|int, float[2], int|int[2]..."""
    import voluptuous  # sd-scripts' dependency: present only in the install's Python

    if validator is None:
        return "None"
    if isinstance(validator, type):
        return validator.__name__
    if isinstance(validator, voluptuous.Any):
        return "|".join(describe_validator(v) for v in validator.validators)
    if isinstance(validator, functools.partial):
        klass = validator.args[0].__name__
        name = validator.func.__name__
        if "scalar_or_twodim" in name:
            return f"{klass}|{klass}[2]"
        if "twodim" in name:
            return f"{klass}[2]"
    if isinstance(validator, list):
        return "list"
    raise SystemExit(f"unknown validator in sd-scripts' dataset schema: {validator!r}; extend describe_validator")


def describe_schema(schema: dict[Any, Any]) -> dict[str, dict[str, Any]]:
    import voluptuous  # sd-scripts' dependency: present only in the install's Python

    out = {}
    for key, validator in schema.items():
        name = str(key.schema) if isinstance(key, voluptuous.Marker) else str(key)
        if name == "subsets":
            continue
        out[name] = {"type": describe_validator(validator), "required": isinstance(key, voluptuous.Required)}
    return dict(sorted(out.items()))


def snapshot(root: Path, version: str, scripts: Sequence[str], generated_by: str = GENERATED_BY) -> dict[str, Any]:
    """Import the tree's parsers (cwd and sys.path set to it, as launch runs it) and describe them."""
    if not all((root / script).is_file() for script in scripts):
        raise SystemExit(f"sd-scripts not found at {root} (no {', '.join(scripts)})")
    sys.path.insert(0, str(root))
    os.chdir(root)
    sys.argv = [sys.argv[0]]
    with contextlib.redirect_stdout(io.StringIO()):
        parsers = {script: importlib.import_module(Path(script).stem).setup_parser() for script in scripts}
        sanitizer = importlib.import_module("library.config_util").ConfigSanitizer(True, True, False, True)
    return {
        "sd_scripts": version,
        "generated_by": generated_by,
        "parsers": {script: dump_parser(parser) for script, parser in parsers.items()},
        "dataset_schema": {
            "general": describe_schema(sanitizer.general_schema),
            "dataset": describe_schema(sanitizer.db_dataset_schema),
            "subset": describe_schema(sanitizer.db_subset_schema),
            "finetune_subset": describe_schema(sanitizer.ft_subset_schema),
        },
    }


def snapshot_text(data: dict[str, Any]) -> str:
    """The JSON as committed (kohya_1to2/data/) and cached: stable order, one space of indent."""
    return json.dumps(data, indent=1, sort_keys=True, ensure_ascii=False) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    cli = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    cli.add_argument("sd_scripts", type=Path)
    cli.add_argument("--version", required=True, help="the version the snapshot says it describes")
    cli.add_argument("--scripts", nargs="+", required=True, help="training scripts whose parsers to dump")
    cli.add_argument("--out", type=Path, required=True, help="file to write the JSON to")
    args = cli.parse_args(argv)
    text = snapshot_text(snapshot(args.sd_scripts.resolve(), args.version, args.scripts))
    args.out.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    # Run as a file, Python puts this folder first on sys.path, where our module names (logs, options, ...)
    # would shadow what sd-scripts imports.
    if sys.path and Path(sys.path[0] or ".").resolve() == Path(__file__).resolve().parent:
        sys.path.pop(0)
    sys.exit(main())
