"""Opt-in measurement probes, for the benchmark only.

The benchmark's launcher (compute_bench.launch) installs them when COMPUTE_BENCH_PROBES names a
directory (the benchmark's cluster sets it per role). Each process then writes
`<dir>/<role>-<pid>.json` every SNAPSHOT_INTERVAL and at exit.
COMPUTE_BENCH_PROBE_KINDS chooses what is recorded (default "sql"):

"open" -- when a job's input file is first opened (ns), i.e. when a file task starts:
  a `sys.addaudithook` hook, for tasks the benchmark cannot stamp from inside;
"runs" -- in a worker: when each plugin run started and ended (ns, `PluginTask.execute`, on the
  plugin thread), and how long each model file took to load (the first `models.session()` of a
  file in the process), with the onnxruntime import timed apart;
  in the worker's plugin process also, per job (`jobs`): the CPU it took (the process's, its
  finished children's and its live descendants', e.g. a persistent exiftool), its RSS before
  and its peak RSS during the job (VmHWM, reset at the job's start);
"commits" -- in the server (or a worker writing a result itself): when a job's terminal event was
  committed (ns, as `JobTransitions.apply_events` returns);
"sql" -- what the process's engines send to the database:

* `counts`: statements by kind (claim, progress, select, begin, commit, ping ...);
* `units`: statements grouped by transaction, split into those holding a claim
  (a worker's sweep or wake-up) and all others;
* at exit, `progress`: each progress UPDATE that changed a row, with its COMMIT time (ns).

"runs" and "commits" register at the product's observation points (compute.observers) rather
than replace its methods: a rename in the product cannot leave them measuring nothing.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine

from compute import observers
from compute_bench.stats import cpu_ns, peak_kb, start_peak

ENV = "COMPUTE_BENCH_PROBES"
KINDS_ENV = "COMPUTE_BENCH_PROBE_KINDS"
SNAPSHOT_INTERVAL = 0.5  # seconds
_UNIT, _PENDING = "bench_unit", "bench_progress"


def is_claim(statement: str) -> bool:
    """The claim statement (db/repository.py `claim_batch`): on PostgreSQL it starts with its CTE."""
    text = statement.upper()
    return "UPDATE JOBS SET STATUS" in text and "RETURNING" in text


def _label(statement: str) -> str:
    head = statement.lstrip()[:24].upper()
    if is_claim(statement):
        return "claim"
    if head.startswith("UPDATE JOBS SET PROGRESS"):
        return "progress"
    for kind in ("SELECT", "INSERT", "UPDATE", "DELETE", "BEGIN", "PRAGMA"):
        if head.startswith(kind):
            return kind.lower()
    return "other"


class _Stats:
    def __init__(self, path: Path, role: str) -> None:
        self.path = path
        self.role = role
        self.lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        self.units: Counter[str] = Counter()
        self.progress: list[tuple[str, int, int]] = []
        self.opened: dict[str, int] = {}
        self.runs: dict[str, list[int]] = {}
        self.jobs: dict[str, dict[str, int]] = {}
        self.models: dict[str, dict[str, float]] = {}
        self.commits: dict[str, int] = {}
        self.write_lock = threading.Lock()
        self.closed = False

    def _add(self, conn: Any, label: str) -> None:
        with self.lock:
            self.counts[label] += 1
        conn.info.setdefault(_UNIT, []).append(label)

    def on_connect(self, conn: Any) -> None:
        # PostgreSQL engines ping (SELECT 1) on every checkout.
        if getattr(conn.engine.pool, "_pre_ping", False):
            self._add(conn, "ping")

    def on_begin(self, conn: Any) -> None:
        # SQLite's BEGIN is a statement our engine issues (counted below); psycopg sends its own.
        if conn.dialect.name != "sqlite":
            self._add(conn, "begin")

    def before_execute(self, conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        self._add(conn, _label(statement))

    def after_execute(
        self, conn: Any, cursor: Any, statement: str, _params: Any, context: Any, _many: bool
    ) -> None:
        # db/transitions.py's guarded UPDATE (parameters k_job_id, v_<column>), as an executemany
        # of every job whose events set the same columns: a progress event sets progress first.
        if statement.startswith("UPDATE jobs SET progress") and context is not None and cursor.rowcount > 0:
            conn.info.setdefault(_PENDING, []).extend(
                (params.get("k_job_id"), params.get("v_progress"))
                for params in context.compiled_parameters or ()
            )

    def on_end(self, conn: Any, label: str) -> None:
        now = time.time_ns()
        self._add(conn, label)
        unit = conn.info.pop(_UNIT, [])
        pending = conn.info.pop(_PENDING, None)
        with self.lock:
            self.units["claim" if "claim" in unit else "other"] += len(unit)
            if pending and label == "commit":
                self.progress.extend((job_id, progress, now) for job_id, progress in pending)

    def write(self, final: bool = False) -> None:
        with self.write_lock:  # the exit write must be the last one
            if self.closed:
                return
            self.closed = final
            with self.lock:
                data: dict[str, Any] = {
                    "role": self.role,
                    "pid": os.getpid(),
                    "final": final,
                    "written_ns": time.time_ns(),
                    "counts": dict(self.counts),
                    "units": dict(self.units),
                }
                if final:
                    data["progress"] = list(self.progress)
                # Small, and read while the process runs: a worker's plugin process may be
                # killed rather than exit, so its last snapshot must already hold them.
                for key in ("runs", "jobs", "models", "commits", "opened"):
                    if getattr(self, key):
                        data[key] = dict(getattr(self, key))
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(data))
            os.replace(tmp, self.path)

    def snapshot_forever(self) -> None:
        while not self.closed:
            time.sleep(SNAPSHOT_INTERVAL)
            try:
                self.write()
            except OSError:
                return

    def on_audit(self, name: str, args: tuple[Any, ...]) -> None:
        if name == "open" and isinstance(args[0], str) and "/input/" in args[0]:
            parts = args[0].split("/")
            job_id = parts[parts.index("input") - 1]
            if job_id not in self.opened:
                self.opened[job_id] = time.time_ns()


def install(directory: str, role: str, plugin_process: bool = False) -> None:
    """Install the probes named in COMPUTE_BENCH_PROBE_KINDS; write results to `directory`.
    plugin_process: this is a worker's plugin process, where each job's CPU and memory are its own."""
    kinds = set((os.environ.get(KINDS_ENV) or "sql").split(","))
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    stats = _Stats(path / f"{role}-{os.getpid()}.json", role)
    if "open" in kinds:
        sys.addaudithook(stats.on_audit)
    if "sql" in kinds:
        _listen(stats)
    if "runs" in kinds:
        _time_runs(stats, plugin_process)
    if "commits" in kinds:
        _time_commits(stats)
    atexit.register(stats.write, True)
    _write_before_sigterm(stats)
    threading.Thread(target=stats.snapshot_forever, name="bench-probes", daemon=True).start()


def _write_before_sigterm(stats: _Stats) -> None:
    """uvicorn re-raises SIGTERM after its graceful shutdown, which skips atexit: write first."""

    def on_term(signum: int, _frame: Any) -> None:
        stats.write(True)
        signal.signal(signum, signal.SIG_DFL)
        signal.raise_signal(signum)

    if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
        signal.signal(signal.SIGTERM, on_term)


def _listen(stats: _Stats) -> None:
    event.listen(Engine, "engine_connect", stats.on_connect)
    event.listen(Engine, "begin", stats.on_begin)
    event.listen(Engine, "before_cursor_execute", stats.before_execute)
    event.listen(Engine, "after_cursor_execute", stats.after_execute)
    event.listen(Engine, "commit", lambda conn: stats.on_end(conn, "commit"))
    event.listen(Engine, "rollback", lambda conn: stats.on_end(conn, "rollback"))


def _time_runs(stats: _Stats, per_job: bool) -> None:
    """Stamp each plugin run, and time each model file's first load in this process; per_job:
    also each run's CPU and memory (the process runs one job at a time)."""

    @contextlib.contextmanager
    def timed_run(job_id: str) -> Iterator[None]:
        before = _job_started() if per_job else None
        start = time.time_ns()
        try:
            yield
        finally:
            end = time.time_ns()
            figures = None if before is None else _job_ended(before)
            with stats.lock:
                stats.runs[job_id] = [start, end]
                if figures is not None:
                    stats.jobs[job_id] = figures

    @contextlib.contextmanager
    def timed_load(filename: str) -> Iterator[None]:
        t0 = time.perf_counter()
        imported = "onnxruntime" not in sys.modules
        if imported:
            import onnxruntime  # noqa: F401  # timed apart: the first model pays for it once
        t1 = time.perf_counter()
        try:
            yield
        finally:
            t2 = time.perf_counter()
            with stats.lock:
                stats.models[filename] = {
                    "load_ms": round((t2 - t1) * 1000, 2),
                    "onnxruntime_import_ms": round((t1 - t0) * 1000, 2) if imported else 0.0,
                }

    observers.plugin_runs.append(timed_run)
    observers.model_loads.append(timed_load)


def _job_started() -> tuple[int, int]:
    """(CPU so far in ns, VmRSS in KiB) as a job starts; its peak memory is measured from here."""
    rss = start_peak()
    return cpu_ns(), rss


def _job_ended(before: tuple[int, int]) -> dict[str, int]:
    cpu, rss = before
    return {"cpu_ns": cpu_ns() - cpu, "rss_before_kb": rss, "peak_rss_kb": peak_kb()}


def _time_commits(stats: _Stats) -> None:
    """Stamp the commit of each job's terminal event (the batch's transaction has ended)."""
    from compute.db.rules import Outcome, Verdict
    from compute.jobs import EventType

    terminal = (EventType.COMPLETED, EventType.FAILED)

    def committed(outcomes: Sequence[Outcome]) -> None:
        now = time.time_ns()
        with stats.lock:
            for outcome in outcomes:
                if outcome.verdict is Verdict.APPLIED and outcome.event.event in terminal:
                    stats.commits.setdefault(outcome.event.job_id, now)

    observers.events_applied.append(committed)
