"""Compute's own exceptions: one base class, the docstring is the default message."""

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
