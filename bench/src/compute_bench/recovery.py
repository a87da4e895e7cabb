"""The `recovery` section: how soon a job runs again after its worker dies or is stopped (issue 20).

Two workers; a long `bench_noop` job starts on one of them. Then either that worker is killed
with SIGKILL (its plugin process dies with it: parent-death signal), or it is sent SIGTERM (a
graceful stop, which hands the job back). The figure is the time from the signal to the moment
the benchmark's MQTT subscriber sees the job's next attempt start on the other worker. The
killed or stopped worker is replaced before the next round, and the job is cancelled once it
runs again, so each round starts with two idle workers.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from typing import Any

from compute_bench.client import Submitter
from compute_bench.cluster import Cluster
from compute_bench.stats import summary

#: The long job: 60 progress steps a second apart (a minute), far longer than any rescue.
LONG_STEPS, LONG_STEP_MS = 60, 1000.0
#: Seconds the job runs before its worker is signalled ("mid-job").
RUN_BEFORE_SIGNAL = 0.5
#: Seconds to wait for the job's next attempt (a rescue after the lease expires takes a minute).
RERUN_TIMEOUT = 90.0
#: The issue's target: kill -9 -> running elsewhere within this many seconds.
TARGET_SECONDS = 5.0


async def _started(
    cluster: Cluster, job_id: str, attempt: int, since: int, timeout: float
) -> tuple[int, str]:
    """(ns, worker id) of the job's `started` event for `attempt`, seen after `since`."""
    observer = cluster.observer
    assert observer is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for ns, seen, worker_id, number in observer.starts:
            if seen == job_id and number == attempt and ns >= since:
                return ns, worker_id
        await asyncio.sleep(0.005)
    raise TimeoutError(f"job {job_id} attempt {attempt} did not start within {timeout:g} s")


async def one_round(cluster: Cluster, sub: Submitter, how: signal.Signals) -> dict[str, Any]:
    """One long job, its worker signalled mid-job; seconds until it runs on another worker."""
    t0 = time.time_ns()
    job_id = await sub.noop(steps=LONG_STEPS, step_ms=LONG_STEP_MS)
    _, victim = await _started(cluster, job_id, 1, t0, 30)
    await asyncio.sleep(RUN_BEFORE_SIGNAL)
    proc = cluster.workers[victim]
    cluster.retired.add(victim)
    t_signal = time.time_ns()
    os.kill(proc.pid, how)
    try:
        t_rerun, rescuer = await _started(cluster, job_id, 2, t_signal, RERUN_TIMEOUT)
        seconds: float | None = (t_rerun - t_signal) / 1e9
    except TimeoutError:
        seconds, rescuer = None, ""
    async with sub.session.post(f"{sub.base_url}/jobs/{job_id}/cancel") as reply:
        await reply.read()
    with contextlib.suppress(subprocess.TimeoutExpired):
        await asyncio.to_thread(proc.wait, 30)  # a stopped worker says goodbye first
    await cluster.add_workers(1)
    return {
        "signal": how.name,
        "job_id": job_id,
        "from": victim,
        "to": rescuer,
        "seconds": None if seconds is None else round(seconds, 3),
    }


async def recovery(cluster: Cluster, sub: Submitter, kills: int, stops: int) -> dict[str, Any]:
    rounds = [await one_round(cluster, sub, signal.SIGKILL) for _ in range(kills)]
    rounds += [await one_round(cluster, sub, signal.SIGTERM) for _ in range(stops)]

    def seconds(how: signal.Signals) -> dict[str, Any]:
        return summary(r["seconds"] for r in rounds if r["signal"] == how.name)

    return {
        "workers": 2,
        "kill_seconds": seconds(signal.SIGKILL),
        "stop_seconds": seconds(signal.SIGTERM),
        "not_rerun": sum(1 for r in rounds if r["seconds"] is None),
        "rounds": rounds,
    }
