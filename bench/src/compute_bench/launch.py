"""The benchmark's way to start Compute: `python -m compute_bench.launch {server|worker} [options]`.

The product knows nothing of the benchmark. This launcher adds what the benchmark needs to
one process, then hands over to the product's own command line (`compute.cli.server_main` /
`compute.cli.worker_main`, with the same options as `compute-server` / `compute-worker`):

* the `bench_noop` task plugin, registered in-process (compute.plugins.registry.register),
  so only the benchmark's own server and workers know it;
* the measurement probes (compute_bench.probes), when COMPUTE_BENCH_PROBES names a directory,
  in the worker's plugin process too (where plugins open their inputs and load models);
* a wall clock off by COMPUTE_BENCH_CLOCK_OFFSET seconds (`time.time`, `time.time_ns`; the
  monotonic clock keeps going as it does), for tests of hosts whose clocks differ.
"""

from __future__ import annotations

import functools
import os
import sys
import time
from collections.abc import Callable, Sequence

from compute import cli
from compute.plugins.registry import register
from compute.worker import plugin_process
from compute_bench import noop, probes

#: Seconds this process's wall clock is put off by (negative: behind).
CLOCK_OFFSET_ENV = "COMPUTE_BENCH_CLOCK_OFFSET"

ROLES: dict[str, Callable[[Sequence[str] | None], int]] = {
    "server": cli.server_main,
    "worker": cli.worker_main,
}


def prepare(role: str) -> None:
    """Register the benchmark's plugin and install its probes in this process."""
    offset = float(os.environ.get(CLOCK_OFFSET_ENV) or 0)
    if offset:
        shift_wall_clock(offset)
    register(noop.TASK_TYPE, noop.BenchNoopTask, noop.create_router)
    directory = os.environ.get(probes.ENV)
    if directory:
        probes.install(directory, role)
        if role == "worker":
            plugin_process.child_setups.append(
                functools.partial(probes.install, directory, role, plugin_process=True)
            )


def shift_wall_clock(seconds: float) -> None:
    """Put this process's wall clock `seconds` off, as on a host whose clock is."""
    true_ns, offset = time.time_ns, int(seconds * 1e9)
    time.time_ns = lambda: true_ns() + offset
    time.time = lambda: (true_ns() + offset) / 1e9


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] not in ROLES:
        print(
            "usage: python -m compute_bench.launch {server|worker} [options of compute-server "
            "or compute-worker]",
            file=sys.stderr,
        )
        return 2
    role = args[0]
    prepare(role)
    return ROLES[role](args[1:])


if __name__ == "__main__":
    sys.exit(main())
