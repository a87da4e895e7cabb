"""Start Compute with the test-only plugin: `python -m tests.support.launch {server|worker} [options]`.

Registers `test_noop` (tests.support.noop) in this process, then runs the product's own command
line (compute.cli.server_main / worker_main, with the options of compute-server / compute-worker).
Run it with the repository root on sys.path (the current directory, or PYTHONPATH).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

from compute import cli
from compute.plugins.registry import register
from tests.support import noop

ROLES: dict[str, Callable[[Sequence[str] | None], int]] = {
    "server": cli.server_main, "worker": cli.worker_main,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] not in ROLES:
        print("usage: python -m tests.support.launch {server|worker} [options]", file=sys.stderr)
        return 2
    register(noop.TASK_TYPE, noop.NoopTask, noop.create_router)
    return ROLES[args[0]](args[1:])


if __name__ == "__main__":
    sys.exit(main())
