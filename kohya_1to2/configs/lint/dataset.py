"""The dataset TOML against sd-scripts' own (strict) voluptuous schema, as readable problems."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from kohya_1to2.configs.lint.problems import (
    ConfigProblem,
    _literal,
    _suggest,
    _type_name,
    load_snapshot,
    parser_actions,
)
from kohya_1to2.configs.lint.training import POSITIVE_DATASET_KEYS
from kohya_1to2.configs.lint.version import dataset_version_gap
from kohya_1to2.kohya import TRAINING_SCRIPTS


def value_fits(value: Any, descriptor: str) -> bool:
    """Does a TOML value satisfy a schema type expression (`int`, `float|int`, `int|int[2]`, `float[2]`...)?"""
    for part in descriptor.split("|"):
        if part.endswith("[2]"):
            inner = part[:-3]
            if isinstance(value, list) and len(value) == 2 and all(value_fits(v, inner) for v in value):
                return True
        elif part == "None":
            if value is None:
                return True
        elif part == "bool":
            if isinstance(value, bool):
                return True
        elif part == "int":
            if isinstance(value, int) and not isinstance(value, bool):
                return True
        elif part == "float":
            if isinstance(value, float):
                return True
        elif part == "str":
            if isinstance(value, str):
                return True
        elif part == "dict" and isinstance(value, dict):
            return True
    return False


def _describe(descriptor: str) -> str:
    words = {"bool": "true/false", "int": "an integer", "float": "a float with a decimal point (1.0, not 1)",
             "str": "a string", "dict": "a table", "int[2]": "[width, height] integers",
             "float[2]": "[a, b] floats", "None": "nothing"}
    return " or ".join(words.get(p, p) for p in descriptor.split("|"))


LEVEL_NAMES = {"general": "[general]", "dataset": "[[datasets]]", "subset": "[[datasets.subsets]]"}


def _dataset_key_problem(key: str, level: str, snapshot: Mapping[str, Any],
                         training_keys: Iterable[str]) -> tuple[str, str]:
    if gap := dataset_version_gap(key, snapshot):
        return gap
    schema: Mapping[str, Mapping[str, Any]] = snapshot["dataset_schema"]
    allowed = [LEVEL_NAMES[lv] for lv in ("general", "dataset", "subset") if key in schema[lv]]
    if allowed:
        return (f"not allowed in {LEVEL_NAMES[level]}; sd-scripts rejects the file",
                f"move it to {' or '.join(allowed)}")
    if key in set(training_keys):
        return ("is a training option, not a dataset option; sd-scripts rejects the file",
                "move it to the stage's training TOML")
    suggestion = _suggest(key, {k for lv in schema.values() for k in lv})
    return ("unknown dataset option; sd-scripts rejects the file",
            f"did you mean {suggestion!r}?" if suggestion else "remove it")


def _table_problems(table: Mapping[str, Any], level: str, where: str, file: str, snapshot: Mapping[str, Any],
                    training_keys: Mapping[str, Any]) -> list[ConfigProblem]:
    """One [general], [[datasets]] or [[datasets.subsets]] table against its level of the schema."""
    problems: list[ConfigProblem] = []
    schema = snapshot["dataset_schema"]
    level_schema = schema[level]
    if level == "subset" and "metadata_file" in table:
        level_schema = schema["finetune_subset"]
    for key, value in table.items():
        if level == "dataset" and key == "subsets":
            continue
        if key not in level_schema:
            problem, fix = _dataset_key_problem(key, level, snapshot, training_keys)
            problems.append(ConfigProblem(file=file, key=f"{where}.{key}", problem=problem, fix=fix))
            continue
        descriptor = level_schema[key]["type"]
        if not value_fits(value, descriptor):
            problems.append(ConfigProblem(
                file=file, key=f"{where}.{key}",
                problem=f"must be {_describe(descriptor)}, got {_type_name(value)} {_literal(value)}",
                fix=f"write {key} = {_example(value, descriptor)}"))
        elif key in POSITIVE_DATASET_KEYS and isinstance(value, int) and value <= 0:
            problems.append(ConfigProblem(file=file, key=f"{where}.{key}",
                                    problem=f"{value} must be positive (sd-scripts crashes or trains nothing)",
                                    fix=f"write {key} = 1"))
    for key, spec in level_schema.items():
        if spec.get("required") and key not in table:
            problems.append(ConfigProblem(file=file, key=f"{where}.{key}", problem="required key missing",
                                    fix=f'add {key} = "/absolute/path/to/images"'))
    return problems


def lint_dataset(document: Mapping[str, Any], file: str, snapshot: Mapping[str, Any] | None = None,
                 script: str = TRAINING_SCRIPTS["sd1"]) -> list[ConfigProblem]:
    """The dataset TOML against sd-scripts' own (strict) schema, as readable problems."""
    snap = snapshot or load_snapshot()
    training_keys = parser_actions(script, snap)
    problems: list[ConfigProblem] = []

    for key, value in document.items():
        if key == "general":
            if isinstance(value, dict):
                problems += _table_problems(value, "general", "general", file, snap, training_keys)
            else:
                problems.append(ConfigProblem(file=file, key="general", problem="must be a table",
                                        fix="write it as a [general] section"))
        elif key == "datasets":
            if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
                problems.append(ConfigProblem(file=file, key="datasets", problem="must be an array of tables",
                                        fix="write each dataset as [[datasets]]"))
                continue
            for i, dataset in enumerate(value):
                problems += _table_problems(dataset, "dataset", f"datasets[{i}]", file, snap, training_keys)
                subsets = dataset.get("subsets", [])
                if not isinstance(subsets, list) or not all(isinstance(s, dict) for s in subsets):
                    problems.append(ConfigProblem(file=file, key=f"datasets[{i}].subsets",
                                            problem="must be an array of tables",
                                            fix="write each subset as [[datasets.subsets]]"))
                    continue
                for j, subset in enumerate(subsets):
                    problems += _table_problems(subset, "subset", f"datasets[{i}].subsets[{j}]", file, snap,
                                               training_keys)
        else:
            problem, fix = _dataset_key_problem(key, "general", snap, training_keys)
            if "not allowed" in problem:
                fix = "move it into [general]"
            problems.append(ConfigProblem(file=file, key=key, problem=f"top-level key: {problem}", fix=fix))
    return problems


def _example(value: Any, descriptor: str) -> str:
    first = descriptor.split("|")[0]
    if first == "float" and isinstance(value, (int, str)) and not isinstance(value, bool):
        try:
            return repr(float(value))
        except ValueError:
            return "1.0"
    if first == "int" and isinstance(value, (str, float)) and not isinstance(value, bool):
        try:
            return str(int(float(value)))
        except ValueError:
            return "1"
    if first == "bool":
        return "true" if str(value).lower() in ("1", "true", "yes", "on") else "false"
    if first == "str":
        return json.dumps(str(value), ensure_ascii=False)
    return _describe(descriptor)


def is_dataset_document(document: Mapping[str, Any]) -> bool:
    return "datasets" in document or "general" in document
