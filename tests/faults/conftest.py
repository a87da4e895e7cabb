"""Fault-test fixtures: a whole deployment in subprocesses, over each available broker and database."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.databases import PostgresUnavailable, fresh_pg_database
from tests.support.fault_cluster import FAST, Cluster


@pytest.fixture(params=["amqtt+sqlite", "mosquitto+sqlite", "mosquitto+postgresql"])
def cluster(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Cluster]:
    broker_kind, db_kind = request.param.split("+")
    if broker_kind == "mosquitto" and shutil.which("mosquitto") is None:
        pytest.skip("mosquitto is not installed")
    with contextlib.ExitStack() as stack:
        database_url = None
        if db_kind == "postgresql":
            try:
                database_url = stack.enter_context(fresh_pg_database("compute_fault"))
            except PostgresUnavailable as exc:
                pytest.skip(str(exc))
        c = Cluster(tmp_path, broker_kind, database_url, **FAST)
        stack.callback(c.stop)
        c.start_broker()
        c.migrate()
        c.start_server()
        yield c
