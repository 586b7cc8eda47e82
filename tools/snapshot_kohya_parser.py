"""Dump the pinned sd-scripts' training-argument parsers and dataset schema to JSON, for `check`.

Run with the training environment (torch etc.), from anywhere:

    .venv/bin/python tools/snapshot_kohya_parser.py            # rewrites kohya_1to2/data/kohya_v0.10.1.json
    .venv/bin/python tools/snapshot_kohya_parser.py --stdout   # prints it (the integration test compares)

It imports the REAL `train_network.setup_parser()`, `sdxl_train_network.setup_parser()` and
`library.config_util.ConfigSanitizer(True, True, False, True)` (as train_network builds it without
--masked_loss); nothing in the snapshot is typed by hand. sd-scripts: vendor/sd-scripts, or $KOHYA_1TO2_SD_SCRIPTS.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import json
import os
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
OUTPUT = REPO / "kohya_1to2" / "data" / "kohya_v0.10.1.json"
SCRIPTS = {"train_network.py": "train_network", "sdxl_train_network.py": "sdxl_train_network"}


def sd_scripts_dir() -> Path:
    return Path(os.environ.get("KOHYA_1TO2_SD_SCRIPTS", REPO / "vendor" / "sd-scripts"))


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
    import voluptuous

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
    import voluptuous

    out = {}
    for key, validator in schema.items():
        name = str(key.schema) if isinstance(key, voluptuous.Marker) else str(key)
        if name == "subsets":
            continue
        out[name] = {"type": describe_validator(validator), "required": isinstance(key, voluptuous.Required)}
    return dict(sorted(out.items()))


def snapshot() -> dict[str, Any]:
    root = sd_scripts_dir()
    if not (root / "train_network.py").is_file():
        raise SystemExit(f"sd-scripts not found at {root}; set KOHYA_1TO2_SD_SCRIPTS")
    sys.path.insert(0, str(root))
    os.chdir(root)
    sys.argv = [sys.argv[0]]
    with contextlib.redirect_stdout(io.StringIO()):
        import importlib

        parsers = {script: importlib.import_module(module).setup_parser() for script, module in SCRIPTS.items()}
        from library.config_util import ConfigSanitizer

        sanitizer = ConfigSanitizer(True, True, False, True)
    return {
        "sd_scripts": "v0.10.1",
        "generated_by": "tools/snapshot_kohya_parser.py",
        "parsers": {script: dump_parser(parser) for script, parser in parsers.items()},
        "dataset_schema": {
            "general": describe_schema(sanitizer.general_schema),
            "dataset": describe_schema(sanitizer.db_dataset_schema),
            "subset": describe_schema(sanitizer.db_subset_schema),
            "finetune_subset": describe_schema(sanitizer.ft_subset_schema),
        },
    }


def main() -> int:
    cli = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_argument("--stdout", action="store_true", help="print instead of writing the data file")
    args = cli.parse_args()
    text = json.dumps(snapshot(), indent=1, sort_keys=True, ensure_ascii=False) + "\n"
    if args.stdout:
        sys.stdout.write(text)
    else:
        OUTPUT.parent.mkdir(parents=True, exist_ok=True)
        OUTPUT.write_text(text, encoding="utf-8")
        print(f"wrote {OUTPUT.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
