"""The training TOML against the pinned parser: names, types, choices, and values that crash sd-scripts."""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from typing import Any

from kohya_1to2 import kohya
from kohya_1to2.configs.lint.problems import (
    ConfigProblem,
    _literal,
    _suggest,
    _type_name,
    load_snapshot,
    parser_actions,
)
from kohya_1to2.configs.lint.version import version_gap
from kohya_1to2.kohya import options as opt


def _scalar_ok(value: Any, type_name: str | None) -> bool:
    if isinstance(value, (list, dict)):
        return False
    if type_name in ("float", "int_or_float"):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if type_name == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, str)  # str, Path and untyped store actions keep strings


def _expected(action: Mapping[str, Any]) -> str:
    names = {"float": "a number", "int_or_float": "a number", "int": "an integer"}
    base = names.get(action["type"] or "", "a string")
    return f"an array of {base.split(' ', 1)[1]}s" if action["nargs"] in ("*", "+") else base


def _fix_value(action: Mapping[str, Any], value: Any) -> str:
    type_name = action["type"]
    if action["dest"] == opt.RESOLUTION:
        return 'write it as a string such as "512" or "768,512", or better in the dataset TOML as an integer'
    if isinstance(value, str) and type_name in ("float", "int_or_float", "int"):
        return f"write the number without quotes, e.g. {action['dest']} = {value.strip()}"
    if isinstance(value, (int, float)) and not isinstance(value, bool) and type_name in (None, "str", "Path"):
        return f'quote it: {action["dest"]} = "{value}"'
    if action["nargs"] in ("*", "+") and not isinstance(value, list):
        items = value.split() if isinstance(value, str) and action["dest"] == opt.NETWORK_ARGS else [value]
        return f"write an array, e.g. {action['dest']} = [{', '.join(_literal(i) for i in items)}]"
    if type_name == "int" and isinstance(value, float) and value.is_integer():
        return f"write {action['dest']} = {int(value)}"
    return f"write {_expected(action)}"


def check_training_value(action: Mapping[str, Any], value: Any) -> tuple[str, str] | None:
    """(problem, fix) when a TOML value does not fit the argparse action sd-scripts would attach it to."""
    dest = action["dest"]
    if action["store_true"]:
        if not isinstance(value, bool):
            return (f"is an on/off flag, got {_type_name(value)} {_literal(value)}",
                    f"write {dest} = true or {dest} = false (no quotes)")
        return None
    if isinstance(value, dict):
        return ("is a nested table; sd-scripts flattens only one level of sections",
                "move its keys into a normal [section]")
    if action["nargs"] in ("*", "+"):
        scalar_allowed = action["type"] in ("float", "int_or_float") and not isinstance(value, list)
        if not isinstance(value, list) and not scalar_allowed:
            return (f"must be {_expected(action)}, got {_type_name(value)} {_literal(value)}",
                    _fix_value(action, value))
        items = value if isinstance(value, list) else [value]
        for item in items:
            if not _scalar_ok(item, action["type"]):
                return (f"must be {_expected(action)}, got an element {_literal(item)}", _fix_value(action, item))
    else:
        if isinstance(value, list) and action["nargs"] is None:
            return (f"must be {_expected(action)}, got an array", _fix_value(action, value))
        if not _scalar_ok(value, action["type"]):
            return (f"must be {_expected(action)}, got {_type_name(value)} {_literal(value)}",
                    _fix_value(action, value))
    choices = action["choices"]
    if choices is not None:
        for item in value if isinstance(value, list) else [value]:
            if item not in choices:
                shown = ", ".join(_literal(c) for c in choices if c is not None)
                return (f"{_literal(item)} is not one of the choices", f"use one of {shown}")
    return None


def lint_training(document: Mapping[str, Any], script: str, file: str,
                  snapshot: Mapping[str, Any] | None = None) -> list[ConfigProblem]:
    """Keys, types, choices and duplicates of a training TOML, checked as sd-scripts flattens it."""
    snap = snapshot or load_snapshot()
    actions = parser_actions(script, snap)
    other_scripts = {s: parser_actions(s, snap) for s in snap["parsers"] if s != script}
    dataset_keys = {k for level in snap["dataset_schema"].values() for k in level}
    problems: list[ConfigProblem] = []
    seen: dict[str, str] = {}
    flat = kohya.flatten_training_config(document)
    items: list[tuple[str, str, Any]] = []
    for section, value in document.items():
        if isinstance(value, dict):
            items.extend((f"{section}.{k}", k, v) for k, v in value.items())
        else:
            items.append((section, section, value))
    for where, key, value in items:
        if key in seen:
            problems.append(ConfigProblem(file=file, key=where, problem=f"also set as {seen[key]}; sd-scripts silently "
                                    "uses the last one", fix="keep the key in one section only"))
        seen[key] = where
        action = actions.get(key)
        if action is None:
            elsewhere = [s for s, acts in other_scripts.items() if key in acts]
            if gap := version_gap(key, script, snap):
                problem, fix = gap
            elif elsewhere:
                problem = f"is not an option of {script} (only of {', '.join(elsewhere)}); sd-scripts ignores it"
                fix = "remove it, or use the preset for that model family"
            elif key in dataset_keys and key not in actions:
                problem = "is a dataset option; in a training TOML sd-scripts ignores it"
                fix = "move it to the stage's dataset TOML"
            else:
                suggestion = _suggest(key, actions)
                problem = "unknown option; sd-scripts silently ignores it"
                fix = f"did you mean {suggestion!r}?" if suggestion else "check the spelling in sd-scripts' docs"
            problems.append(ConfigProblem(file=file, key=where, problem=problem, fix=fix))
            continue
        found = check_training_value(action, value) or startup_value_problem(key, value, flat)
        if found:
            problems.append(ConfigProblem(file=file, key=where, problem=found[0], fix=found[1]))
    return problems


