"""What runs inside the plugin process (see worker/plugin_process.py): one job, or one batch of
jobs, at a time, for as long as the worker keeps it, so models and ONNX sessions load once per
process.

It starts in a process group of its own (the worker kills it and the ffmpeg/exiftool it started
in one call), dies with the worker (parent-death signal), ignores Ctrl-C (the worker decides
when to stop), caps its own address space (RLIMIT_AS) before it loads any plugin, and loads the
models of its tasks before it says it is ready.

Messages, over one pipe: the child says ("ready", batchable) once, `batchable` being the task
types whose plugin takes several jobs in one call (their model takes a batch). The worker sends
(task_type, [(job, params), ...]): one job, or a batch for such a task. The child answers any
number of ("progress", index, percent), index being the job's place in the list, then one
("outcomes", [outcome per job]), each outcome one of ("result", plugin_result) /
("raised", reason) / ("memory", reason): a job's crash is its own, its batch-mates keep theirs.
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


def batchable(tasks: dict[str, ComputeModule]) -> list[str]:
    """The task types whose plugin says it takes batches (asked here, where its model is loaded)."""
    found = []
    for name, task in tasks.items():
        check = getattr(task, "batchable", None)
        try:
            if callable(check) and check() and callable(getattr(task, "execute_batch", None)):
                found.append(name)
        except Exception:
            log.exception("plugin %s: batchable() raised; its jobs run one at a time", name)
    return found


async def _serve(conn: Connection, tasks: dict[str, ComputeModule], limit_mb: int) -> None:
    lock = threading.Lock()  # a plugin may report progress from threads of its own

    def send(message: tuple[Any, ...]) -> None:
        with lock:
            conn.send(message)

    def reporter(index: int) -> Callable[[int], None]:
        return lambda percent: send(("progress", index, percent))

    try:
        send(("ready", batchable(tasks)))
        while True:
            task_type, jobs = conn.recv()
            plugin = tasks[task_type]
            batch = [(job, params, reporter(index)) for index, (job, params) in enumerate(jobs)]
            send(("outcomes", await _run(plugin, batch, limit_mb)))
    except (EOFError, BrokenPipeError, ConnectionResetError):
        return  # the worker closed the pipe: it is stopping, or gone


async def _run(
    plugin: ComputeModule, batch: list[tuple[Any, Any, Callable[[int], None]]], limit_mb: int
) -> list[tuple[str, Any]]:
    """Each job's outcome message. One job goes through `execute`, several through the plugin's
    `execute_batch`; what that raises is every job's (it gave none its own outcome)."""
    try:
        if len(batch) == 1:
            job, params, report = batch[0]
            results: list[Any] = [await plugin.execute(job, params, report)]
        else:
            results = list(await plugin.execute_batch(batch))
            if len(results) != len(batch):
                raise RuntimeError(f"execute_batch gave {len(results)} results for {len(batch)} jobs")
    except (Exception, asyncio.CancelledError) as exc:
        results = [exc] * len(batch)
    return [_outcome(result, job, limit_mb) for result, (job, _, _) in zip(results, batch, strict=True)]


def _outcome(result: Any, job: Any, limit_mb: int) -> tuple[str, Any]:
    if isinstance(result, MemoryError):
        # Past the cap, the allocation failed; unwinding freed it, so the reply can be built.
        log.warning("job %s: %s", job.job_id, memory_limit_reason(limit_mb) if limit_mb else "out of memory")
        return ("memory", memory_limit_reason(limit_mb) if limit_mb else "MemoryError: out of memory")
    if isinstance(result, asyncio.CancelledError):
        return ("raised", "plugin task cancelled")
    if isinstance(result, BaseException):
        log.error("job %s: plugin %s raised", job.job_id, job.task_type, exc_info=result)
        return ("raised", f"{type(result).__name__}: {result}")
    return ("result", result)
