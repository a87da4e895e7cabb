"""What runs inside the plugin process (see worker/plugin_process.py): one job at a time, for
as long as the worker keeps it, so models and ONNX sessions load once per process.

It starts in a process group of its own (the worker kills it and the ffmpeg/exiftool it started
in one call), dies with the worker (parent-death signal), ignores Ctrl-C (the worker decides
when to stop), caps its own address space (RLIMIT_AS) before it loads any plugin, and loads the
models of its tasks before it says it is ready.

Messages, over one pipe: the worker sends (task_type, job, params); the child answers
("ready",) once, then per job any number of ("progress", percent) and one of
("result", plugin_result) / ("raised", reason) / ("memory", reason).
"""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import signal
import threading
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from typing import Any

from cl_ml_tools import ComputeModule

from compute import deathsignal
from compute.config import Settings
from compute.plugins import environment
from compute.plugins.registry import unavailable_reason

log = logging.getLogger(__name__)

MB = 1024 * 1024


def memory_limit_reason(limit_mb: int) -> str:
    return f"plugin exceeded the memory limit of {limit_mb} MB"


def main(
    conn: Connection,
    settings: Settings,
    tasks: dict[str, ComputeModule],
    setups: Sequence[Callable[[], None]],
) -> None:
    """The child's entry point (a multiprocessing target, forked by the fork server)."""
    os.setpgid(0, 0)
    deathsignal.die_with_parent(signal.SIGKILL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(
        level=settings.log_level,
        format="%(asctime)s %(levelname)s [plugins %(process)d] %(name)s: %(message)s",
    )
    limit = settings.plugin_memory_limit_mb
    if limit:
        resource.setrlimit(resource.RLIMIT_AS, (limit * MB, limit * MB))
    environment.configure(settings)
    for setup in setups:
        setup()
    for task in tasks.values():
        unavailable_reason(task)  # loads a model-backed task's model now, before any job's clock
    asyncio.run(_serve(conn, tasks, limit))


async def _serve(conn: Connection, tasks: dict[str, ComputeModule], limit_mb: int) -> None:
    lock = threading.Lock()  # a plugin may report progress from threads of its own

    def send(message: tuple[Any, ...]) -> None:
        with lock:
            conn.send(message)

    try:
        send(("ready",))
        while True:
            task_type, job, params = conn.recv()
            send(
                await _run(
                    tasks[task_type], job, params, lambda percent: send(("progress", percent)), limit_mb
                )
            )
    except (EOFError, BrokenPipeError, ConnectionResetError):
        return  # the worker closed the pipe: it is stopping, or gone


async def _run(
    plugin: ComputeModule, job: Any, params: Any, report: Callable[[int], None], limit_mb: int
) -> tuple[Any, ...]:
    try:
        result = await plugin.execute(job, params, report)
    except MemoryError:
        # Past the cap, the allocation failed; unwinding freed it, so the reply can be built.
        log.warning("job %s: %s", job.job_id, memory_limit_reason(limit_mb) if limit_mb else "out of memory")
        return ("memory", memory_limit_reason(limit_mb) if limit_mb else "MemoryError: out of memory")
    except asyncio.CancelledError:
        return ("raised", "plugin task cancelled")
    except Exception as exc:
        log.exception("job %s: plugin %s raised", job.job_id, job.task_type)
        return ("raised", f"{type(exc).__name__}: {exc}")
    return ("result", result)