POSITIVE_TRAINING_KEYS = (opt.TRAIN_BATCH_SIZE, opt.MAX_TRAIN_EPOCHS, opt.MAX_TRAIN_STEPS, "dataset_repeats",
                          opt.LEARNING_RATE, opt.UNET_LR, opt.TEXT_ENCODER_LR)
"""Training options whose zero or negative value crashes sd-scripts or trains nothing."""
POSITIVE_DATASET_KEYS = (opt.BATCH_SIZE, opt.NUM_REPEATS)


def _network_arg_problem(item: str) -> str | None:
    key, equals, value = item.partition("=")
    if not equals or not key.strip() or key != key.strip() or any(c.isspace() for c in key):
        return "is not a key=value token; sd-scripts stops at `key, value = arg.split(\"=\", 1)`"
    if any("=" in token for token in value.split()[1:]) or (value.split() and value != value.strip()):
        return f"holds several settings in one entry; the network module reads {key}={value.split()[0]!r}... " \
               "as one value and crashes"
    return None


def startup_value_problem(key: str, value: Any, flat: Mapping[str, Any]) -> tuple[str, str] | None:
    """(problem, fix) for a well-typed value that sd-scripts still refuses (or ignores) at start-up."""
    if key in POSITIVE_TRAINING_KEYS:
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, (int, float)) and not isinstance(item, bool) and item <= 0:
                example = {opt.LEARNING_RATE: "0.0001", opt.UNET_LR: "0.0001", opt.TEXT_ENCODER_LR: "0.00005"}
                return (f"{_literal(item)} must be positive (sd-scripts crashes or trains nothing)",
                        f"write a positive value, e.g. {key} = {example.get(key, '1')}")
    if key == opt.LR_SCHEDULER and isinstance(value, str) and not flat.get(opt.LR_SCHEDULER_TYPE):
        optimizer = flat.get(opt.OPTIMIZER_TYPE)
        if isinstance(optimizer, str) and optimizer.lower().endswith(kohya.SCHEDULEFREE_SUFFIX):
            return None  # sd-scripts uses a dummy scheduler then
        problem = kohya.scheduler_problem(value, optimizer if isinstance(optimizer, str) else None, flat)
        if problem and value in kohya.SCHEDULER_NEEDS:
            needed = {"cosine_with_min_lr": f"{opt.LR_SCHEDULER_MIN_LR_RATIO} = 0.1",
                      "piecewise_constant": f'{opt.LR_SCHEDULER_ARGS} = ["step_rules=\'100:1.0,0.1\'"]'}[value]
            return (f"{problem}; sd-scripts stops after loading the model", f"write {needed}")
        if problem:
            plain = [n for n in kohya.LR_SCHEDULERS if n not in kohya.SCHEDULER_NEEDS]
            guess = _suggest(value, plain) or "cosine"
            return (f"{problem}; sd-scripts stops after loading the model",
                    f'write {opt.LR_SCHEDULER} = "{guess}" (one of {", ".join(kohya.LR_SCHEDULERS)})')
    if key == opt.OPTIMIZER_TYPE and isinstance(value, str):
        problem = kohya.optimizer_problem(value)
        top = value.split(".", 1)[0]
        if not problem and "." in value and importlib.util.find_spec(top) is None:
            problem = f"module {top!r} of {value!r} is not installed"
        if problem:
            guess = _suggest(value, [*kohya.NAMED_OPTIMIZERS, *kohya.TORCH_OPTIMIZERS]) or "AdamW"
            return (f"{problem}; sd-scripts stops after loading the model",
                    f'write {opt.OPTIMIZER_TYPE} = "{guess}" (or a module.Class optimizer)')
    if key == opt.NETWORK_ARGS and isinstance(value, list):
        for item in value:
            problem = _network_arg_problem(str(item))
            if problem:
                tokens = [t for i in value for t in str(i).split()]
                keyless = [t for t in tokens if "=" not in t]
                fix = f"write one key=value per entry: {opt.NETWORK_ARGS} = " \
                      f"[{', '.join(_literal(t) for t in tokens if '=' in t)}]"
                if keyless:
                    fix += f" (plus {', '.join(keyless)} as key=value, e.g. algo=loha)"
                return (f"entry {_literal(item)} {problem}", fix)
    if key == opt.RESOLUTION and isinstance(value, str):
        parts = value.split(",")
        if len(parts) > 2 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
            return (f"{_literal(value)} is not \"SIZE\" or \"WIDTH,HEIGHT\"; sd-scripts stops parsing it",
                    "remove it here and set resolution = 512 in the stage's dataset TOML")
    return None
