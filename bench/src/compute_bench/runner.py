"""Runs the sections, each on its own fresh cluster, and gathers one result document."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

from compute.config import Settings
from compute.mosquitto import find_mosquitto
from compute_bench import fanout, inputs, latency, ml_batch, plugins, recovery, scale, scenarios, standins
from compute_bench.client import Submitter
from compute_bench.cluster import Cluster, ClusterSpec
from compute_bench.peers.runner import Peers
from compute_bench.report import evaluate_targets
from compute_bench.stats import filesystem_of, machine

SECTIONS = (
    "pickup",
    "latency",
    "recovery",
    "throughput",
    "progress",
    "idle",
    "polling",
    "plugins",
    "claim_scale",
    "workers_scale",
    "backlog",
    "live_fanout",
    "ml_batch",
)
#: `plugins` runs on request (--sections plugins): it adds about 3 minutes, and its model rows
#: need real models or --stand-in-models. So do the scale sections (how cost grows): several
#: minutes each at full size.
DEFAULT_SECTIONS = SECTIONS[:7]
#: What compute-bench runs its workers with unless told otherwise (--concurrency).
DEFAULT_CONCURRENCY = "bench_noop=8"
SCALE_WORKERS = (1, 2, 4, 8)
BACKLOG_WORKERS = 2
IDLE_WORKERS = 4
POLL_SWEEP = 5.0


@dataclass
class Config:
    workers: int = 2
    broker: tuple[str, int] | None = None
    #: The server's embedded broker when `broker` is None (EMBEDDED_BROKER).
    embedded_broker: str = "auto"
    database_url: str | None = None
    sizes: scenarios.Sizes = field(default_factory=scenarios.Sizes)
    quick: bool = False
    sections: tuple[str, ...] = DEFAULT_SECTIONS
    base_dir: Path | None = None
    keep: bool = False
    profile_dir: Path | None = None
    label: str | None = None
    #: plugins section: tiny stand-ins for model files missing from COMPUTE_MODELS_DIR.
    stand_in_models: bool = False
    #: Also run the peers (Celery, Celery behind FastAPI, Procrastinate) at the same points.
    peers: bool = False
    #: plugins section: only these tasks or rows (None: all).
    plugin_rows: tuple[str, ...] | None = None
    #: The workers' WORKER_CONCURRENCY (e.g. "bench_noop=8"); empty: one job at a time.
    concurrency: str = ""


class Run:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.base = Path(tempfile.mkdtemp(prefix="compute-bench-", dir=cfg.base_dir))
        self.run_id = uuid.uuid4().hex[:6]
        self.result: dict[str, Any] = {"meta": self._meta(), "empty_claims": {}}
        self.last_stop: dict[str, Any] = {}

    def _meta(self) -> dict[str, Any]:
        cfg = self.cfg
        db = (
            "sqlite (WAL), file in CL_SERVER_DIR"
            if cfg.database_url is None
            else make_url(cfg.database_url).render_as_string(hide_password=True)
        )
        embedded = embedded_kind(cfg.embedded_broker)
        broker = (
            f"embedded {embedded} (compute-server's)"
            if cfg.broker is None
            else f"external broker {cfg.broker[0]}:{cfg.broker[1]}"
        )
        return {
            "label": cfg.label
            or f"{embedded if cfg.broker is None else 'external broker'} + "
            f"{'sqlite' if cfg.database_url is None else 'postgresql'}",
            "broker": broker,
            "database": db,
            "workers": cfg.workers,
            "concurrency": cfg.concurrency,
            "quick": cfg.quick,
            "sizes": asdict(cfg.sizes),
            "storage": filesystem_of(self.base),
            "machine": machine(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "loadavg_start": _loadavg(),
        }

    def spec(self, name: str, workers: int, **kw: Any) -> ClusterSpec:
        spec = ClusterSpec(
            name,
            workers,
            self.cfg.broker,
            self.cfg.database_url,
            embedded_broker=self.cfg.embedded_broker,
            **kw,
        )
        if self.cfg.concurrency:
            spec.extra_env.setdefault("WORKER_CONCURRENCY", self.cfg.concurrency)
        return spec

    @contextlib.asynccontextmanager
    async def cluster(self, spec: ClusterSpec) -> AsyncIterator[tuple[Cluster, Submitter]]:
        cluster = Cluster(spec, self.base, self.run_id)
        sub: Submitter | None = None
        t0 = time.monotonic()
        try:
            await cluster.start()
            sub = Submitter(cluster.base_url, max(32, self.cfg.sizes.concurrency))
            yield cluster, sub
        finally:
            if sub is not None:
                await sub.aclose()
            stopped = await cluster.stop()
            self.last_stop = stopped
            exits = stopped["workers"]
            self.result["empty_claims"][spec.name] = {
                "workers": len(cluster.workers),
                "wake_events": spec.wake_events,
                "jobs_run": sum(e["jobs_run"] for e in exits.values()),
                "empty_claims": sum(e["empty_claims"] for e in exits.values()),
                "reported_by": len(exits),
                "results_written_by_worker": sum(e["results_written_by_worker"] for e in exits.values()),
            }
            e = self.result["empty_claims"][spec.name]
            e["empty_per_job"] = round(e["empty_claims"] / e["jobs_run"], 3) if e["jobs_run"] else None
            self.result.setdefault("cluster_seconds", {})[spec.name] = round(time.monotonic() - t0, 1)
            if not self.cfg.keep:
                cluster.remove()

    async def run(self) -> dict[str, Any]:
        cfg, sizes = self.cfg, self.cfg.sizes
        t0 = time.monotonic()
        try:
            if "pickup" in cfg.sections:
                spec = self.spec("pickup", cfg.workers, observe_jobs=True, probes={"worker": "open"})
                async with self.cluster(spec) as (c, sub):
                    noop = await scenarios.sequential(c, sub, "bench_noop", sizes.pickup, sizes.warmup)
                    image = await scenarios.sequential(
                        c, sub, "image_conversion", sizes.pickup_image, sizes.warmup
                    )
                scenarios.add_open_times(image, self.last_stop["probes"])
                self.result["pickup"] = {
                    "bench_noop": scenarios.pickup_summary(noop),
                    "image_conversion": scenarios.pickup_summary(image),
                }
            if "throughput" in cfg.sections and cfg.peers and cfg.database_url is None:
                await self._throughput_postgres()
            if "latency" in cfg.sections:
                await self._latency()
            if "recovery" in cfg.sections:
                await self._recovery()
            if "throughput" in cfg.sections:
                async with self.cluster(self.spec("throughput", cfg.workers)) as (c, sub):
                    self.result["throughput"] = {
                        "bench_noop": await scenarios.burst(
                            c, sub, "bench_noop", sizes.burst, sizes.concurrency, cfg.profile_dir
                        ),
                        "image_conversion": await scenarios.burst(
                            c, sub, "image_conversion", sizes.burst_image, sizes.concurrency, cfg.profile_dir
                        ),
                    }
            if "idle" in cfg.sections or "progress" in cfg.sections:
                await self._idle_and_progress()
            if "polling" in cfg.sections:
                spec = self.spec(
                    "polling", cfg.workers, wake_events=False, sweep_interval=POLL_SWEEP, observe_jobs=True
                )
                async with self.cluster(spec) as (c, sub):
                    poll = await scenarios.polling(c, sub, sizes.polling)
                self.result["polling"] = self._compare_polling(poll)
            if "plugins" in cfg.sections:
                await self._plugins()
            if "claim_scale" in cfg.sections:
                self.result["claim_scale"] = await asyncio.to_thread(
                    scale.claim_scale,
                    cfg.database_url,
                    self.base,
                    sizes.claim_rows,
                    sizes.claim_backlog,
                    sizes.claims,
                )
            if "workers_scale" in cfg.sections:
                counts = SCALE_WORKERS[:2] if cfg.quick else SCALE_WORKERS
                async with self.cluster(self.spec("workers_scale", counts[0])) as (c, sub):
                    self.result["workers_scale"] = await scale.workers_scale(
                        c, sub, counts, sizes.scale_burst, sizes.concurrency
                    )
            if "backlog" in cfg.sections:
                async with self.cluster(self.spec("backlog", 0)) as (c, sub):
                    self.result["backlog"] = await scale.backlog(
                        c, sub, sizes.backlog, BACKLOG_WORKERS, sizes.concurrency
                    )
            if "live_fanout" in cfg.sections:
                # Every stream comes from this machine: one client address, one viewer.
                spec = self.spec("live_fanout", 0, extra_env={"SSE_MAX_PER_USER": str(sizes.fanout_streams)})
                async with self.cluster(spec) as (c, sub):
                    self.result["live_fanout"] = await fanout.live_fanout(
                        c, sub, sizes.fanout_streams, sizes.fanout_changes
                    )
            if "ml_batch" in cfg.sections:
                await self._ml_batch()
            if cfg.peers:
                self.result["peers"] = await Peers(self.base, self.run_id, sizes).run()
        finally:
            if not cfg.keep:
                shutil.rmtree(self.base, ignore_errors=True)
        self.result["meta"]["seconds"] = round(time.monotonic() - t0, 1)
        self.result["meta"]["loadavg_end"] = _loadavg()
        self.result["targets"] = evaluate_targets(self.result)
        return self.result

    async def _throughput_postgres(self) -> None:
        """The no-op burst again on PostgreSQL (a database of its own on the peers' server), for
        the issue's "PostgreSQL within 20 % of SQLite" in the same run."""
        url = f"postgresql+psycopg://postgres@127.0.0.1:5432/compute_bench_{self.run_id}"
        try:
            await postgres_database(url, create=True)
        except Exception as exc:  # no PostgreSQL here: the figure is left out, with the reason
            self.result["throughput_postgres"] = {"skipped": f"{type(exc).__name__}: {exc}"[:300]}
            return
        try:
            spec = self.spec("throughput_postgres", self.cfg.workers)
            spec.database_url = url
            async with self.cluster(spec) as (c, sub):
                sizes = self.cfg.sizes
                burst = await scenarios.burst(c, sub, "bench_noop", sizes.burst, sizes.concurrency)
            self.result["throughput_postgres"] = {"bench_noop": burst}
        finally:
            await postgres_database(url, create=False)

    @contextlib.asynccontextmanager
    async def broker_variant(
        self, name: str, workers: int, default_mosquitto: bool, **kw: Any
    ) -> AsyncIterator[tuple[Cluster, Submitter, str]]:
        """A cluster on the run's broker, or on a Mosquitto in its default configuration that
        the benchmark starts for it (compute_bench.latency.DefaultMosquitto); with the broker's
        description."""
        broker = latency.DefaultMosquitto(self.base / name) if default_mosquitto else None
        try:
            spec = self.spec(name, workers, **kw)
            if broker is not None:
                spec.broker = broker.start()
            async with self.cluster(spec) as (c, sub):
                yield c, sub, latency.broker_description(c, default_mosquitto)
        finally:
            if broker is not None:
                broker.stop()

    def broker_variants(self, name: str) -> list[tuple[str, bool]]:
        """(cluster name, default-config Mosquitto?): the run's broker, then Mosquitto's default."""
        variants = [(name, False)]
        if latency.mosquitto_available():
            variants.append((f"{name}_default_mosquitto", True))
        return variants

    async def _latency(self) -> None:
        """Sequential small jobs on one worker, on the run's broker and on a default-config
        Mosquitto the benchmark starts (compute_bench.latency)."""
        sizes = self.cfg.sizes
        runs: list[dict[str, Any]] = []
        for name, default_mosquitto in self.broker_variants("latency"):
            probes = {"server": "commits", "worker": "runs"}
            variant = self.broker_variant(name, 1, default_mosquitto, observe_jobs=True, probes=probes)
            async with variant as (c, sub, described):
                noop = await latency.sequential(c, sub, "bench_noop", sizes.latency, sizes.warmup)
                image = await latency.sequential(
                    c, sub, "image_conversion", sizes.latency_image, min(3, sizes.warmup)
                )
            runs.append(
                {
                    "broker": described,
                    "bench_noop": latency.steps(noop),
                    "image_conversion": latency.steps(image),
                }
            )
        self.result["latency"] = {"workers": 1, "runs": runs}

    async def _recovery(self) -> None:
        """A worker killed (-9) or stopped (SIGTERM) mid-job: seconds until the job runs on the
        other worker (compute_bench.recovery), on both brokers."""
        sizes = self.cfg.sizes
        runs: list[dict[str, Any]] = []
        for name, default_mosquitto in self.broker_variants("recovery"):
            variant = self.broker_variant(name, 2, default_mosquitto, observe_jobs=True)
            async with variant as (c, sub, described):
                found = await recovery.recovery(c, sub, sizes.recovery_kills, sizes.recovery_stops)
            runs.append({"broker": described, **found})
        self.result["recovery"] = {"target_seconds": recovery.TARGET_SECONDS, "runs": runs}

    async def _idle_and_progress(self) -> None:
        """Idle window first (4 workers, statement counters on), then the progress jobs."""
        sections = self.cfg.sections
        spec = self.spec(
            "idle_progress", IDLE_WORKERS, observe_jobs=True, probes={"server": "sql", "worker": "sql"}
        )
        runs = None
        async with self.cluster(spec) as (c, sub):
            if "idle" in sections:
                self.result["idle"] = await scenarios.idle(
                    c, self.cfg.sizes.idle_seconds, Settings.sweep_interval
                )
                self.result["idle"]["database"] = "sqlite" if c.is_sqlite else "postgresql"
            if "progress" in sections:
                runs = await scenarios.progress_runs(c, sub, self.cfg.sizes)
        if runs is not None:
            self.result["progress"] = scenarios.progress_summary(runs, self.last_stop["probes"])
            self.result["progress"]["workers"] = IDLE_WORKERS

    async def _plugins(self) -> None:
        """Each task plugin on the standard inputs, 2 fresh workers per plugin (compute_bench.plugins)."""
        cfg, sizes = self.cfg, self.cfg.sizes
        large = inputs.QUICK_LARGE if cfg.quick else inputs.LARGE
        made = await asyncio.to_thread(inputs.make, self.base / "inputs", sizes.video_seconds, True, large)
        models_dir = plugins.user_models_dir()
        stand_ins = self.base / "models" if cfg.stand_in_models else None
        only = cfg.plugin_rows or plugins.NAMES
        plans = await asyncio.to_thread(plugins.plan, made, models_dir, stand_ins, only)
        used = stand_ins or models_dir
        doc: dict[str, Any] = {
            "inputs": made.describe(),
            "models_dir": str(used),
            "stand_in_models": cfg.stand_in_models,
            "workers": plugins.WORKERS,
            "target_pct": plugins.OVERHEAD_TARGET_PCT,
            "jobs": sizes.plugins,
            "jobs_video": sizes.plugins_video,
            "jobs_large": sizes.plugins_large,
            "reference_target": plugins.REFERENCE_TARGET,
            "fresh_workers": not cfg.quick,
        }
        if all(p.skipped for p in plans):
            doc["plugins"] = [plugins.skipped_row(p) for p in plans]
        else:
            spec = self.spec(
                "plugins",
                0,
                observe_jobs=True,
                probes={"server": "commits", "worker": "runs,commits"},
                extra_env={"COMPUTE_MODELS_DIR": str(used)},
            )
            async with self.cluster(spec) as (c, sub):
                doc["plugins"] = await plugins.run_all(
                    c,
                    sub,
                    plans,
                    made,
                    sizes.plugins,
                    sizes.plugins_video,
                    sizes.plugins_large,
                    fresh=not cfg.quick,
                )
        self.result["plugins"] = doc

    async def _ml_batch(self) -> None:
        """The embedding tasks at batch 1 and 8 (compute_bench.ml_batch)."""
        sizes = self.cfg.sizes
        folder = self.base / "ml_batch"
        made = await asyncio.to_thread(inputs.make, folder / "inputs", sizes.video_seconds, False, None)
        doc: dict[str, Any] = {"jobs": sizes.ml_batch, "batch": ml_batch.BATCH}
        doc["plugin"] = await ml_batch.plugin_batching(folder, made.photo, sizes.ml_batch)
        doc["network"] = await asyncio.to_thread(
            ml_batch.network_batching, folder / "networks", sizes.ml_batch_layers, quick=self.cfg.quick
        )
        doc["estimate"] = ml_batch.real_estimate(doc["plugin"], doc["network"])
        service_models = folder / "service_models"
        await asyncio.to_thread(standins.write, ml_batch.SERVICE_TASK, service_models, dynamic_batch=True)
        spec = self.spec(
            "ml_batch",
            0,
            observe_jobs=True,
            tasks=ml_batch.SERVICE_TASK,
            extra_env={"COMPUTE_MODELS_DIR": str(service_models)},
        )
        async with self.cluster(spec) as (c, sub):
            doc["service"] = await ml_batch.service_batching(
                c, sub, made.photo, sizes.ml_batch, quick=self.cfg.quick
            )
        self.result["ml_batch"] = doc

    def _compare_polling(self, poll: dict[str, Any]) -> dict[str, Any]:
        events = self.result.get("pickup", {}).get("bench_noop", {}).get("submit_to_task_start_ms", {})
        polled = poll.get("submit_to_task_start_ms", {})
        ratio = None
        if events.get("p50") and polled.get("p50") is not None:
            ratio = round(polled["p50"] / events["p50"], 1)
        return {
            "sweep_interval_s": POLL_SWEEP,
            "workers": self.cfg.workers,
            "polling": poll,
            "events_p50_ms": events.get("p50"),
            "median_ratio": ratio,
        }


async def postgres_database(url: str, *, create: bool) -> None:
    """Create (or drop) the database `url` names, on its server's `postgres` database."""
    import psycopg

    target = make_url(url)
    admin = target.set(drivername="postgresql", database="postgres").render_as_string(hide_password=False)
    async with await psycopg.AsyncConnection.connect(admin, autocommit=True, connect_timeout=5) as conn:
        if create:
            await conn.execute(f'CREATE DATABASE "{target.database}"')
        else:
            await conn.execute(f'DROP DATABASE IF EXISTS "{target.database}" WITH (FORCE)')


def _loadavg() -> list[float]:
    """1, 5 and 15 minute load averages: other work on the machine skews the numbers."""
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return []


def embedded_kind(setting: str) -> str:
    """Which broker compute-server embeds for EMBEDDED_BROKER=`setting` on this machine."""
    if setting == "auto":
        return "mosquitto" if find_mosquitto() else "amqtt"
    return setting
