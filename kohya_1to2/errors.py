"""One exception family; the CLI edge maps each class to a documented exit code (EXIT_CODES below is the one
table: `--help` and docs/development.md's table are checked against it)."""

from __future__ import annotations

INTERNAL_ERROR_EXIT = 1
"""Any exception outside this family: a bug, reported as one `internal error:` line."""

EXIT_CODES: tuple[tuple[int, str, str], ...] = (
    (0, "ok", "success"),
    (INTERNAL_ERROR_EXIT, "internal error", "unexpected internal error (please report; `--debug` shows the traceback)"),
    (2, "usage/settings", "bad command-line options or job settings, or the run directory is in use"),
    (3, "bad input data", "bad input data (corrupt image, empty or non-UTF-8 caption, one character, ...)"),
    (4, "check found problems", "`check` found problems in a TOML"),
    (5, "environment", "environment: sd-scripts missing or at the wrong version, packages, base model, a disk full "
                       "or not writable"),
    (6, "training failed", "a training stage failed or trained nothing"),
    (130, "interrupted", "interrupted (Ctrl-C / SIGTERM)"),
)
"""(code, short name for --help, README wording); the classes below carry their code."""


class OneToTwoError(Exception):
    """Base of every error the CLI reports as one line plus an optional hint."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class UsageError(OneToTwoError):
    """Bad command-line options or job settings."""

    exit_code = 2


class DatasetError(OneToTwoError):
    """The source dataset cannot be used (corrupt image, empty caption, one character...)."""

    exit_code = 3


class CheckError(OneToTwoError):
    """`check` found problems in a generated or hand-edited TOML."""

    exit_code = 4


class SetupError(OneToTwoError):
    """The training environment is missing or wrong (sd-scripts pin, packages, base model)."""

    exit_code = 5


class TrainingError(OneToTwoError):
    """A training stage failed or produced nothing."""

    exit_code = 6


class Interrupted(OneToTwoError):
    """The user pressed Ctrl-C or the process got SIGTERM."""

    exit_code = 130
