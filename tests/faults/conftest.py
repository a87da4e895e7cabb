"""Fault-test fixtures: a whole deployment in subprocesses, over each available broker and database."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from compute_bench.harness import free_port, port_answers
from tests.faults.cluster import Cluster

#: Short leases and keepalives so faults show within seconds, but not so short that a loaded
#: 2-core VM misses them: a keepalive of 2 s there made live workers look gone (their Last Will
#: fired), and their jobs were rescued and run twice, as the README says they may be.
FAST = {
    "JOB_LEASE_SECONDS": "10",
    "MQTT_KEEPALIVE": "10",
    "WORKER_SWEEP_INTERVAL": "2",
    "MQTT_HEARTBEAT_INTERVAL": "5",
}


@pytest.fixture(params=["amqtt+sqlite", "mosquitto+sqlite", "mosquitto+postgresql"])
def cluster(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Cluster]:
    broker_kind, db_kind = request.param.split("+")
    if broker_kind == "mosquitto" and shutil.which("mosquitto") is None:
        pytest.skip("mosquitto is not installed")
    database_url = None
    drop: str | None = None
    if db_kind == "postgresql":
        if not port_answers("127.0.0.1", 5432):
            pytest.skip("PostgreSQL does not answer on 127.0.0.1:5432")
        import psycopg

        drop = f"compute_fault_{uuid.uuid4().hex[:10]}"
        with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{drop}"')
        database_url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{drop}"
    c = Cluster(tmp_path, broker_kind, free_port(), free_port(), database_url, **FAST)
    try:
        c.start_broker()
        c.migrate()
        c.start_server()
        yield c
    finally:
        c.stop()
        if drop is not None:
            import psycopg

            with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{drop}" WITH (FORCE)')
