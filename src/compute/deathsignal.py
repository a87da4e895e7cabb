"""Linux's parent-death signal (prctl PR_SET_PDEATHSIG): a child process that dies with its
parent, even when the parent is killed with kill -9. A no-op elsewhere.

The signal fires when the *thread* that started the child ends, not the process: start such
children from a thread that lives as long as the parent needs them.
"""

from __future__ import annotations

import signal
from collections.abc import Callable

PR_SET_PDEATHSIG = 1


def _prctl() -> Callable[..., int] | None:
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # not Linux
        return None


def preexec(sig: signal.Signals = signal.SIGTERM) -> Callable[[], None] | None:
    """A preexec_fn making the child get `sig` when its parent dies, or None where unsupported.

    prctl is looked up here, in the parent: between fork and exec the child may only make the
    call, not import or load anything.
    """
    prctl = _prctl()
    if prctl is None:
        return None

    def set_death_signal() -> None:
        prctl(PR_SET_PDEATHSIG, sig)

    return set_death_signal


def die_with_parent(sig: signal.Signals = signal.SIGKILL) -> None:
    """Make this process get `sig` when its parent dies."""
    prctl = _prctl()
    if prctl is not None:
        prctl(PR_SET_PDEATHSIG, sig)
