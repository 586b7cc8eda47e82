"""Command line: parse arguments, run one command, map errors to exit codes.

Each command lives in `kohya_1to2/commands/<name>.py` with a `run(args, console) -> int`; commands are
imported lazily so `--help` and `launch` stay fast (the wrapper never imports torch).
"""

from __future__ import annotations

import argparse
import importlib
import sys
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel
from rich.console import Console
from rich.text import Text

from kohya_1to2 import __version__
from kohya_1to2.errors import INTERNAL_ERROR_EXIT, Interrupted, OneToTwoError, UsageError
from kohya_1to2.models import CaptionRules, CompositeSettings, SourceSettings, TrainingSettings

EXIT_CODES_HELP = (
    "exit codes: 0 ok, 2 usage/settings, 3 bad input data, 4 check found problems, "
    "5 environment, 6 training failed, 130 interrupted"
)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _scalar_type(annotation: Any) -> tuple[Any, tuple[Any, ...] | None]:
    """The argparse `type` and `choices` for a model field's annotation."""
    origin = get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in get_args(annotation) if a is not type(None)]
        return _scalar_type(inner[0])
    if origin is Literal:
        return str, get_args(annotation)
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

    Every flag defaults to None ("not given"), so the model, not argparse, supplies defaults.
    """
    for name, field in model.model_fields.items():
        if name in exclude or (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
            continue
        default = field.get_default(call_default_factory=True)
        help_text = field.description or name
        if default is not None:
            help_text += f" (default: {default})"
        dest = f"{dest_prefix}__{name}"
        if field.annotation is bool:
            parser.add_argument(
                _flag(name), dest=dest, action=argparse.BooleanOptionalAction, default=None, help=help_text
            )
            continue
        arg_type, choices = _scalar_type(field.annotation)
        metavar = None if choices else name.upper()
        parser.add_argument(
            _flag(name), dest=dest, type=arg_type, choices=choices, default=None, help=help_text, metavar=metavar
        )


def model_overrides(args: argparse.Namespace, dest_prefix: str) -> dict[str, Any]:
    """The flags of one model that the user actually gave."""
    prefix = dest_prefix + "__"
    return {
        key[len(prefix) :]: value
        for key, value in vars(args).items()
        if key.startswith(prefix) and value is not None
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kohya-1to2",
        description="1to2: train multi-character LoHa with kohya-ss sd-scripts from single-character data.",
        epilog=EXIT_CODES_HELP,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    prepare = sub.add_parser(
        "prepare",
        help="scan sources, build the composite dataset and write both stages' TOMLs",
        epilog=EXIT_CODES_HELP,
    )
    prepare.add_argument("roots", nargs="+", type=Path, metavar="SOURCE", help="kohya dataset root(s)")
    prepare.add_argument("--out", type=Path, required=True, help="run directory to create or update")
    prepare.add_argument("--force", action="store_true", help="rebuild every composite")
    prepare.add_argument(
        "--overwrite-edits", action="store_true", help="discard hand edits in generated TOMLs (a backup is kept)"
    )
    prepare.add_argument(
        "--dry-run", action="store_true", help="scan, check and print the plan; write nothing"
    )
    add_model_flags(prepare.add_argument_group("sources"), SourceSettings, dest_prefix="sources", exclude=["roots"])
    add_model_flags(prepare.add_argument_group("composites"), CompositeSettings, dest_prefix="composites")
    add_model_flags(prepare.add_argument_group("captions"), CaptionRules, dest_prefix="captions")
    add_model_flags(prepare.add_argument_group("training"), TrainingSettings, dest_prefix="training")

    plan = sub.add_parser("plan", help="print the plan of a prepared run directory (steps, buckets, cost)")
    plan.add_argument("run_dir", type=Path)

    check = sub.add_parser("check", help="lint a run directory's TOMLs (or one TOML) against the pinned sd-scripts")
    check.add_argument("target", type=Path, help="run directory or a .toml file")

    launch = sub.add_parser("launch", help="train stage 1 then stage 2 through accelerate + sd-scripts")
    launch.add_argument("run_dir", type=Path)
    launch.add_argument("--dry-run", action="store_true", help="print the exact commands and environment")
    launch.add_argument("--force", action="store_true", help="re-run stages that are already complete")
    launch.add_argument("--stage", type=int, choices=(1, 2), help="run only this stage")
    launch.add_argument("--from-stage", type=int, choices=(1, 2), help="start at this stage")
    launch.add_argument("--strict", action="store_true", help="refuse to substitute GPU-only options")
    launch.add_argument("--smoke", action="store_true", help="CPU smoke profile: tiny model, a few steps")
    launch.add_argument("--sd-scripts", type=Path, default=None, help="sd-scripts checkout (default: vendor/)")
    launch.add_argument("--resume", action="store_true", help="resume an interrupted stage from its saved state")
    acc = launch.add_argument_group("accelerate (passed through to `accelerate launch`)")
    acc.add_argument("--num-processes", type=int)
    acc.add_argument("--multi-gpu", action="store_true")
    acc.add_argument("--num-machines", type=int)
    acc.add_argument("--machine-rank", type=int)
    acc.add_argument("--main-process-ip")
    acc.add_argument("--main-process-port", type=int)
    acc.add_argument("--mixed-precision", choices=("no", "fp16", "bf16"))
    acc.add_argument("--num-cpu-threads-per-process", type=int)
    acc.add_argument("--gpu-ids")
    acc.add_argument("--accelerate-config", type=Path, help="an accelerate config file (--config_file)")

    evaluate = sub.add_parser("evaluate", help="fixed-seed image grids of base vs stage 1 vs stage 2, metrics, report")
    evaluate.add_argument("run_dir", type=Path)
    evaluate.add_argument("--epochs", default="last", help="stage-2 epochs as rows: last, all or N,M (default: last)")
    evaluate.add_argument("--seeds", type=int, default=4, help="images per prompt and row (same seeds in every row)")
    evaluate.add_argument("--steps", type=int, help="sampling steps (default: the preset's sample_steps)")
    evaluate.add_argument("--prompts", type=Path, help="extra prompts, one per line in sd-scripts' prompt syntax")
    evaluate.add_argument("--singles", type=int, help="at most this many single-character prompts (default: all)")
    evaluate.add_argument("--pairs", type=int, help="at most this many ordered-pair prompts (default: all)")
    evaluate.add_argument("--multiplier", type=float, default=1.0, help="network multiplier (gen_img --network_mul)")
    evaluate.add_argument("--sd-scripts", type=Path, default=None, help="sd-scripts checkout (default: vendor/)")

    report = sub.add_parser("report", help="write <run>/report.html: sources, plans, configs, losses, samples, grids")
    report.add_argument("run_dir", type=Path)

    setup = sub.add_parser("setup", help="put the pinned sd-scripts in vendor/ and install the training stack")
    setup.add_argument("--archive", type=Path, default=None,
                       help="offline: an archive of the pinned sd-scripts tree (default: $SD_SCRIPTS_ARCHIVE)")
    setup.add_argument("--no-deps", action="store_true", help="only set up sd-scripts; install no packages")

    doctor = sub.add_parser("doctor", help="show the training environment and what launch will substitute")
    doctor.add_argument("--sd-scripts", type=Path, default=None)
    doctor.add_argument("--strict", action="store_true", help="exit non-zero if anything would be substituted")
    doctor.add_argument("run_dir", nargs="?", type=Path, default=None, help="also check this run's base model")
    doctor.add_argument("--base-model", default=None, help="also check this base model file or folder")

    tiny = sub.add_parser("make-tiny-model", help="build a random-init SD1 model for CPU smoke runs")
    tiny.add_argument("out", type=Path, help="directory to write the model to")

    demo = sub.add_parser("demo", help="the bundled example end to end: prepare + launch (smoke on CPU)")
    demo.add_argument("--out", type=Path, default=Path("runs/example"))
    demo.add_argument("--base-model", default=None, help="real base model; default: tiny CPU smoke model")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    console = Console(stderr=False, highlight=False)
    errors = Console(stderr=True, highlight=False)
    try:
        module = importlib.import_module(f"kohya_1to2.commands.{args.command.replace('-', '_')}")
        return int(module.run(args, console))
    except OneToTwoError as exc:
        if args.debug:
            raise
        # File names may contain "[...]": print user text as plain Text, never as markup.
        errors.print(Text.assemble(("error: ", "bold red"), exc.message), soft_wrap=True)
        if exc.hint:
            errors.print(Text.assemble(("hint: ", "yellow"), exc.hint), soft_wrap=True)
        return exc.exit_code
    except KeyboardInterrupt:
        errors.print("[bold red]interrupted[/]", markup=True)
        return Interrupted.exit_code
    except Exception as exc:  # a bug, not a user mistake: one line, the traceback on request
        if args.debug:
            raise
        errors.print(Text.assemble(("internal error: ", "bold red"), f"{type(exc).__name__}: {exc}; "
                                   "run with --debug for the traceback"), soft_wrap=True)
        return INTERNAL_ERROR_EXIT


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())


__all__ = ["UsageError", "add_model_flags", "build_parser", "main", "model_overrides"]
