"""The measurements. Each takes a started Cluster and returns plain numbers."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compute_bench.client import Submitter
from compute_bench.cluster import Cluster
from compute_bench.stats import summary, tree_cpu_seconds

NS_PER_MS = 1_000_000
GAP = 0.005  # seconds between sequential jobs: the worker is back to waiting
DONE_TIMEOUT = 60.0


@dataclass
class Sizes:
    pickup: int = 300
    pickup_image: int = 100
    burst: int = 5000
    burst_image: int = 1000
    progress: int = 50
    progress_spaced: int = 20
    polling: int = 25
    idle_seconds: float = 60.0
    concurrency: int = 24
    warmup: int = 10
    #: plugins section: jobs per plugin, sequential and again in a burst (hls_streaming: plugins_video).
    plugins: int = 20
    plugins_video: int = 3
    #: plugins section, rows on the 12 MP photo (seconds a job for PNG and WebP).
    plugins_large: int = 8
    #: Length of the standard video (s).
    video_seconds: float = 10.0
    #: claim_scale: finished rows in `jobs`, the deep backlog, claims timed per step.
    claim_rows: int = 1_000_000
    claim_backlog: int = 100_000
    claims: int = 500
    #: workers_scale: the no-op burst run with 1, 2, 4 and 8 workers.
    scale_burst: int = 2000
    #: backlog: jobs submitted with no worker running, then drained by 2 fresh workers.
    backlog: int = 20_000
    #: live_fanout: live views open at once, and job changes made with and without them.
    fanout_streams: int = 500
    fanout_changes: int = 300
    #: ml_batch: jobs per plugin and batch size; transformer layers of 12 run in its networks.
    ml_batch: int = 64
    ml_batch_layers: int = 4
    #: latency: sequential jobs per broker (no-op, then image_conversion).
    latency: int = 200
    latency_image: int = 50
    #: recovery: workers killed (-9) mid-job, and stopped (SIGTERM) mid-job.
    recovery_kills: int = 3
    recovery_stops: int = 2


QUICK = Sizes(
    pickup=20,
    pickup_image=10,
    burst=300,
    burst_image=100,
    progress=3,
    progress_spaced=2,
    polling=3,
    idle_seconds=3.0,
    concurrency=16,
    warmup=3,
    plugins=3,
    plugins_video=1,
    plugins_large=1,
    video_seconds=2.0,
    claim_rows=5000,
    claim_backlog=2000,
    claims=50,
    scale_burst=100,
    backlog=200,
    fanout_streams=20,
    fanout_changes=20,
    ml_batch=16,
    ml_batch_layers=1,
    latency=20,
    latency_image=5,
    recovery_kills=1,
    recovery_stops=1,
)


def _ms(ns: int | None, since: int | None) -> float | None:
    return None if ns is None or since is None else (ns - since) / NS_PER_MS


# -- 1. pickup latency ----------------------------------------------------------------------


async def sequential(
    cluster: Cluster, sub: Submitter, kind: str, n: int, warmup: int, **noop: Any
) -> list[dict[str, Any]]:
    """Submit one job at a time, waiting for the server's 'completed' before the next."""
    assert cluster.observer is not None
    out: list[dict[str, Any]] = []
    for i in range(warmup + n):
        t0 = time.time_ns()
        job_id = await (sub.noop(**noop) if kind == "bench_noop" else sub.image())
        t1 = time.time_ns()
        done = await cluster.observer.wait_done(job_id, DONE_TIMEOUT)
        if i >= warmup:
            out.append({"job_id": job_id, "t_submit": t0, "t_replied": t1, "t_done": done})
        await asyncio.sleep(GAP)
    rows = cluster.rows([r["job_id"] for r in out])
    for r in out:
        row = rows.get(r["job_id"], {})
        r["row"] = row
        r["t_started_event"] = cluster.observer.started.get(r["job_id"])
        r["t_task_start"] = (row.get("task_output") or {}).get("started_ns")
    return out


