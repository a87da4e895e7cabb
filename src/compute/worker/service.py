"""A worker with its connections: what `compute-worker` runs, and what tests start in-process.

Each run draws a session id, a secret and a random client-id suffix, registers the session in
`worker_sessions` (before it says anything on the bus, so the server can verify its first
`info`), and marks it stopped on a clean shutdown (before clearing its retained info, so the
server believes the clearing).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import socket
from dataclasses import dataclass
from typing import Any

from cl_ml_tools import ComputeModule
from sqlalchemy.exc import ProgrammingError

from compute import __version__
from compute.bus.mqtt import MqttBus
from compute.config import Settings
from compute.db.repository import JobRepository
from compute.db.session import check_migrated, make_engine
from compute.db.worker_sessions import WorkerSessions, new_secret
from compute.errors import NotMigrated, first_line
from compute.logs import LogLimiter
from compute.plugins import environment as plugin_environment
from compute.topics import OFFLINE, Topics
from compute.worker.announce import new_client_suffix, new_session, offline_will
from compute.worker.dbretry import DB_ERRORS, Backoff
from compute.worker.disk_sharing import decide
from compute.worker.file_client import FileClient
from compute.worker.job_folder import JobFolders, RemoteFolders, SharedFolders
from compute.worker.loop import Worker
from compute.worker.scratch import Scratch

log = logging.getLogger(__name__)
limited = LogLimiter(log)

#: Seconds a starting worker waits for the broker before its first claim pass.
FIRST_CONNECT_WAIT = 5.0
#: Seconds a database call of the worker waits for a lock before it fails and is retried with
#: backoff. Short, because the calls run on the worker's event loop: a 30 s wait there would
#: also hold back MQTT keepalives, hints and cancel requests.
DB_WAIT = 5.0
#: Seconds a leaving worker waits for the broker to acknowledge its goodbye.
GOODBYE_WAIT = 2.0


def client_ids(worker_id: str, suffix: str) -> tuple[str, str]:
    """The main and presence connections' MQTT client ids: not guessable from the worker id."""
    return f"compute-worker-{worker_id}-{suffix}", f"compute-worker-{worker_id}-{suffix}-presence"


@dataclass
class WorkerService:
    worker: Worker
    bus: MqttBus
    presence: MqttBus
    engine: Any
    sessions: WorkerSessions
    secret: str
    #: The server's job folders, or scratch copies of them (worker/job_folder.py).
    folders: JobFolders

    @classmethod
    def build(
        cls, settings: Settings, tasks: dict[str, ComputeModule], *, db_wait: float = DB_WAIT
    ) -> WorkerService:
        engine = make_engine(settings.database_url, wait=db_wait)
        # Deciding where the job folders are reads server_preferences: a database from before the
        # tables existed gets "run compute-migrate", not a driver error.
        try:
            check_migrated(engine)
        except NotMigrated:
            engine.dispose()
            raise
        settings, folders = _job_folders(settings, engine)
        plugin_environment.configure(settings)
        topics = Topics.for_settings(settings)
        worker_id = settings.worker_id
        session, secret = new_session(), new_secret()
        main_id, presence_id = client_ids(worker_id, new_client_suffix())
        # Two connections, each with its own Last Will (see worker/announce.py).
        bus = MqttBus(
            settings,
            client_id=main_id,
            will=(topics.worker_info(worker_id), offline_will(worker_id, session, secret), True),
            name=f"worker-{worker_id}",
        )
        presence = MqttBus(
            settings,
            client_id=presence_id,
            will=(topics.worker_status(worker_id), OFFLINE, True),
            name=f"presence-{worker_id}",
        )
        repo = JobRepository(engine, policies=settings.task_policies)
        sessions = WorkerSessions(engine)
        worker = Worker(
            settings,
            repo,
            bus,
            topics,
            tasks,
            presence=presence,
            session=session,
            secret=secret,
            sessions=sessions,
            folders=folders,
        )
        return cls(worker, bus, presence, engine, sessions, secret, folders)

    async def register(self) -> bool:
        """Record this run in `worker_sessions`, retrying database errors until it works.

        False if the worker was asked to stop first.
        """
        worker = self.worker
        backoff = Backoff()
        while not worker.stopping.is_set():
            try:
                self.sessions.register(
                    worker.session,
                    worker.worker_id,
                    self.secret,
                    worker.task_types,
                    socket.gethostname(),
                    os.getpid(),
                    __version__,
                )
                return True
            except DB_ERRORS as exc:
                if isinstance(exc, ProgrammingError) or "no such table" in str(exc):
                    # Not transient: a database from before worker_sessions existed.
                    raise NotMigrated(
                        f"cannot register this worker ({first_line(exc)}): run `compute-migrate`"
                    ) from exc
                worker.db_errors += 1
                limited.warning(
                    "register",
                    "could not register this worker session (%s); retrying",
                    first_line(exc),
                )
            try:
                await asyncio.wait_for(worker.stopping.wait(), backoff.next())
            except TimeoutError:
                pass
        return False

    async def connect(self, timeout: float = FIRST_CONNECT_WAIT) -> bool:
        """Register the session, start both connections; wait (up to `timeout`) for the main one.

        The first claim pass should run once connected, so that the events of jobs already
        waiting reach the server; a broker that stays down only delays it (results then go
        to the database directly).
        """
        await self.register()
        await self.presence.start()
        await self.bus.start()
        return await self.bus.wait_connected(timeout)

    async def withdraw(self) -> None:
        """Leaving at once (a second signal): clear the CL Server capability, acknowledged, and no
        more. The main connection then drops without a goodbye, so its Will tells the server
        to rescue the running claim; the presence connection's Will says offline."""
        self.worker.announcer.withdraw_capability()
        await self.bus.drain(GOODBYE_WAIT)

    async def close(self) -> None:
        """Say goodbye (session stopped, retained info and capability cleared, status offline)."""
        try:
            self.sessions.stop(self.worker.session)
        except DB_ERRORS as exc:  # the server notices from last_seen instead
            log.warning("could not mark this session stopped: %s", first_line(exc))
        self.worker.announcer.publish_offline()
        # Acknowledged before the disconnect: a goodbye written but not yet delivered dies with
        # the process, and no Will covers the capability.
        await asyncio.gather(self.bus.drain(GOODBYE_WAIT), self.presence.drain(GOODBYE_WAIT))
        await self.bus.close()
        await self.presence.close()
        await self.folders.close()
        self.engine.dispose()


def _job_folders(settings: Settings, engine: Any) -> tuple[Settings, JobFolders]:
    """Where this worker's plugins find their job folders: the server's, when this host sees
    them (worker/disk_sharing.py), else scratch folders of its own, which plugins then take for
    the storage folder (settings.storage_dir: plugins/environment.py)."""
    sharing = decide(settings, engine)
    if sharing.shared:
        log.info("job folders: the server's, in %s (%s)", settings.storage_dir, sharing.reason)
        return dataclasses.replace(settings, worker_files="shared"), SharedFolders()
    scratch = Scratch(settings.worker_scratch_dir, settings.worker_id)
    scratch.open()
    log.info(
        "job folders: fetched from %s into %s, outputs sent back (%s)",
        settings.server_url,
        scratch.jobs_root,
        sharing.reason,
    )
    client = FileClient(settings.server_url, default_max_request=settings.max_upload_bytes)
    remote = dataclasses.replace(settings, storage_dir=scratch.storage_dir, worker_files="remote")
    return remote, RemoteFolders(scratch, client)
