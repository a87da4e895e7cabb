"""The server's parts, built once in dependency order (`build_services`) and run by `running`.

Read top to bottom, `build_services` is the data flow: a job submitted over HTTP goes through
`JobSubmitter` (the repository commits it); worker events come back through `EventIngest`
(transitions, then confirmations); a verified Will goes from `WorkerRegistry` to the `Rescuer`.
Whatever the database changed, each of them hands to the one `ChangeAnnouncer` (hints,
`inference/events`, live views, queue summaries, metrics). Every part gets the parts it calls
in its constructor. Set later, in `running`: the buses' client ids (their unguessable suffix is
kept in the database, read once it is known to be migrated) and the event loop the `LoopHop`
hands calls to; the buses' connect hooks (server online, the paused flags, the queue summaries)
are registered here and run on every connect. The routes reach the parts through
`server/http/deps.py` (`app.state.services`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from sqlalchemy import Engine

from compute.background import BackgroundTasks
from compute.broker import Broker, start_embedded_if_needed
from compute.bus.mqtt import MqttBus
from compute.config import Settings
from compute.db.leases import Leases
from compute.db.paused import PausedTasks
from compute.db.preferences import PreferenceStore
from compute.db.queries import JobQueries
from compute.db.rate_buckets import SharedBuckets, buckets_engine
from compute.db.repository import JobRepository
from compute.db.session import check_migrated, is_sqlite, make_engine, ping
from compute.db.storage_id import server_storage_id
from compute.db.transitions import JobTransitions
from compute.db.worker_sessions import WorkerSessions, server_client_ids
from compute.files.staging import OutputStaging
from compute.plugins.registry import route_factories
from compute.ratelimit import KeyedLimiter
from compute.server.access import GuestMode, TokenVerifier
from compute.server.dbcalls import RouteDatabase
from compute.server.descriptors import DescriptorBudget
from compute.server.flow.actions import JobActions
from compute.server.flow.announcer import ChangeAnnouncer
from compute.server.flow.cancel import Canceller
from compute.server.flow.dispatch import Dispatcher
from compute.server.flow.ingest import EventIngest
from compute.server.flow.pause import TaskPauses
from compute.server.flow.rescue import Rescuer
from compute.server.flow.server_status import ServerStatus
from compute.server.flow.submit import JobSubmitter
from compute.server.flow.workers import WorkerRegistry
from compute.server.live.changes import ChangeFeed, owner_of
from compute.server.live.guests import GuestStreams
from compute.server.live.notice_listener import ChangeNotices, listens
from compute.server.live.queue_summary import QueueReporter
from compute.server.loopsafe import LoopHop, LoopSafeBus
from compute.server.metrics import ServerMetrics
from compute.server.sweeps.forget import WorkerForgetter
from compute.server.sweeps.lease import SweepLease
from compute.server.sweeps.orphans import OrphanSweeper
from compute.server.sweeps.priority_aging import PriorityAging
from compute.server.sweeps.retention import RetentionPolicy, RetentionSweeper
from compute.server.sweeps.staged_outputs import StagingSweeper
from compute.slots import Slot, claim_slot
from compute.storage import JobStorage, write_storage_marker
from compute.topics import OFFLINE, Topics, event_payload_limit

log = logging.getLogger(__name__)

#: Seconds the start waits for the live views' connection to the database's change notices.
NOTICES_READY = 10.0
#: Where servers without COMPUTE_SERVER_ID take their slot (compute/slots.py), in CL_SERVER_DIR.
SERVER_SLOTS = "server-slots"


@dataclass(frozen=True)
class Services:
    settings: Settings
    #: This server among the deployment's (COMPUTE_SERVER_ID, or the slot it holds).
    server_id: str
    #: The slot behind `server_id` when none was configured; released when the server stops.
    slot: Slot | None
    topics: Topics
    #: For the background parts (events, rescue, presence); waits for the database as configured.
    engine: Engine
    #: For HTTP requests: waits for a locked or unreachable database at most DB_REQUEST_TIMEOUT.
    route_engine: Engine
    #: The routes' database calls, on threads of their own with that deadline.
    db: RouteDatabase
    #: Brings calls from those threads onto the event loop (bound when the loop runs).
    hop: LoopHop
    #: Job events, hints, confirmations, server status.
    bus: MqttBus
    #: Worker `info` only: a flood there cannot delay job events.
    presence_bus: MqttBus
    #: `<root>/server/status`: online while any server of the deployment is.
    status: ServerStatus
    verifier: TokenVerifier
    guest: GuestMode
    storage: JobStorage
    #: Outputs remote workers sent, promoted into the job folder when the job completes.
    staging: OutputStaging
    repo: JobRepository
    queues: QueueReporter
    #: Every job change, for the live views (SSE).
    changes: ChangeFeed
    #: Hints to the workers.
    dispatcher: Dispatcher
    #: What every write changed, told to everyone who must know.
    announcer: ChangeAnnouncer
    #: What other processes committed, onto the live views (None on SQLite).
    notices: ChangeNotices | None
    submitter: JobSubmitter
    transitions: JobTransitions
    canceller: Canceller
    #: Operators' changes: a queued job's priority, a retry.
    actions: JobActions
    rescuer: Rescuer
    ingest: EventIngest
    registry: WorkerRegistry
    orphans: OrphanSweeper
    #: Staged outputs left behind: promoted (job completed) or discarded (attempt over).
    staging_sweeper: StagingSweeper
    #: Listing reads for people (GET /jobs, GET /workers), on the routes' engine.
    queries: JobQueries
    route_sessions: WorkerSessions
    #: Job creation per user or client address (JOB_RATE_LIMIT; off by default): in the
    #: database on PostgreSQL, shared by the deployment's servers; in memory on SQLite.
    job_rate: KeyedLimiter | SharedBuckets
    #: Finished jobs pruned by RETENTION_DAYS / RETENTION_MAX_JOBS.
    retention: RetentionSweeper
    #: Retained topics and sessions of workers gone longer than WORKER_FORGET_AFTER cleared.
    forgetter: WorkerForgetter
    #: Waiting jobs move up a priority step per PRIORITY_AGING_SECONDS.
    aging: PriorityAging
    #: Whether this server runs the periodic sweeps (one server of a deployment at a time).
    sweep_lease: SweepLease
    #: Paused task types (in the database; the retained flag mirrors them).
    pauses: TaskPauses
    #: What GET /metrics exposes; the announcer observes into it.
    metrics: ServerMetrics
    #: The open-file limit shared out: connections, uploads and live views at most.
    budget: DescriptorBudget


def build_services(settings: Settings) -> Services:
    """Every part, constructed; nothing connects until `running`."""
    slot = None
    server_id = settings.server_id
    if server_id is None:
        # The same id after a restart, another one beside it: what keeps each server's MQTT
        # session its own and names it in the sweep lease.
        slot = claim_slot(
            settings.cl_server_dir / SERVER_SLOTS, "server", socket.gethostname(), "set COMPUTE_SERVER_ID"
        )
        server_id = slot.ident
    engine = make_engine(settings.database_url)
    # HTTP requests use their own engine: it waits for a locked or unreachable database at most
    # DB_REQUEST_TIMEOUT, on threads of their own (RouteDatabase), so the loop never waits.
    route_engine = make_engine(settings.database_url, wait=settings.db_request_timeout)
    db = RouteDatabase(settings.db_request_timeout, ping=lambda: ping(route_engine))
    topics = Topics.for_settings(settings)
    # A fixed client id (unguessable: its suffix is kept in the database, set in `running`)
    # and a persistent session: the broker keeps worker events for the server while it restarts.
    bus = MqttBus(
        settings,
        client_id=settings.server_client_id,
        clean_session=False,
        will=(topics.server_status, OFFLINE, True),
        name="server-bus",
    )
    status = ServerStatus(bus, topics)
    presence_bus = MqttBus(
        settings, client_id=f"{settings.server_client_id}-presence", name="server-presence"
    )
    # Route code runs on database threads; what it publishes (add_job's hint, a cancel's
    # messages) and marks goes through the event loop, where the bus lives.
    hop = LoopHop()
    safe_bus = LoopSafeBus(bus, hop)
    storage = JobStorage(settings.storage_dir, settings.max_upload_bytes)
    staging = OutputStaging(storage)
    #: Who made a change, in what other servers are told of it (db/notices.py).
    origin = f"server:{server_id}"
    repo = JobRepository(route_engine, policies=settings.task_policies, origin=origin)
    # One server of the deployment runs the periodic sweeps and publishes the queue summaries.
    sweep_lease = SweepLease(Leases(engine), server_id, settings.sweep_lease_seconds)

    def runs_sweeps() -> bool:
        return sweep_lease.held

    queues = QueueReporter(bus, topics, repo, hop, when=runs_sweeps)
    sweep_lease.on_gained = queues.mark_dirty
    budget = DescriptorBudget.for_process()
    changes = ChangeFeed(
        lambda job_id: owner_of(repo, job_id),
        buffer=settings.sse_buffer,
        max_subscribers=min(settings.sse_max_clients, budget.streams),
        max_per_viewer=settings.sse_max_per_user,
    )
    dispatcher = Dispatcher(safe_bus, topics)
    transitions = JobTransitions(engine, settings.task_policies, settings.max_result_bytes, origin=origin)
    # Every installed task type is reported, with zeros while it has no jobs.
    metrics = ServerMetrics(sorted(route_factories()))
    # On PostgreSQL the live views show what the database says was committed, by this server,
    # the deployment's others and workers writing their results themselves, in commit order;
    # on SQLite (one server per database) what this server changed.
    from_database = listens(settings.database_url)
    announcer = ChangeAnnouncer(
        safe_bus, topics, dispatcher, changes, queues, metrics, hop, show_own=not from_database
    )
    notices = (
        ChangeNotices(settings.database_url, announcer.show, hop, on_gap=changes.missed)
        if from_database
        else None
    )
    rescuer = Rescuer(
        transitions, announcer, settings.lease_seconds, settings.lease_renew_seconds, when=runs_sweeps
    )
    # The routes' changes wait for the database only as long as a request may.
    route_transitions = JobTransitions(
        route_engine, settings.task_policies, settings.max_result_bytes, origin=origin
    )
    pauses = TaskPauses(PausedTasks(route_engine), safe_bus, topics, dispatcher)

    async def announce_paused() -> None:  # the flags again on every connect: the database's state
        await asyncio.to_thread(pauses.publish_all)

    bus.on_connect(announce_paused)
    return Services(
        settings=settings,
        server_id=server_id,
        slot=slot,
        topics=topics,
        engine=engine,
        route_engine=route_engine,
        db=db,
        hop=hop,
        bus=bus,
        presence_bus=presence_bus,
        status=status,
        verifier=TokenVerifier.from_settings(settings),
        guest=GuestMode(PreferenceStore(route_engine), settings.guest_mode),
        storage=storage,
        staging=staging,
        repo=repo,
        queues=queues,
        changes=changes,
        dispatcher=dispatcher,
        announcer=announcer,
        notices=notices,
        submitter=JobSubmitter(repo, announcer, db),
        transitions=transitions,
        canceller=Canceller(route_transitions, safe_bus, topics, announcer),
        actions=JobActions(route_transitions, announcer),
        rescuer=rescuer,
        ingest=EventIngest(
            transitions,
            bus,
            topics,
            announcer,
            staging,
            max_payload=event_payload_limit(settings.max_result_bytes),
        ),
        registry=WorkerRegistry(
            bus,
            topics,
            WorkerSessions(engine),
            rescuer,
            listen=presence_bus,
            heartbeat_interval=settings.heartbeat_interval,
        ),
        orphans=OrphanSweeper(repo, storage, db, settings.orphan_grace_seconds, when=runs_sweeps),
        staging_sweeper=StagingSweeper(repo, staging, db, when=runs_sweeps),
        queries=JobQueries(route_engine),
        route_sessions=WorkerSessions(route_engine),
        job_rate=_job_rate_limit(settings),
        retention=RetentionSweeper(
            engine,
            storage,
            RetentionPolicy(settings.retention_days, settings.retention_max_jobs),
            when=runs_sweeps,
        ),
        forgetter=WorkerForgetter(engine, bus, topics, settings.worker_forget_after, when=runs_sweeps),
        aging=PriorityAging(engine, settings.priority_aging_seconds, queues.mark_dirty, when=runs_sweeps),
        sweep_lease=sweep_lease,
        pauses=pauses,
        metrics=metrics,
        budget=budget,
    )


def _job_rate_limit(settings: Settings) -> KeyedLimiter | SharedBuckets:
    """JOB_RATE_LIMIT per deployment: buckets in PostgreSQL, on a small engine of their own
    whose commits do not wait for the disk; with SQLite (one server) in this process."""
    rate, burst = settings.job_rate_limit, settings.job_rate_burst
    if rate <= 0 or is_sqlite(settings.database_url):
        return KeyedLimiter(rate, burst)
    return SharedBuckets(buckets_engine(settings.database_url, settings.db_request_timeout), rate, burst)


@contextlib.asynccontextmanager
async def running(
    services: Services, *, start_broker: bool, on_fatal: Callable[[], None] | None = None
) -> AsyncIterator[None]:
    """Start the broker (embedded mode), both buses and the background tasks; stop them after.

    The background tasks are watched (background.py): a sweep, the live views' fan-out or the
    queue summary that fails is logged and started again; the ingest of worker events is the
    server's reason to be, and if it fails `on_fatal` stops the process (by default: SIGTERM to
    itself, which any ASGI server takes as "shut down now").
    """
    s = services
    tasks = BackgroundTasks(on_fatal or _terminate)
    broker: Broker | None = None
    # Everything in one try: a server that fails to start releases what build_services took
    # (its slot's lock file, engines) and what it had started, as one that stops does.
    try:
        check_migrated(s.engine)
        s.hop.bind(asyncio.get_running_loop())
        s.guest.refresh()  # later refreshes run off the loop (auth.guest_mode_on)
        # The storage marker: a worker whose storage folder holds it shares this disk
        # (disk_sharing.py).
        write_storage_marker(s.settings.storage_dir, server_storage_id(s.engine))
        broker = await start_embedded_if_needed(s.settings) if start_broker else None
        s.bus.client_id, s.presence_bus.client_id = server_client_ids(
            s.settings.mqtt_client_id, s.settings.server_client_id, s.server_id, s.engine
        )
        await s.bus.start()
        await s.presence_bus.start()
        tasks.start("ingest", s.ingest.run, fatal=True)
        tasks.start("sweep-lease", s.sweep_lease.run)
        tasks.start("worker-sessions", s.registry.run)
        tasks.start("queue-summary", s.queues.run)
        tasks.start("lease-sweep", s.rescuer.run)
        tasks.start("orphan-sweep", s.orphans.run)
        tasks.start("staging-sweep", s.staging_sweeper.run)
        tasks.start("live-views", s.changes.run)
        if s.notices is not None:
            tasks.start("change-notices", s.notices.run)
            # Changes committed from here on reach the live views (a database that does not answer
            # now would have failed the migration check above).
            if not await s.notices.ready(NOTICES_READY):
                log.warning("not listening to the database's change notices yet; live views wait for it")
        tasks.start("guest-views", GuestStreams(s.changes, s.guest, s.db).run)
        tasks.start("retention", s.retention.run)
        tasks.start("forget-workers", s.forgetter.run)
        tasks.start("priority-aging", s.aging.run)
        yield
    finally:
        s.changes.close()  # compute-server ended the streams already (serving.py); tests may not
        await tasks.close()
        s.status.leave()
        await s.presence_bus.close()
        await s.bus.close()
        if broker is not None:
            await broker.stop()
        s.engine.dispose()
        s.route_engine.dispose()
        if isinstance(s.job_rate, SharedBuckets):
            s.job_rate.engine.dispose()
        if s.slot is not None:
            s.slot.release()


def _terminate() -> None:
    """Stop this process as its ASGI server stops on SIGTERM (gracefully)."""
    os.kill(os.getpid(), signal.SIGTERM)
