"""Cross-host fixtures: hosts, PostgreSQL and inputs for the directory; a deployment per test.

The first test makes the LAN (compute_bench.hosts.netns), kept until the directory's last test: a
server host, two worker hosts and a client host, with PostgreSQL started on the server host.
Each test gets `compute`: a database of its own (a copy of one that `compute-migrate` made), a
fresh Mosquitto (users from deploy/mosquitto's add-user.sh) and a started `compute-server`; the
test starts the workers it needs. At the end of each test every fault is undone (links up,
nothing blocked, no cap) and everything it started is ended.

A machine without root, iproute2, PostgreSQL's binaries or Mosquitto skips the whole directory
with the reason.
"""

from __future__ import annotations

import itertools
import signal
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import pytest

import compute_bench.inputs
from compute_bench.harness import wait_until
from compute_bench.hosts import netns
from compute_bench.hosts.hosted import (
    BROKER,
    CLIENT,
    DATABASE,
    SERVER,
    SERVER_2,
    SERVICE,
    WORKER_ADDRESSES,
    HostedCompute,
    Mosquitto,
    Postgres,
    Site,
    migrate,
    missing_services,
)
from compute_bench.hosts.netns import Lan
from compute_bench.inputs import Inputs

#: Short leases and keepalives so a lost host shows within seconds, as in tests/faults (a
#: keepalive of 2 s made live workers on a loaded 2-core VM look gone).
FAST = {
    "JOB_LEASE_SECONDS": "10",
    "MQTT_KEEPALIVE": "10",
    "WORKER_SWEEP_INTERVAL": "2",
    "MQTT_HEARTBEAT_INTERVAL": "5",
    "LOG_LEVEL": "INFO",
}
STAND_IN_TASKS = ("clip_embedding", "dino_embedding", "face_detection", "face_embedding")
_tags = itertools.count(1)


@pytest.fixture(scope="package")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    reason = netns.unavailable() or missing_services()
    if reason:
        pytest.skip(f"cross-host tests: {reason}")
    netns.sweep_stale()
    previous = _interrupt_on_sigterm()
    logs = tmp_path_factory.mktemp("hosts")
    lan = Lan()
    postgres: Postgres | None = None
    try:
        server = lan.host("server", SERVER, BROKER, DATABASE, SERVER_2, SERVICE)
        workers = (
            lan.host("worker-a", WORKER_ADDRESSES[0]),
            lan.host("worker-b", WORKER_ADDRESSES[1]),
        )
        client = lan.host("client", CLIENT)
        postgres = Postgres(server, DATABASE, lan.folder_of(server) / "postgresql", logs / "postgresql.log")
        postgres.start()
        # One role and one migrated database, copied for each test (compute-migrate takes
        # seconds; a copy of a small database a fraction of one).
        password = postgres.create_role(client, "compute")
        postgres.create_database(client, "compute_template", owner="compute")
        url = postgres.url("compute", password, "compute_template")
        migrate(server, url, lan.folder_of(server) / "migrate")
        models = _stand_in_models(logs / "models")
        yield Site(
            lan, server, workers, client, postgres, "compute", password, "compute_template", models, logs
        )
    finally:
        if postgres is not None:
            postgres.stop()
        lan.close()
        signal.signal(signal.SIGTERM, previous)


@pytest.fixture(scope="package")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Inputs:
    """The benchmark's standard photo (1920x1080 JPEG with EXIF) and a 2 s 720p video."""
    made = compute_bench.inputs.make(tmp_path_factory.mktemp("inputs"), video_seconds=2)
    if made.video is None:
        pytest.skip(f"cross-host tests: no test video ({made.video_problem})")
    return made


@pytest.fixture(scope="package")
def long_video(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A 4 s 720p video: hls_streaming runs seconds on it, long enough for a fault to land mid-job."""
    path = tmp_path_factory.mktemp("long") / "long_720p_4s.mp4"
    problem = compute_bench.inputs.write_video(path, 4)
    if problem:
        pytest.skip(f"cross-host tests: no test video ({problem})")
    return path.read_bytes()


def _interrupt_on_sigterm() -> signal.Handlers | Callable[[int, FrameType | None], Any] | int | None:
    """While the hosts exist, SIGTERM (a CI timeout, `kill`) unwinds like Ctrl-C, so the
    fixtures' cleanup still runs; without it pytest dies on the spot and the namespaces wait
    for the next run's sweep. Returns the handler it replaced, to put back."""
    previous = signal.getsignal(signal.SIGTERM)
    if previous is signal.SIG_DFL:

        def interrupt(_sig: int, _frame: object) -> None:
            raise KeyboardInterrupt("SIGTERM")

        signal.signal(signal.SIGTERM, interrupt)
    return previous


def _stand_in_models(folder: Path) -> Path:
    """Tiny ONNX graphs with the real models' names and shapes, for the four ML plugins."""
    from compute_bench import standins

    for task in STAND_IN_TASKS:
        standins.write(task, folder)
    return folder


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Keeps each phase's report on the test, so `compute` can show the logs of a failed one."""
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


@pytest.fixture
def database(site: Site, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """A migrated database of this test's own: (a tag naming this test's folders, its URL).
    At the end: dropped, and the logs in tmp_path shown when the test failed."""
    tag = f"t{next(_tags)}"
    name = f"compute_{tag}"
    site.postgres.create_database(site.client, name, owner=site.role, template=site.template)
    try:
        yield tag, site.postgres.url(site.role, site.password, name)
    finally:
        site.postgres.drop_database(site.client, name)
        # The server host keeps PostgreSQL only: whatever else the test started has ended (an
        # embedded broker follows its server within moments: the parent-death signal).
        wait_until(lambda: not _strays(site), 10, "the server host's processes to end")
        failed = getattr(request.node, "report_call", None)
        if failed is not None and failed.failed:
            _show_logs(tmp_path)


@pytest.fixture
def compute(
    site: Site, database: tuple[str, str], request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[HostedCompute]:
    """A deployment with its server started. Settings beyond FAST: parametrize it indirectly
    with a dict (`@pytest.mark.parametrize("compute", [{...}], indirect=True)`)."""
    tag, url = database
    broker = Mosquitto(
        site.server, BROKER, site.lan.folder_of(site.server) / tag / "mosquitto", tmp_path / "mosquitto.log"
    )
    broker.add_user("server")
    # Workers see none of the server host's files and set nothing about it (WORKER_FILES=auto).
    deployment = site.deployment(tag, url, tmp_path, broker, {**FAST, **getattr(request, "param", {})})
    try:
        broker.start()
        deployment.start_server()
        yield deployment
    finally:
        for host in site.workers:
            host.heal()
        deployment.stop()
        for host in site.workers:
            host.kill_all()
            host.processes.clear()
        broker.stop()


def _strays(site: Site) -> dict[int, str]:
    return {pid: name for pid, name in site.server.commands().items() if name != "postgres"}


def _show_logs(folder: Path) -> None:
    """The end of every process's log, for a failed test's report (pytest shows what we print)."""
    for log in sorted(folder.glob("*.log")):
        tail = log.read_text(errors="replace")[-4000:]
        print(f"\n----- {log.name} (last 4000 characters) -----\n{tail}")
