"""The `latency` section: where a small job's time goes, one job at a time (issue 20).

Jobs are submitted one after another, each once the previous one was announced finished, so
nothing queues and every figure is the path's own. Each step comes from a clock the step's two
ends share: the client's nanosecond clock around the submit call and at the arrival of the
server's `inference/events` message, the job's own row (created, claimed: milliseconds), the
plugin's stamps (`bench_noop` writes when it started and finished), the benchmark's MQTT
subscriber (when the worker's `completed` event went past on the broker) and the server's commit
probe (when the batch holding the result committed). All of them run on this machine, so one
wall clock serves them all.

It runs twice: on the run's own broker (by default compute-server's embedded Mosquitto, with
`set_tcp_nodelay`), and on a Mosquitto the benchmark starts itself with Debian's default
configuration (a listener and nothing else), the broker most users point Compute at.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from compute.mosquitto import find_mosquitto
from compute_bench.client import Submitter
from compute_bench.cluster import Cluster
from compute_bench.harness import Processes, free_port, port_answers
from compute_bench.stats import summary

NS_PER_MS = 1_000_000
DONE_TIMEOUT = 60.0
GAP = 0.005  # seconds between jobs: the worker is back to waiting for a hint

#: (key, label) of each step, in the order a job goes through them.
STEPS: tuple[tuple[str, str], ...] = (
    ("submit_call_ms", "submit HTTP call"),
    ("submit_to_row_ms", "submit call -> row created"),
    ("row_to_claim_ms", "row -> claim"),
    ("claim_to_task_ms", "claim -> task starts"),
    ("task_ms", "task runs"),
    ("done_to_event_ms", "task done -> worker's event on the broker"),
    ("done_to_commit_ms", "task done -> result committed"),
    ("done_to_visible_ms", "task done -> inference/events"),
    ("submit_to_visible_ms", "submit -> inference/events"),
)
#: The issue's target for the one step this section is for: done -> visible, p50 and p99.
VISIBLE_TARGET_MS = (3.0, 10.0)


def default_mosquitto_config(port: int) -> str:
    """Debian's mosquitto.conf as installed (no set_tcp_nodelay, default queues), plus the
    listener and anonymous access a benchmark broker needs."""
    return f"listener {port} 127.0.0.1\nallow_anonymous true\n"


class DefaultMosquitto:
    """A Mosquitto process in its default configuration, for the second run of the section."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> tuple[str, int]:
        exe = find_mosquitto()
        if exe is None:
            raise RuntimeError("mosquitto is not installed")
        self.directory.mkdir(parents=True, exist_ok=True)
        conf = self.directory / "mosquitto-default.conf"
        conf.write_text(default_mosquitto_config(self.port))
        log = open(self.directory / "mosquitto-default.log", "wb")  # noqa: SIM115 - the child keeps a copy
        try:
            # As root, Mosquitto drops to the `mosquitto` user after reading its config.
            self.proc = subprocess.Popen([exe, "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT)
        finally:
            log.close()
        deadline = time.monotonic() + 10
        while not port_answers("127.0.0.1", self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the default-config Mosquitto did not start; see {self.directory}")
            time.sleep(0.05)
        return "127.0.0.1", self.port

    def stop(self) -> None:
        if self.proc is not None:
            Processes.end([self.proc], timeout=10)


async def sequential(
    cluster: Cluster, sub: Submitter, kind: str, n: int, warmup: int
) -> list[dict[str, Any]]:
    """`n` jobs (after `warmup`), each submitted once the previous one was announced finished."""
    observer = cluster.observer
    assert observer is not None
    out: list[dict[str, Any]] = []
    for i in range(warmup + n):
        t0 = time.time_ns()
        job_id = await (sub.noop() if kind == "bench_noop" else sub.image())
        t1 = time.time_ns()
        visible = await observer.wait_done(job_id, DONE_TIMEOUT)
        if i >= warmup:
            out.append({"job_id": job_id, "t_submit": t0, "t_replied": t1, "t_visible": visible})
        await asyncio.sleep(GAP)
    rows = cluster.rows([r["job_id"] for r in out])
    await asyncio.sleep(0.6)  # the probes' next snapshot
    commits: dict[str, int] = {}
    runs: dict[str, list[int | None]] = {}
    for probe in cluster.read_probes():
        commits.update(probe.get("commits") or {})
        runs.update(probe.get("runs") or {})
    for r in out:
        r["row"] = row = rows.get(r["job_id"], {})
        out_ = row.get("task_output") or {}
        # bench_noop stamps itself; a plugin task is stamped by the worker's `runs` probe.
        run = runs.get(r["job_id"]) or [None, None]
        r["t_task_start"] = out_.get("started_ns") or run[0]
        r["t_task_done"] = out_.get("finished_ns") or run[1]
        r["t_event"] = observer.worker_done.get(r["job_id"])
        r["t_commit"] = commits.get(r["job_id"])
    return out


def _ms(later: float | None, earlier: float | None, scale: float = NS_PER_MS) -> float | None:
    return None if later is None or earlier is None else (later - earlier) / scale


def steps(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Each step's distribution (ms) over the jobs."""
    per_step: dict[str, list[float | None]] = {key: [] for key, _ in STEPS}
    for r in records:
        row = r["row"]
        created, claimed = row.get("created_at"), row.get("started_at")
        task_start, task_done = r["t_task_start"], r["t_task_done"]
        per_step["submit_call_ms"].append(_ms(r["t_replied"], r["t_submit"]))
        per_step["submit_to_row_ms"].append(_ms(created, r["t_submit"] / NS_PER_MS, 1))
        per_step["row_to_claim_ms"].append(_ms(claimed, created, 1))
        per_step["claim_to_task_ms"].append(_ms(task_start / NS_PER_MS if task_start else None, claimed, 1))
        per_step["task_ms"].append(_ms(task_done, task_start))
        per_step["done_to_event_ms"].append(_ms(r["t_event"], task_done))
        per_step["done_to_commit_ms"].append(_ms(r["t_commit"], task_done))
        per_step["done_to_visible_ms"].append(_ms(r["t_visible"], task_done))
        per_step["submit_to_visible_ms"].append(_ms(r["t_visible"], r["t_submit"]))
    return {
        "jobs": len(records),
        "completed": sum(1 for r in records if r["row"].get("status") == "completed"),
        **{key: summary(values) for key, values in per_step.items()},
    }


def broker_description(cluster: Cluster, default_mosquitto: bool) -> str:
    if default_mosquitto:
        return "Mosquitto, Debian's default configuration (no set_tcp_nodelay), started by the benchmark"
    if cluster.spec.broker is not None:
        return f"external broker {cluster.mqtt_host}:{cluster.mqtt_port}"
    return f"compute-server's embedded broker ({cluster.spec.embedded_broker})"


def mosquitto_available() -> bool:
    return find_mosquitto() is not None or shutil.which("mosquitto") is not None
