"""One exception family; the CLI edge maps each class to a documented exit code.

Exit codes (also in README.md):
  0 success · 1 unexpected internal error · 2 usage / job settings · 3 bad input data
  4 `check` found problems · 5 environment (sd-scripts, packages, model) · 6 training failed
  130 interrupted
"""

from __future__ import annotations

INTERNAL_ERROR_EXIT = 1
"""Any exception outside this family: a bug, reported as one `internal error:` line."""


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
