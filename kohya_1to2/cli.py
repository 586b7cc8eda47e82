"""Command line: parse arguments, run one command, map errors to exit codes.

Each command lives in `kohya_1to2/commands/<name>.py` with a `run(args, console) -> int` that turns the
arguments into models and calls the command's function; flags come from those models (kohya_1to2.flags).
Command bodies import their heavy modules lazily, so `--help` stays fast and the wrapper never imports torch.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

from rich.console import Console
from rich.text import Text

from kohya_1to2 import __version__
from kohya_1to2.commands.evaluate import EvaluateOptions
from kohya_1to2.commands.launch import LaunchOptions
from kohya_1to2.commands.prepare import PrepareOptions
from kohya_1to2.errors import EXIT_CODES, INTERNAL_ERROR_EXIT, Interrupted, OneToTwoError, UsageError
from kohya_1to2.flags import add_model_flags, model_overrides
from kohya_1to2.fsutil import MACHINE_ERRNOS, write_error
from kohya_1to2.launch.argv import AccelerateOptions
from kohya_1to2.models import CaptionRules, CompositeSettings, SourceSettings, TrainingSettings

EXIT_CODES_HELP = "exit codes: " + ", ".join(f"{code} {meaning}" for code, meaning, _ in EXIT_CODES)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kohya-1to2",
        description="1to2: train multi-character LoHa with kohya-ss sd-scripts from single-character data.",
        epilog=EXIT_CODES_HELP,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    _add_prepare(sub)
    plan = sub.add_parser("plan", help="print the plan of a prepared run directory (steps, buckets, cost)")
    plan.add_argument("run_dir", type=Path)

    check = sub.add_parser("check", help="lint a run directory's TOMLs (or one TOML) against the pinned sd-scripts")
    check.add_argument("target", type=Path, help="run directory or a .toml file")
    _add_install_flags(check)

    _add_launch_and_evaluate(sub)
    report = sub.add_parser("report", help="write <run>/report.html: sources, plans, configs, losses, samples, grids")
    report.add_argument("run_dir", type=Path)

    _add_tools(sub)
    return parser



def _add_prepare(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    prepare = sub.add_parser(
        "prepare",
        help="scan sources, build the composite dataset and write both stages' TOMLs",
        epilog=EXIT_CODES_HELP,
    )
    prepare.add_argument("roots", nargs="+", type=Path, metavar="SOURCE", help="kohya dataset root(s)")
    prepare.add_argument("--out", type=Path, required=True, help="run directory to create or update")
    add_model_flags(prepare, PrepareOptions, dest_prefix="prepare")
    add_model_flags(prepare.add_argument_group("sources"), SourceSettings, dest_prefix="sources", exclude=["roots"])
    add_model_flags(prepare.add_argument_group("composites"), CompositeSettings, dest_prefix="composites")
    add_model_flags(prepare.add_argument_group("captions"), CaptionRules, dest_prefix="captions")
    add_model_flags(prepare.add_argument_group("training"), TrainingSettings, dest_prefix="training")


def _add_launch_and_evaluate(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    launch = sub.add_parser("launch", help="train stage 1 then stage 2 through accelerate + sd-scripts")
    launch.add_argument("run_dir", type=Path)
    add_model_flags(launch, LaunchOptions, dest_prefix="launch", exclude=["run_dir"])
    add_model_flags(launch.add_argument_group("accelerate (passed through to `accelerate launch`)"),
                    AccelerateOptions, dest_prefix="accelerate")

    evaluate = sub.add_parser(
        "evaluate", help="fixed-seed image grids of the base model vs each stage's network, metrics, report; "
        "several runs of the same sources: one comparison",
        description="Evaluate RUN: one row per weights (base model, each earlier stage's final network, the final "
        "stage's epochs), the same seeds in every row. With several RUNs (prepared from the same sources), each is "
        "evaluated with the first run's prompts, seeds, sizes and steps, and their rows are compared in one grid per "
        "prompt and one metrics table: written to the first RUN's eval/compare/ and shown in its report.html.",
        epilog=EXIT_CODES_HELP)
    evaluate.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN", help="run directory; several to compare")
    add_model_flags(evaluate, EvaluateOptions, dest_prefix="evaluate", exclude=["run_dir", "compare"])


def _add_tools(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """setup, doctor, make-tiny-model, demo."""
    setup = sub.add_parser("setup", help="put the pinned sd-scripts in vendor/ and install the training stack")
    setup.add_argument("--archive", type=Path, default=None,
                       help="offline: an archive of the pinned sd-scripts tree (default: $SD_SCRIPTS_ARCHIVE)")
    setup.add_argument("--no-deps", action="store_true", help="only set up sd-scripts; install no packages")

    doctor = sub.add_parser("doctor", help="show the training environment and what launch will substitute")
    _add_install_flags(doctor)
    doctor.add_argument("--strict", action="store_true", help="exit non-zero if anything would be substituted")
    doctor.add_argument("run_dir", nargs="?", type=Path, default=None, help="also check this run's base model")
    doctor.add_argument("--base-model", default=None, help="also check this base model file or folder")

    tiny = sub.add_parser("make-tiny-model", help="build a random-init SD1 model for CPU smoke runs")
    tiny.add_argument("out", type=Path, help="directory to write the model to")

    demo = sub.add_parser("demo", help="the bundled example end to end: prepare + launch (smoke on CPU)")
    demo.add_argument("--out", type=Path, default=Path("runs/example"))
    demo.add_argument("--base-model", default=None, help="real base model; default: tiny CPU smoke model")
    demo.add_argument("--composite-style", choices=("side-by-side", "scene"), default="side-by-side",
                      help="scene: the example's characters cut out by their bundled masks (examples/masks)")


def _add_install_flags(parser: argparse.ArgumentParser) -> None:
    """--sd-scripts and --python of the commands that take no options model (launch's and evaluate's have them)."""
    for name, field in LaunchOptions.model_fields.items():
        if name in ("sd_scripts", "python"):
            parser.add_argument("--" + name.replace("_", "-"), dest=name, type=Path, default=None,
                                help=field.description)


class Terminated(KeyboardInterrupt):
    """SIGTERM, taken like Ctrl-C: every command stops the same way (workers, children, locks) and says so."""


def _terminate(_signum: int, _frame: FrameType | None) -> None:
    raise Terminated


@contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """While a command runs, SIGTERM raises `Terminated` in the main thread (Python's default would end the
    process at once, exit 143, with no message and nothing cleaned up)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    console = Console(stderr=False, highlight=False)
    errors = Console(stderr=True, highlight=False)
    try:
        module = importlib.import_module(f"kohya_1to2.commands.{args.command.replace('-', '_')}")
        with _sigterm_interrupts():
            return int(module.run(args, console))
    except OneToTwoError as exc:
        if args.debug:
            raise
        # File names may contain "[...]": print user text as plain Text, never as markup.
        errors.print(Text.assemble(("error: ", "bold red"), exc.message), soft_wrap=True)
        if exc.hint:
            errors.print(Text.assemble(("hint: ", "yellow"), exc.hint), soft_wrap=True)
        return exc.exit_code
    except KeyboardInterrupt as exc:
        errors.print("[bold red]interrupted[/]" + (" by SIGTERM" if isinstance(exc, Terminated) else ""), markup=True)
        return Interrupted.exit_code
    except OSError as exc:
        if args.debug or exc.errno not in MACHINE_ERRNOS:
            raise
        # disk full or read-only somewhere no writer named the path: still the machine's, not a bug
        error = write_error(exc.filename or "a file", exc)
        errors.print(Text.assemble(("error: ", "bold red"), error.message), soft_wrap=True)
        errors.print(Text.assemble(("hint: ", "yellow"), error.hint or ""), soft_wrap=True)
        return error.exit_code
    except Exception as exc:  # a bug, not a user mistake: one line, the traceback on request
        if args.debug:
            raise
        errors.print(Text.assemble(("internal error: ", "bold red"), f"{type(exc).__name__}: {exc}; "
                                   "run with --debug for the traceback"), soft_wrap=True)
        return INTERNAL_ERROR_EXIT


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())


__all__ = ["UsageError", "add_model_flags", "build_parser", "main", "model_overrides"]
