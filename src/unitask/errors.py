"""User-facing errors: what went wrong, where, and how to fix it. The CLI prints them without a
traceback (unless --debug) and exits with `exit_code`."""

from __future__ import annotations


class UnitaskError(Exception):
    """Bad input or a failed precondition that the user can fix."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message + (f"\n  fix: {self.hint}" if self.hint else "")


class ConfigError(UnitaskError):
    """The configuration (params file, overrides, or data it declares) is invalid."""

    exit_code = 2


class DataError(UnitaskError):
    """Data that cannot be fetched, read or trusted (missing, corrupt, wrong version)."""


class RefusedData(DataError):
    """Data that reads but is not fit to train on (a column named twice, NUL bytes in text, blank
    text, too few rows to split): refused with exit code 2, as a bad config is, before any write."""

    exit_code = 2