def pickup_summary(records: list[dict[str, Any]]) -> dict[str, Any]:
    rows = [r["row"] for r in records]
    result = {
        "jobs": len(records),
        "completed": sum(1 for row in rows if row.get("status") == "completed"),
        "submit_to_started_event_ms": summary(_ms(r["t_started_event"], r["t_submit"]) for r in records),
        "created_to_claim_ms": summary(
            row["started_at"] - row["created_at"] for row in rows if row.get("started_at") is not None
        ),
        "submit_call_ms": summary(_ms(r["t_replied"], r["t_submit"]) for r in records),
        "submit_to_done_ms": summary(_ms(r["t_done"], r["t_submit"]) for r in records),
    }
    if any(r["t_task_start"] for r in records):
        result["submit_to_task_start_ms"] = summary(_ms(r["t_task_start"], r["t_submit"]) for r in records)
    return result


def add_open_times(records: list[dict[str, Any]], probes: list[dict[str, Any]]) -> None:
    """For file tasks: the task started when the worker first opened the job's input."""
    opened: dict[str, int] = {}
    for p in probes:
        opened.update(p.get("opened") or {})
    for r in records:
        r["t_task_start"] = r["t_task_start"] or opened.get(r["job_id"])


# -- 2. throughput --------------------------------------------------------------------------


