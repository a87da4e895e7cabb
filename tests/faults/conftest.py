"""Fault-test fixtures: a whole deployment in subprocesses, over each available broker and database."""

from __future__ import annotations

import shutil
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults.cluster import Cluster

#: Short leases and keepalives so faults show within seconds, but not so short that a loaded
#: 2-core VM misses them: a keepalive of 2 s there made live workers look gone (their Last Will
#: fired), and their jobs were rescued and run twice, as the README says they may be.
FAST = {"JOB_LEASE_SECONDS": "10", "MQTT_KEEPALIVE": "10", "WORKER_SWEEP_INTERVAL": "2",
        "MQTT_HEARTBEAT_INTERVAL": "5"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _postgres_answers() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=0.3):
            return True
    except OSError:
        return False


@pytest.fixture(params=["amqtt+sqlite", "mosquitto+sqlite", "mosquitto+postgresql"])
def cluster(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Cluster]:
    broker_kind, db_kind = request.param.split("+")
    if broker_kind == "mosquitto" and shutil.which("mosquitto") is None:
        pytest.skip("mosquitto is not installed")
    database_url = None
    drop: str | None = None
    if db_kind == "postgresql":
        if not _postgres_answers():
            pytest.skip("PostgreSQL does not answer on 127.0.0.1:5432")
        import psycopg

        drop = f"compute_fault_{uuid.uuid4().hex[:10]}"
        with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{drop}"')
        database_url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{drop}"
    c = Cluster(tmp_path, broker_kind, _free_port(), _free_port(), database_url, **FAST)
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
