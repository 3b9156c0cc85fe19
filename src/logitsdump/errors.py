"""The user-facing error hierarchy.

Every problem a user can fix (a bad flag value, a malformed file, a missing
folder, a command that cannot be launched) is raised as a `UserError`. The CLI
catches it once and prints one line; anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations

#: Exit status for usage errors (argparse uses the same).
EXIT_USAGE = 2
#: Exit status for runtime failures.
EXIT_FAILURE = 1


class UserError(Exception):
    """A problem the user can fix. `str(err)` is the one-line message."""

    exit_code: int = EXIT_FAILURE

    def __init__(self, message: str, *, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class ConfigError(UserError):
    """A model or task YAML file, or a flag value, is wrong."""


class DataError(UserError):
    """A dataset, CSV or other input file is missing or malformed."""


class FileFormatError(DataError):
    """A logits file cannot be read as a tensor."""


class WriteError(UserError):
    """An output file cannot be written: disk full, quota, file-size limit, permissions."""


class LaunchError(UserError):
    """The child command of `dump` cannot be started or failed."""


class UsageError(UserError):
    """A command-line value is out of range (exit status 2, like argparse)."""

    exit_code = EXIT_USAGE
