"""Compute's own exceptions: one base class, the docstring is the default message.

Every exception the package defines derives from `ComputeError` (one that callers also catch as
a `ValueError` keeps that base beside it), except the `compute` command's (console/api.py), which
imports nothing of the package. `first_line` is how a message goes into a log line or a reply.
"""

from __future__ import annotations


class ComputeError(Exception):
    """A compute service error."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


class ConfigError(ComputeError):
    """The configuration is invalid."""


class NotMigrated(ComputeError):
    """The database has no compute tables yet: run `compute-migrate` first."""


class ServerUnavailable(ComputeError):
    """The compute server does not answer."""


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The first line of `exc`'s message, at most `limit` characters; the name of its type when
    it has none. A driver's message can run to many lines (the SQL, a hint, a traceback)."""
    lines = str(exc).splitlines()
    return (lines[0] if lines and lines[0].strip() else type(exc).__name__)[:limit]
