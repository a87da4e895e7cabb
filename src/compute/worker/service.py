"""A worker with its connections: what `compute-worker` runs, and what tests start in-process."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from cl_ml_tools import ComputeModule

from compute.bus.mqtt import MqttBus
from compute.config import Settings
from compute.db.repository import JobRepository
from compute.db.session import make_engine
from compute.plugins import environment as plugin_environment
from compute.topics import OFFLINE, Topics
from compute.worker.announce import new_session, offline_will
from compute.worker.loop import Worker

#: Seconds a starting worker waits for the broker before its first claim pass.
FIRST_CONNECT_WAIT = 5.0


@dataclass
class WorkerService:
    worker: Worker
    bus: MqttBus
    presence: MqttBus
    engine: Any

    @classmethod
    def build(cls, settings: Settings, tasks: dict[str, ComputeModule]) -> WorkerService:
        plugin_environment.configure(settings)
        topics = Topics.for_settings(settings)
        worker_id = settings.worker_id
        session = new_session()
        # Two connections, each with its own Last Will (see worker/announce.py).
        bus = MqttBus(settings, client_id=f"compute-worker-{worker_id}",
                      will=(topics.worker_info(worker_id), offline_will(worker_id, session), True),
                      name=f"worker-{worker_id}")
        presence = MqttBus(settings, client_id=f"compute-worker-{worker_id}-presence",
                           will=(topics.worker_status(worker_id), OFFLINE, True),
                           name=f"presence-{worker_id}")
        engine = make_engine(settings.database_url)
        repo = JobRepository(engine, policies=settings.task_policies)
        worker = Worker(settings, repo, bus, topics, tasks, presence=presence, session=session)
        return cls(worker, bus, presence, engine)

    async def connect(self, timeout: float = FIRST_CONNECT_WAIT) -> bool:
        """Start both connections; wait (up to `timeout`) for the main one.

        The first claim pass should run once connected, so that the events of jobs already
        waiting reach the server; a broker that stays down only delays it (results then go
        to the database directly).
        """
        await self.presence.start()
        await self.bus.start()
        return await self.bus.wait_connected(timeout)

    async def close(self) -> None:
        """Say goodbye (clear retained info and capability, status offline) and disconnect."""
        self.worker.announcer.publish_offline()
        await asyncio.sleep(0)  # let the transports flush the goodbye before disconnecting
        await self.bus.close()
        await self.presence.close()
        self.engine.dispose()
