"""Error types. Each carries the exit code the CLI returns and a one-line message.

The message names the file or field at fault and says what to do; the CLI prints it without a
traceback (``--debug`` shows one).
"""

from __future__ import annotations


class AdapmtlError(Exception):
    """Base class: an expected failure with a one-line message and an exit code."""

    exit_code = 2

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class ConfigError(AdapmtlError):
    """Usage or configuration error: bad preset, override, option or argument."""

    exit_code = 2


class MissingExtra(AdapmtlError):
    """An optional dependency (a pip extra, e.g. ``adapmtl[plot]``) is not installed."""

    exit_code = 2


class DataError(AdapmtlError):
    """A dataset root, index or file is missing or malformed."""

    exit_code = 3


class CheckpointError(AdapmtlError):
    """A checkpoint or export is missing, truncated, corrupt, unsafe or does not fit its model."""

    exit_code = 3


class GateFailed(AdapmtlError):
    """A quality gate (``eval --fail-under``) was not met."""

    exit_code = 1


class DivergedError(AdapmtlError):
    """Training produced a non-finite loss."""

    exit_code = 4


class Interrupted(AdapmtlError):
    """Ctrl-C or SIGTERM: the state was saved."""

    exit_code = 130