async def _settle(cluster: Cluster, kind: str, since_ms: int, want: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if finished_since(cluster, kind, since_ms) >= want:
            return
        await asyncio.sleep(0.05)


def finished_since(cluster: Cluster, kind: str, since_ms: int) -> int:
    return int(
        cluster.scalar(
            "SELECT count(*) FROM jobs WHERE task_type = :t AND created_at >= :s "
            "AND status IN ('completed', 'failed')",
            t=kind,
            s=since_ms,
        )
    )


async def burst(
    cluster: Cluster, sub: Submitter, kind: str, n: int, concurrency: int, profile_dir: Path | None = None
) -> dict[str, Any]:
    """n jobs by `concurrency` submitters; done when the DB shows every one finished."""
    warm_from = time.time_ns() // NS_PER_MS
    await asyncio.gather(*(sub.submit(kind) for _ in range(2 * concurrency)))
    await _settle(cluster, kind, warm_from, 2 * concurrency)
    await asyncio.sleep(0.2)

    profilers = _start_profilers(cluster, profile_dir, kind) if profile_dir else []
    start_ms = time.time_ns() // NS_PER_MS

    async def finished() -> int:
        return finished_since(cluster, kind, start_ms)

    try:
        result = await drive(lambda: sub.submit(kind), finished, n, concurrency, cluster.pids())
    finally:
        _stop_profilers(profilers)
    result["failed"] = int(
        cluster.scalar(
            "SELECT count(*) FROM jobs WHERE task_type = :t AND created_at >= :s AND status = 'failed'",
            t=kind,
            s=start_ms,
        )
    )
    result["workers"] = len(cluster.workers)
    server_cpu = result["cpu_seconds"].get("server")
    result["server_cpu_ms_per_job"] = (
        round(server_cpu * 1000 / result["finished"], 3)
        if server_cpu is not None and result["finished"]
        else None
    )
    return result


async def drive(
    submit: Callable[[], Awaitable[Any]],
    finished: Callable[[], Awaitable[int]],
    n: int,
    concurrency: int,
    pids: dict[str, int],
) -> dict[str, Any]:
    """The burst itself, for Compute and its peers alike: `concurrency` submitters share n
    submissions; it ends when `finished()` counts every submitted job. CPU seconds per process
    (with its children: Celery's prefork pool) and of the benchmark client itself."""
    cpu0 = {name: tree_cpu_seconds(pid) for name, pid in pids.items()}
    own0 = os.times()
    remaining = iter(range(n))
    submitted: list[int] = []
    errors: list[str] = []

    async def submitter() -> None:
        for _ in remaining:
            try:
                await submit()
                submitted.append(time.time_ns())
            except Exception as exc:  # counted and reported, the burst goes on
                errors.append(f"{type(exc).__name__}: {exc}")

    t_first = time.time_ns()
    tasks = [asyncio.create_task(submitter()) for _ in range(concurrency)]
    deadline = time.monotonic() + max(120.0, n / 20)
    done = 0
    while True:
        all_sent = all(t.done() for t in tasks)
        if all_sent and done >= len(submitted):
            break
        near = all_sent and done >= 0.9 * len(submitted)
        await asyncio.sleep(0.005 if near else 0.05)
        done = await finished()
        if time.monotonic() > deadline:
            break
    t_done = time.time_ns()
    own1 = os.times()
    cpu = {name: _delta(tree_cpu_seconds(pid), cpu0.get(name)) for name, pid in pids.items()}
    cpu["bench client"] = round((own1.user + own1.system) - (own0.user + own0.system), 2)
    elapsed = (t_done - t_first) / 1e9
    submit_elapsed = (max(submitted) - t_first) / 1e9 if submitted else float("nan")
    return {
        "jobs": n,
        "submitted": len(submitted),
        "finished": done,
        "failed": 0,
        "submit_errors": len(errors),
        "first_error": errors[0] if errors else None,
        "concurrency": concurrency,
        "elapsed_s": round(elapsed, 3),
        "jobs_per_s": round(done / elapsed, 1),
        "submit_elapsed_s": round(submit_elapsed, 3),
        "submit_per_s": round(len(submitted) / submit_elapsed, 1) if submitted else None,
        "cpu_seconds": cpu,
    }


def _delta(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round(a - b, 2)


def _start_profilers(cluster: Cluster, out: Path, kind: str) -> list[subprocess.Popen[bytes]]:
    from shutil import which

    venv = Path(sys.executable).parent / "py-spy"
    found = which("py-spy") or (str(venv) if venv.exists() else None)
    exe = [found] if found else ["uvx", "py-spy"]  # `uv sync` removes a `uv pip install`ed py-spy
    out.mkdir(parents=True, exist_ok=True)
    procs = []
    targets = {"server": cluster.pids()["server"], "worker": next(iter(cluster.workers.values())).pid}
    for name, pid in targets.items():
        path = out / f"{cluster.spec.name}-{kind}-{name}.txt"
        procs.append(
            subprocess.Popen(
                [
                    *exe,
                    "record",
                    "--pid",
                    str(pid),
                    "--rate",
                    "250",
                    "--format",
                    "raw",
                    "--nonblocking",
                    "--gil",
                    "--output",
                    str(path),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
    time.sleep(1.0)  # py-spy attaches
    return procs


def _stop_profilers(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGINT)
    for p in procs:
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()


# -- 3. progress ----------------------------------------------------------------------------

PROGRESS_VARIANTS = (
    ("no progress", 0, 0.0),
    ("100 updates, back to back", 100, 0.0),
    ("100 updates, 1 ms apart", 100, 1.0),
)


async def progress_runs(cluster: Cluster, sub: Submitter, sizes: Sizes) -> list[dict[str, Any]]:
    runs = []
    for label, steps, step_ms in PROGRESS_VARIANTS:
        n = sizes.progress_spaced if step_ms else sizes.progress
        records = await sequential(
            cluster, sub, "bench_noop", n, min(2, sizes.warmup), steps=steps, step_ms=step_ms
        )
        runs.append({"label": label, "steps": steps, "step_ms": step_ms, "records": records})
    return runs


def progress_summary(runs: list[dict[str, Any]], server_stats: list[dict[str, Any]]) -> dict[str, Any]:
    """Per variant: updates reaching the DB per job, lag behind the worker, time per job."""
    persisted: dict[str, list[tuple[int, int]]] = {}
    for stats in server_stats:
        if stats.get("role") == "server":
            for job_id, progress, commit_ns in stats.get("progress", []):
                persisted.setdefault(job_id, []).append((progress, commit_ns))
    variants = []
    for run in runs:
        lags: list[float] = []
        per_job: list[int] = []
        for r in run["records"]:
            out = r["row"].get("task_output") or {}
            reported = _first_report(out.get("progress_ns") or [], run["steps"])
            updates = persisted.get(r["job_id"], [])
            per_job.append(len(updates))
            lags.extend((ns - reported[p]) / NS_PER_MS for p, ns in updates if p in reported)
        recs = run["records"]
        variants.append(
            {
                "label": run["label"],
                "steps": run["steps"],
                "step_ms": run["step_ms"],
                "jobs": len(recs),
                "reported_per_job": min(run["steps"], 99),
                "db_updates_per_job": summary(per_job),
                "lag_ms": summary(lags),
                "task_ms": summary(
                    _ms((r["row"].get("task_output") or {}).get("finished_ns"), r["t_task_start"])
                    for r in recs
                ),
                "submit_to_done_ms": summary(_ms(r["t_done"], r["t_submit"]) for r in recs),
            }
        )
    return {"variants": variants}


def _first_report(progress_ns: list[int], steps: int) -> dict[int, int]:
    """Progress value -> ns the task reported it (the worker caps at 99 and drops repeats)."""
    first: dict[int, int] = {}
    for i, ns in enumerate(progress_ns, start=1):
        first.setdefault(min(99, i * 100 // steps), ns)
    return first


# -- 4. idle cost ---------------------------------------------------------------------------


async def idle(cluster: Cluster, seconds: float, sweep_interval: float) -> dict[str, Any]:
    await asyncio.sleep(2.0 if seconds >= 10 else 1.0)  # past start-up and the first drains
    before = {(s["role"], s["pid"]): s for s in cluster.read_probes()}
    await asyncio.sleep(seconds)
    await asyncio.sleep(0.6)  # one more snapshot
    after = {(s["role"], s["pid"]): s for s in cluster.read_probes()}
    per_role: dict[str, dict[str, float]] = {}
    window = 0.0
    for key, b in after.items():
        a = before.get(key)
        if a is None:
            continue
        span = (b["written_ns"] - a["written_ns"]) / 1e9
        window = max(window, span)
        total = sum(b["counts"].values()) - sum(a["counts"].values())
        claims = b["counts"].get("claim", 0) - a["counts"].get("claim", 0)
        outside = b["units"].get("other", 0) - a["units"].get("other", 0)
        agg = per_role.setdefault(
            key[0], {"processes": 0, "statements": 0, "claims": 0, "statements_outside_sweeps": 0}
        )
        agg["processes"] += 1
        agg["statements"] += total
        agg["claims"] += claims
        agg["statements_outside_sweeps"] += outside
    total = sum(r["statements"] for r in per_role.values())
    workers = per_role.get("worker", {})
    return {
        "window_s": round(window, 2),
        "workers": len(cluster.workers),
        "sweep_interval_s": sweep_interval,
        "statements": total,
        "statements_per_min": round(total / window * 60, 1) if window else None,
        "worker_sweeps": workers.get("claims", 0),
        "expected_sweeps": round(len(cluster.workers) * window / sweep_interval, 1) if window else None,
        "worker_statements_outside_sweeps": workers.get("statements_outside_sweeps", 0),
        "server_statements": per_role.get("server", {}).get("statements", 0),
        "per_role": per_role,
    }


# -- 5. polling mode ------------------------------------------------------------------------


async def polling(cluster: Cluster, sub: Submitter, n: int) -> dict[str, Any]:
    """Jobs arriving at random times (about one a second), so sweeps meet them at random phase."""
    assert cluster.observer is not None
    window = float(n)
    start = time.monotonic()
    arrivals = sorted(random.uniform(0, window) for _ in range(n))

    async def one(at: float) -> dict[str, Any]:
        await asyncio.sleep(max(0.0, start + at - time.monotonic()))
        t0 = time.time_ns()
        job_id = await sub.noop()
        t1 = time.time_ns()
        done = await cluster.observer.wait_done(job_id, DONE_TIMEOUT)  # type: ignore[union-attr]
        return {"job_id": job_id, "t_submit": t0, "t_replied": t1, "t_done": done}

    records = list(await asyncio.gather(*(one(a) for a in arrivals)))
    rows = cluster.rows([r["job_id"] for r in records])
    for r in records:
        r["row"] = rows.get(r["job_id"], {})
        r["t_started_event"] = cluster.observer.started.get(r["job_id"])
        r["t_task_start"] = (r["row"].get("task_output") or {}).get("started_ns")
    return pickup_summary(records)
