"""Prometheus metrics for `GET /metrics`, in a registry of the app's own.

Two kinds. What happens once is counted when it happens: job run and pickup times as the server
persists terminal events, retries and rescues (from the changes the announcer hands it,
flow/announcer.py), HTTP requests (`http/timing.py`, an ASGI wrapper). What is a state is read at
scrape time, never kept up to date on every event: queue depth and oldest waiting age per task type
come from one grouped query (`JobRepository.queue_summary`, the query the retained queue summaries
use), live workers by state from the `WorkerRegistry`, rejected MQTT messages from the counters the
ingest and the registry keep anyway. Label values are bounded: task types are installed plugins,
reasons are fixed strings, routes are templates (`/jobs/{job_id}`), never a raw path.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client import Counter as PromCounter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from compute.db.repository import QueueSummary
from compute.jobs import Cause, JobChange, JobStatus, now_ms

CONTENT_TYPE = CONTENT_TYPE_LATEST
#: Seconds. Pickup is milliseconds when workers wait on a hint, up to minutes under a backlog.
PICKUP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
#: Seconds. A no-op runs in a millisecond, a video transcode in minutes.
RUN_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_RESULTS = (Cause.COMPLETED, Cause.FAILED)


class ServerMetrics:
    def __init__(self, task_types: Sequence[str] = ()) -> None:
        """`task_types`: the installed ones, reported with zeros while they have no jobs."""
        self.registry = CollectorRegistry(auto_describe=True)
        self.pickup = Histogram(
            "compute_job_pickup_seconds",
            "Job created until its first attempt started (observed when that attempt's result is persisted).",
            ["task_type"],
            buckets=PICKUP_BUCKETS,
            registry=self.registry,
        )
        self.run = Histogram(
            "compute_job_run_seconds",
            "An attempt's start until its result; status completed or failed "
            "(a failed attempt that is retried counts as failed).",
            ["task_type", "status"],
            buckets=RUN_BUCKETS,
            registry=self.registry,
        )
        self.retries = PromCounter(
            "compute_job_retries",
            "Failed attempts put back in the queue to run again.",
            ["task_type"],
            registry=self.registry,
        )
        self.rescues = PromCounter(
            "compute_job_rescues",
            "Claims of lost workers rescued; outcome queued (runs again) or failed (no attempts left).",
            ["task_type", "outcome"],
            registry=self.registry,
        )
        self.http = Histogram(
            "compute_http_request_duration_seconds",
            "HTTP requests by route template and status (streamed event responses: until their headers).",
            ["method", "route", "status"],
            buckets=HTTP_BUCKETS,
            registry=self.registry,
        )
        self._scrape = _ScrapeTime(tuple(task_types))
        self.registry.register(self._scrape)

    # -- events, as they happen ----------------------------------------------------------------

    def jobs_changed(self, changes: Iterable[JobChange]) -> None:
        """Observe the results the server just persisted (run and pickup times, retries) and the
        rescues it made."""
        for change in changes:
            task, cause = change.task_type, change.cause
            if cause is Cause.RESCUED:
                self.rescues.labels(task, change.status).inc()
            if cause is None or cause not in _RESULTS:
                continue
            started = change.started_at
            if started is not None and change.attempt == 1 and change.created_at is not None:
                self.pickup.labels(task).observe(max(0, started - change.created_at) / 1000)
            if started is not None and change.timestamp:
                self.run.labels(task, cause.value).observe(max(0, change.timestamp - started) / 1000)
            if cause is Cause.FAILED and change.status == JobStatus.QUEUED.value:
                self.retries.labels(task).inc()

    def request_done(self, method: str, route: str, status: int, seconds: float) -> None:
        self.http.labels(method, route, str(status)).observe(seconds)

    # -- scrape -----------------------------------------------------------------------------------

    def render(self, state: ScrapeState) -> bytes:
        """The exposition text, with the state read for this scrape.

        Called on the event loop with no await between setting the state and rendering, so
        concurrent scrapes cannot mix theirs.
        """
        self._scrape.state, self._scrape.now = state, now_ms()
        return generate_latest(self.registry)


@dataclass(frozen=True)
class ScrapeState:
    """What one scrape reads: the queue summary (one grouped query), each live worker's idle
    flag, and (kind, counts by reason) of the dropped MQTT messages."""

    queues: Sequence[QueueSummary] = ()
    idle_flags: Sequence[bool] = ()
    rejected: Sequence[tuple[str, Mapping[str, int]]] = ()
    #: Verified Last Wills the rescuer looked into.
    lost_worker_checks: int = 0


class _ScrapeTime(Collector):
    """Gauges and counters read when Prometheus scrapes."""

    def __init__(self, task_types: tuple[str, ...]) -> None:
        self.task_types = task_types
        self.state = ScrapeState()
        self.now = 0

    def describe(self) -> Iterator[Metric]:
        return iter(())  # names are known only at scrape time; nothing to check at registration

    def collect(self) -> Iterator[Metric]:
        depth = GaugeMetricFamily("compute_queue_depth", "Jobs waiting to be claimed.", labels=["task_type"])
        running = GaugeMetricFamily(
            "compute_jobs_running", "Jobs claimed and not finished.", labels=["task_type"]
        )
        oldest = GaugeMetricFamily(
            "compute_queue_oldest_age_seconds",
            "How long the oldest waiting job has waited (0 when none waits).",
            labels=["task_type"],
        )
        by_task = {q.task_type: q for q in self.state.queues}
        for task in sorted(set(self.task_types) | set(by_task)):
            q = by_task.get(task)
            depth.add_metric([task], q.queued if q else 0)
            running.add_metric([task], q.running if q else 0)
            age = 0 if q is None or q.oldest_queued_at is None else max(0, self.now - q.oldest_queued_at)
            oldest.add_metric([task], age / 1000)
        yield from (depth, running, oldest)

        idle = self.state.idle_flags
        workers = GaugeMetricFamily(
            "compute_workers", "Live workers the server verified, by state.", labels=["state"]
        )
        workers.add_metric(["idle"], sum(1 for i in idle if i))
        workers.add_metric(["busy"], sum(1 for i in idle if not i))
        yield workers

        rejected = CounterMetricFamily(
            "compute_mqtt_rejected",
            "MQTT messages dropped: kind job_event (forged, replayed, stale, "
            "malformed, queue full) or worker_info (unverified presence).",
            labels=["kind", "reason"],
        )
        for kind, counts in self.state.rejected:
            for reason, n in sorted(counts.items()):
                rejected.add_metric([kind, reason], n)
        yield rejected

        wills = CounterMetricFamily(
            "compute_lost_worker_checks",
            "Verified Last Wills the server looked into: the lost worker's claims are rescued once "
            "their lease stops moving (compute_job_rescues).",
        )
        wills.add_metric([], self.state.lost_worker_checks)
        yield wills
