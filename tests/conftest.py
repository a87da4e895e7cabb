"""Shared fixtures. Each yields an opened resource and closes it afterwards; what they are built
from lives in tests/support.

Backends: `broker` runs over an in-process amqtt and the Mosquitto on 127.0.0.1:1883;
`db_url` over a temp SQLite file and a per-session PostgreSQL database on 127.0.0.1:5432.
Unreachable Mosquitto/PostgreSQL are skipped with the reason.

The hooks run the tiers fastest first and stop after the unit tier if a unit test failed
(tests/support/tiers.py).
"""

from __future__ import annotations

import logging
import shutil
import uuid
from collections.abc import AsyncIterator, Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

from compute.config import Settings
from compute.db.migrate import upgrade_head
from compute.db.repository import JobRepository
from compute.db.session import make_engine
from compute.ports import port_answers
from tests.support.asyncapi_payloads import PayloadChecker, checking_payloads
from tests.support.auth import SigningKey, make_signing_key
from tests.support.brokers import MOSQUITTO, AmqttBroker, BrokerInfo
from tests.support.databases import PostgresUnavailable, empty_jobs, fresh_pg_database
from tests.support.inprocess import Server, WorkerFactory, Workers, make_settings, running_server
from tests.support.mqtt import MqttProbe, clear_retained
from tests.support.tiers import stop_after, tier

TESTS = Path(__file__).resolve().parent
#: Whether a test of the first tier (unit) failed in this run.
_FIRST_TIER_FAILED = pytest.StashKey[bool]()


def pytest_configure(config: pytest.Config) -> None:
    # The brokers' and MQTT clients' chatter would bury a failing test's own log lines.
    for noisy in ("amqtt", "transitions", "gmqtt"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


# -- the tiers, fastest first -------------------------------------------------------------


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: tier(item.path, TESTS))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed and tier(item.path, TESTS) == 0:
        item.config.stash[_FIRST_TIER_FAILED] = True
    return report


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(
    item: pytest.Item, nextitem: pytest.Item | None
) -> Generator[None, object, object]:
    result = yield
    failed = item.config.stash.get(_FIRST_TIER_FAILED, False)
    why = stop_after(failed, item.path, None if nextitem is None else nextitem.path, TESTS)
    if why is not None:
        item.session.shouldfail = why  # the run ends here, as after --maxfail
    return result


# -- brokers ------------------------------------------------------------------------------


@pytest.fixture
async def amqtt_broker() -> AsyncIterator[BrokerInfo]:
    broker = await AmqttBroker().start()
    yield BrokerInfo("amqtt", "127.0.0.1", broker.port)
    await broker.stop()


@pytest.fixture(params=["amqtt", "mosquitto"])
async def broker(request: pytest.FixtureRequest) -> AsyncIterator[BrokerInfo]:
    if request.param == "mosquitto":
        if not port_answers(*MOSQUITTO):
            pytest.skip("Mosquitto does not answer on 127.0.0.1:1883")
        yield BrokerInfo("mosquitto", *MOSQUITTO)
        return
    broker = await AmqttBroker().start()
    yield BrokerInfo("amqtt", "127.0.0.1", broker.port)
    await broker.stop()


# -- databases ----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite file, copied for each test (cheaper than migrating each time)."""
    path = tmp_path_factory.mktemp("template") / "compute.db"
    upgrade_head(f"sqlite:///{path}")
    return path


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """A fresh PostgreSQL database for this session, migrated; dropped at the end."""
    try:
        with fresh_pg_database("compute_test") as url:
            upgrade_head(url)
            yield url
    except PostgresUnavailable as exc:
        pytest.skip(str(exc))


@pytest.fixture
def sqlite_url(sqlite_template: Path, tmp_path: Path) -> str:
    path = tmp_path / "compute.db"
    shutil.copyfile(sqlite_template, path)
    return f"sqlite:///{path}"


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest) -> Iterator[str]:
    if request.param == "sqlite":
        yield request.getfixturevalue("sqlite_url")
        return
    url = request.getfixturevalue("pg_database")
    empty_jobs(url)
    yield url
    empty_jobs(url)


@pytest.fixture
def engine(db_url: str) -> Iterator[Any]:
    eng = make_engine(db_url)
    yield eng
    eng.dispose()


@pytest.fixture
def repo(engine: Any) -> JobRepository:
    return JobRepository(engine)


# -- settings, server, workers -------------------------------------------------------------


@pytest.fixture
def prefix() -> str:
    """A topic prefix of this test only: tests on the shared Mosquitto never meet."""
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def settings(tmp_path: Path, db_url: str, broker: BrokerInfo, prefix: str) -> AsyncIterator[Settings]:
    yield make_settings(tmp_path, db_url, broker, prefix)
    if broker.kind == "mosquitto":
        await clear_retained(broker.host, broker.port, prefix)


@pytest.fixture
async def probe(broker: BrokerInfo) -> AsyncIterator[MqttProbe]:
    async with MqttProbe(broker.host, broker.port) as p:
        yield p


@pytest.fixture
async def server(settings: Settings) -> AsyncIterator[Server]:
    async with running_server(settings) as srv:
        yield srv


@pytest.fixture
async def start_worker(settings: Settings) -> AsyncIterator[WorkerFactory]:
    """start_worker(tasks=..., plugins=..., **settings_changes) -> a connected RunningWorker."""
    workers = Workers(settings)
    yield workers.start
    await workers.shutdown()


# -- signing in, checking what is published ----------------------------------------------------


@pytest.fixture(scope="session")
def signing_key(tmp_path_factory: pytest.TempPathFactory) -> SigningKey:
    """(private key PEM, path of the public key PEM), as CL Server's auth service writes it."""
    return make_signing_key(tmp_path_factory.mktemp("keys"))


@pytest.fixture
def published_payloads_follow_asyncapi() -> Iterator[PayloadChecker]:
    """Every payload published through MqttBus during the test follows the AsyncAPI document
    (autouse in the integration and plugin tiers; see tests/support/asyncapi_payloads.py)."""
    with checking_payloads() as checker:
        yield checker
