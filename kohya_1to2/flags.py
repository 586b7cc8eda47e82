"""Command-line flags derived from Pydantic models: one style for every command.

A model field becomes `--field-name` with the field's description as help and its default shown; every flag
defaults to None ("not given"), so the model, not argparse, supplies defaults, and `model_overrides` returns
only what the user gave (precedence: command line > hand edit > preset > model default).
"""

from __future__ import annotations

import argparse
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _scalar_type(annotation: Any) -> tuple[Any, tuple[Any, ...] | None]:
    """The argparse `type` and `choices` for a model field's annotation."""
    origin = get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in get_args(annotation) if a is not type(None)]
        return _scalar_type(inner[0])
    if origin is Literal:
        choices = get_args(annotation)
        return type(choices[0]), choices
    if annotation in (int, float, str):
        return annotation, None
    if annotation is Path:
        return Path, None
    return str, None


def add_model_flags(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    model: type[BaseModel],
    *,
    dest_prefix: str,
    exclude: Sequence[str] = (),
) -> None:
    """Expose a model's scalar fields as flags whose help and default come from the model itself.

    Every flag defaults to None ("not given"), so the model, not argparse, supplies defaults. A field may name
    its flag (`json_schema_extra={"flag": "accelerate-config"}`) where the field name would mislead, and a str
    field its choices (`{"choices": registry}`: the registry's keys when the parser is built).
    """
    for name, field in model.model_fields.items():
        if name in exclude or (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
            continue
        default = field.get_default(call_default_factory=True)
        help_text = field.description or name
        if default is not None:
            help_text += f" (default: {default})"
        dest = f"{dest_prefix}__{name}"
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        flag = f"--{extra['flag']}" if "flag" in extra else _flag(name)
        if field.annotation is bool:
            parser.add_argument(
                flag, dest=dest, action=argparse.BooleanOptionalAction, default=None, help=help_text
            )
            continue
        if get_origin(field.annotation) is list:  # a repeatable flag: --reg A --reg B
            [item] = get_args(field.annotation)
            arg_type, choices = _scalar_type(item)
            parser.add_argument(flag, dest=dest, type=arg_type, choices=choices, default=None, action="append",
                                help=help_text.replace(" (default: [])", ""), metavar=name.upper())
            continue
        arg_type, choices = _scalar_type(field.annotation)
        if "choices" in extra:  # a registry (e.g. modes.MODES): its names when the parser is built
            choices = tuple(extra["choices"])  # type: ignore[arg-type]
        metavar = None if choices else name.upper()
        parser.add_argument(
            flag, dest=dest, type=arg_type, choices=choices, default=None, help=help_text, metavar=metavar
        )


def model_overrides(args: argparse.Namespace, dest_prefix: str) -> dict[str, Any]:
    """The flags of one model that the user actually gave."""
    prefix = dest_prefix + "__"
    return {
        key[len(prefix) :]: value
        for key, value in vars(args).items()
        if key.startswith(prefix) and value is not None
    }
