"""Defence in depth at the broker: deploy/mosquitto's users and ACL, and the embedded brokers' password.

Mosquitto: each test starts a private broker (free port, temporary folder) with the shipped
mosquitto.conf (only ports and paths rewritten), the shipped ACL file, and users made by the shipped
add-user.sh (which runs `mosquitto_passwd`). Skipped only when Mosquitto is not installed.

"Never reaches a subscriber" is shown with a barrier, not a pause: the forging client's own
SUBSCRIBE round trip proves the broker has handled its earlier publishes (one connection's packets
are handled in order), then a marker from the server user reaches the observer after anything the
broker forwarded before it. Each test also sends an allowed message the same way and sees it arrive.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import httpx
import pytest

from compute import broker as broker_module
from compute.broker import (
    Broker,
    EmbeddedBroker,
    embedded_broker,
    embedded_credentials,
    ensure_password_file,
)
from compute.config import EMBEDDED_PASSWORD_FILE, EMBEDDED_USERNAME, Settings, load_settings
from compute.errors import ConfigError
from compute.mosquitto import MosquittoBroker, find_mosquitto
from compute.plugins.registry import load_tasks
from compute.ports import port_answers
from compute.server.app import create_app
from compute.worker.service import WorkerService
from compute_bench.harness import Processes, free_port, wait_until
from compute_bench.hosts.hosted import add_mosquitto_user, shipped_mosquitto_config
from tests.support.inprocess import Server, running_server
from tests.support.mqtt import MqttProbe
from tests.support.waits import wait_for

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "mosquitto"
MOSQUITTO = shutil.which("mosquitto")
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd")
needs_mosquitto = pytest.mark.skipif(
    MOSQUITTO is None or MOSQUITTO_PASSWD is None, reason="mosquitto and mosquitto_passwd are not installed"
)

W1, W2 = "acl-w1", "acl-w2"
TASK = "image_conversion"


# -- a private Mosquitto with the shipped configuration ---------------------------------------


@dataclass(frozen=True)
class PrivateMosquitto:
    port: int
    passwords: dict[str, str]
    log: Path

    def probe(self, user: str | None) -> MqttProbe:
        if user is None:
            return MqttProbe("127.0.0.1", self.port)
        return MqttProbe("127.0.0.1", self.port, username=user, password=self.passwords[user])


def shipped_settings() -> dict[str, str]:
    """deploy/mosquitto/mosquitto.conf as option -> value (last one wins, like Mosquitto)."""
    options: dict[str, str] = {}
    for line in (DEPLOY / "mosquitto.conf").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.strip().partition(" ")
            options[key] = value.strip()
    return options


def private_config(folder: Path, port: int) -> str:
    """The shipped mosquitto.conf with this test's port, files and log; nothing else changed."""
    return shipped_mosquitto_config(folder, "127.0.0.1", port)


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[PrivateMosquitto]:
    assert MOSQUITTO is not None
    folder = tmp_path / "mosquitto"
    folder.mkdir()
    shutil.copyfile(DEPLOY / "compute.acl", folder / "compute.acl")
    passwords = {user: uuid.uuid4().hex for user in ("compute-server", "dashboard", W1, W2)}
    add_mosquitto_user(folder, "server", password=passwords["compute-server"])
    add_mosquitto_user(folder, "dashboard", password=passwords["dashboard"])
    add_mosquitto_user(folder, "worker", W1, password=passwords[W1])
    add_mosquitto_user(folder, "worker", W2, password=passwords[W2])
    port = free_port()
    (folder / "mosquitto.conf").write_text(private_config(folder, port))
    log = folder / "mosquitto.log"
    # The with-block closes the stderr pipe; Processes.end stops it (SIGTERM, SIGKILL past 10 s).
    with subprocess.Popen(
        [MOSQUITTO, "-c", str(folder / "mosquitto.conf")], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    ) as proc:
        try:
            wait_until(
                lambda: proc.poll() is not None or port_answers("127.0.0.1", port),
                timeout=20,
                what="the private Mosquitto to listen",
            )
            assert proc.poll() is None, f"mosquitto exited: {proc.stderr.read() if proc.stderr else ''!r}"
            yield PrivateMosquitto(port, passwords, log)
        finally:
            Processes.end([proc], timeout=10)


# -- a bare MQTT 3.1.1 CONNECT, for exact CONNACK codes and for Wills ---------------------------


def _string(value: str | bytes) -> bytes:
    raw = value.encode() if isinstance(value, str) else value
    return len(raw).to_bytes(2, "big") + raw


def _remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def connect_packet(
    client_id: str,
    username: str | None = None,
    password: str | None = None,
    will: tuple[str, bytes] | None = None,
) -> bytes:
    flags = 0x02  # clean session
    payload = _string(client_id)
    if will is not None:
        flags |= 0x04 | 0x08 | 0x20  # Will, QoS 1, retained: what a worker's Will looks like
        payload += _string(will[0]) + _string(will[1])
    if username is not None:
        flags |= 0x80
        payload += _string(username)
    if password is not None:
        flags |= 0x40
        payload += _string(password)
    variable = _string("MQTT") + bytes([4, flags]) + (60).to_bytes(2, "big")
    return bytes([0x10]) + _remaining_length(len(variable) + len(payload)) + variable + payload


@contextlib.asynccontextmanager
async def raw_connection(
    port: int,
    client_id: str,
    username: str | None = None,
    password: str | None = None,
    will: tuple[str, bytes] | None = None,
) -> AsyncIterator[int]:
    """Yield the CONNACK return code (0 = accepted, 5 = not authorised, -1 = closed without one);
    leave by dropping the TCP connection without DISCONNECT, which makes the broker send the Will."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(connect_packet(client_id, username, password, will))
        await writer.drain()
        try:
            connack = await asyncio.wait_for(reader.readexactly(4), 10)
        except asyncio.IncompleteReadError:
            yield -1
        else:
            assert connack[0] == 0x20, connack
            yield connack[3]
    finally:
        writer.transport.abort()


# -- Mosquitto: who may connect ---------------------------------------------------------------


def test_shipped_configuration_has_the_settings_that_matter() -> None:
    options = shipped_settings()
    assert options["allow_anonymous"] == "false"
    assert options["per_listener_settings"] == "false"
    assert options["set_tcp_nodelay"] == "true"
    assert options["persistence"] == "true"
    assert int(options["max_queued_messages"]) >= 10_000  # the default 1000 dropped a real result
    assert int(options["max_inflight_messages"]) > 20
    assert int(options["max_packet_size"]) > 1024 * 1024  # room for Compute's 1 MiB payloads
    acl = (DEPLOY / "compute.acl").read_text()
    assert not re.search(r"^\s*pattern\b", acl, re.MULTILINE), "a pattern would apply to dashboards too"


@needs_mosquitto
async def test_mosquitto_refuses_anonymous_and_wrong_passwords(mosquitto: PrivateMosquitto) -> None:
    async with raw_connection(mosquitto.port, "anon") as code:
        assert code == 5
    async with raw_connection(mosquitto.port, "liar", "dashboard", "not-the-password") as code:
        assert code == 5
    async with raw_connection(mosquitto.port, "nobody", "nobody", "x") as code:
        assert code == 5
    async with raw_connection(mosquitto.port, "dash", "dashboard", mosquitto.passwords["dashboard"]) as code:
        assert code == 0


# -- Mosquitto: what each role may publish -----------------------------------------------------


async def assert_none_arrive(
    forger: MqttProbe, observer: MqttProbe, server: ServerProbe, forged: dict[str, bool], marker_topic: str
) -> None:
    """`forger` publishes a unique payload on each topic (retained where True); none reaches `observer`."""
    payload = f"forged-{uuid.uuid4().hex}".encode()
    for topic, retain in forged.items():
        forger.publish(topic, payload, retain=retain)
    await forger.subscribe(f"barrier/{uuid.uuid4().hex}")  # its SUBACK follows the publishes
    await server.sync_to(observer, marker_topic)
    leaked = sorted({m.topic for m in observer.messages if m.payload == payload})
    assert leaked == [], f"forged messages reached a subscriber on {leaked}"


class ServerProbe(MqttProbe):
    async def sync_to(self, observer: MqttProbe, topic: str) -> None:
        """Publish a unique marker as the server user and wait until `observer` has it."""
        marker = uuid.uuid4().hex.encode()
        self.publish(topic, marker)
        await observer.expect(lambda m: m.topic == topic and m.payload == marker, what=f"marker on {topic}")


def server_probe(mosquitto: PrivateMosquitto) -> ServerProbe:
    return ServerProbe(
        "127.0.0.1", mosquitto.port, username="compute-server", password=mosquitto.passwords["compute-server"]
    )


def command_topics(worker: str) -> dict[str, bool]:
    """What only the server may publish, as topic -> retained."""
    return {
        f"compute/jobs/available/{TASK}": False,
        f"compute/workers/{worker}/confirm": False,
        f"compute/workers/{worker}/cancel": False,
        f"compute/queues/{TASK}": True,
        "compute/server/status": True,
        "inference/events": False,
        f"inference/workers/{worker}": True,  # the server clears it when a worker vanishes
        f"compute/tasks/{TASK}/paused": True,
    }


def worker_topics(worker: str) -> dict[str, bool]:
    """What only that worker may publish (and the server, to clear a worker gone for good)."""
    return {
        f"compute/workers/{worker}/info": True,
        f"compute/workers/{worker}/status": True,
        f"inference/workers/{worker}": True,
    }


@needs_mosquitto
async def test_dashboard_reads_everything_and_cannot_publish_a_command(mosquitto: PrivateMosquitto) -> None:
    async with (
        mosquitto.probe("dashboard") as observer,
        mosquitto.probe("dashboard") as forger,
        server_probe(mosquitto) as server,
    ):
        await observer.subscribe("compute/#")
        await observer.subscribe("inference/#")
        # It reads: the server's real commands reach the dashboard.
        server.publish(f"compute/workers/{W1}/cancel", b'{"job_id":"j","timestamp":1}')
        await observer.expect(lambda m: m.topic == f"compute/workers/{W1}/cancel", what="a real cancel")
        # It cannot forge a command, a job event, or a worker's presence.
        forged = {**command_topics(W1), **worker_topics(W1), f"compute/events/{TASK}/j": False}
        await assert_none_arrive(forger, observer, server, forged, "compute/queues/_marker")
    # Nothing forged was retained either: a late subscriber sees none of it.
    async with mosquitto.probe("dashboard") as late, server_probe(mosquitto) as server:
        await late.subscribe("compute/#")
        await late.subscribe("inference/#")
        await server.sync_to(late, "compute/queues/_marker2")
        assert not [m for m in late.messages if m.payload.startswith(b"forged-")]


@needs_mosquitto
async def test_worker_cannot_speak_for_another_worker_or_the_server(mosquitto: PrivateMosquitto) -> None:
    async with (
        mosquitto.probe("dashboard") as observer,
        mosquitto.probe(W1) as w1,
        server_probe(mosquitto) as server,
    ):
        await observer.subscribe("compute/#")
        await observer.subscribe("inference/#")
        # Its own topics and job events go through ...
        w1.publish(f"compute/workers/{W1}/info", b"own-info")
        w1.publish(f"compute/events/{TASK}/j", b"own-event")
        await observer.expect(lambda m: m.payload == b"own-info", what="the worker's own info")
        await observer.expect(lambda m: m.payload == b"own-event", what="the worker's job event")
        # ... another worker's presence and every server topic (its own confirm and cancel too) do not.
        forged = {**worker_topics(W2), **command_topics(W2), **command_topics(W1)}
        forged.pop(f"inference/workers/{W1}")  # its own capability: allowed
        await assert_none_arrive(w1, observer, server, forged, "compute/queues/_marker")


@needs_mosquitto
async def test_worker_reads_only_its_own_commands(mosquitto: PrivateMosquitto) -> None:
    async with mosquitto.probe(W1) as w1, server_probe(mosquitto) as server:
        await w1.subscribe("compute/workers/+/cancel")
        await w1.subscribe("compute/workers/+/confirm")
        for worker in (W2, W1):  # the other worker's first: its own arriving proves the other's was handled
            server.publish(f"compute/workers/{worker}/cancel", f"cancel-{worker}".encode())
            server.publish(f"compute/workers/{worker}/confirm", f"confirm-{worker}".encode())
        await w1.expect(lambda m: m.payload == f"confirm-{W1}".encode(), what="its own confirm")
        assert sorted(m.payload for m in w1.messages) == sorted(
            [f"cancel-{W1}".encode(), f"confirm-{W1}".encode()]
        )


@needs_mosquitto
async def test_server_clears_a_gone_workers_retained_topics_and_flags_paused_tasks(
    mosquitto: PrivateMosquitto,
) -> None:
    """What the server's forgetting and pausing publish goes through the restricted broker."""
    async with (
        mosquitto.probe(W1) as w1,
        mosquitto.probe("dashboard") as observer,
        server_probe(mosquitto) as server,
    ):
        await observer.subscribe("compute/#")
        for topic in worker_topics(W1):
            w1.publish(topic, b"left-behind", retain=True)
        await observer.expect(lambda m: m.topic == f"compute/workers/{W1}/status", what="retained status")
        for topic in worker_topics(W1):
            server.publish(topic, b"", retain=True)
        server.publish(f"compute/tasks/{TASK}/paused", b'{"paused":true}', retain=True)
        await observer.expect(lambda m: m.topic == f"compute/tasks/{TASK}/paused", what="the paused flag")
    async with mosquitto.probe("dashboard") as late, server_probe(mosquitto) as server:
        await late.subscribe("compute/#")
        await late.subscribe("inference/#")
        await server.sync_to(late, "compute/queues/_marker3")
        assert [m.topic for m in late.messages if m.retained and m.payload == b"left-behind"] == []
        assert [m.payload for m in late.on_topic(f"compute/tasks/{TASK}/paused")] == [b'{"paused":true}']
        server.publish(f"compute/tasks/{TASK}/paused", b"", retain=True)


@needs_mosquitto
async def test_a_will_on_another_workers_topic_is_dropped(mosquitto: PrivateMosquitto) -> None:
    """A worker's Last Will is what rescues its jobs: no other user may leave one in its name."""
    forged = f"forged-{uuid.uuid4().hex}".encode()
    async with mosquitto.probe("dashboard") as observer:
        await observer.subscribe("compute/workers/#")
        for user, target in (("dashboard", W1), (W2, W1), (W1, W1)):  # the last one is allowed
            client_id = f"will-{uuid.uuid4().hex[:8]}"
            will = (f"compute/workers/{target}/info", forged + user.encode())
            async with raw_connection(
                mosquitto.port, client_id, user, mosquitto.passwords[user], will=will
            ) as code:
                assert code == 0
            # Taking the client id over proves the broker is done with the dropped connection and its Will.
            async with raw_connection(mosquitto.port, client_id, user, mosquitto.passwords[user]) as code:
                assert code == 0
        arrived = await observer.expect(lambda m: m.payload.startswith(forged), what="the allowed Will")
        assert arrived.payload == forged + W1.encode()
        assert [m.payload for m in observer.messages if m.payload.startswith(forged)] == [arrived.payload]


# -- Mosquitto: the real server and worker through the restricted broker ------------------------


def base_settings(tmp_path: Path, database_url: str, **changes: object) -> Settings:
    return replace(
        Settings(
            cl_server_dir=tmp_path,
            database_url=database_url,
            storage_dir=tmp_path / "storage",
            auth_disabled=True,
            sweep_interval=30.0,
            heartbeat_interval=30.0,
        ),
        **changes,  # type: ignore[arg-type]
    )


@contextlib.asynccontextmanager
async def running_worker(settings: Settings) -> AsyncIterator[WorkerService]:
    service = WorkerService.build(settings, load_tasks((TASK,)))
    assert await service.connect(10), f"worker {settings.worker_id} could not connect"
    task = asyncio.create_task(service.worker.run(), name=f"worker-{settings.worker_id}")
    try:
        # Idle first, so the job below is woken by the server's hint (the sweep is 30 s away).
        await wait_for(lambda: service.worker.empty_claims >= 1, what="worker idle")
        yield service
    finally:
        service.worker.stop()
        await asyncio.wait_for(task, 30)
        await service.close()


async def complete_one_job(server: Server, worker: WorkerService) -> None:
    job = await server.submit(TASK)
    await server.wait_status(job["job_id"], "completed")
    # The result went over the bus and its confirmation came back (no write-around by the worker).
    await wait_for(lambda: not worker.worker.outbox.pending, what="the confirmation")
    assert worker.worker.outbox.written_directly == 0
    caps = (await server.client.get("/capabilities")).json()
    assert caps["capabilities"].get(TASK) == 1, caps


@needs_mosquitto
async def test_server_and_worker_complete_a_job_through_the_restricted_broker(
    mosquitto: PrivateMosquitto, tmp_path: Path, sqlite_url: str
) -> None:
    settings = base_settings(
        tmp_path,
        sqlite_url,
        mqtt_broker="127.0.0.1",
        mqtt_port=mosquitto.port,
        mqtt_username="compute-server",
        mqtt_password=mosquitto.passwords["compute-server"],
    )
    worker_settings = replace(
        settings, worker_id=W1, worker_tasks=(TASK,), mqtt_username=W1, mqtt_password=mosquitto.passwords[W1]
    )
    async with mosquitto.probe("dashboard") as dashboard:
        await dashboard.subscribe("inference/events")
        async with running_server(settings) as server, running_worker(worker_settings) as worker:
            await complete_one_job(server, worker)
            await dashboard.expect(lambda m: m.json()["event_type"] == "completed", what="completed event")


# -- the embedded brokers (amqtt, Mosquitto) ---------------------------------------------------


@pytest.fixture
def switch_interval() -> Iterator[None]:
    """EmbeddedBroker lowers the interpreter's GIL switch interval; give the next tests theirs back."""
    before = sys.getswitchinterval()
    yield
    sys.setswitchinterval(before)


def test_the_generated_password_is_private_stable_and_read_by_workers(tmp_path: Path) -> None:
    settings = embedded_credentials(base_settings(tmp_path, "sqlite://"))
    path = tmp_path / EMBEDDED_PASSWORD_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert settings.mqtt_username == EMBEDDED_USERNAME
    assert settings.mqtt_password == path.read_text().strip() and len(settings.mqtt_password) >= 40
    again = embedded_credentials(base_settings(tmp_path, "sqlite://"))  # a restart keeps it
    assert (again.mqtt_username, again.mqtt_password) == (settings.mqtt_username, settings.mqtt_password)

    # compute-worker with the same CL_SERVER_DIR finds it; an external broker or MQTT_PASSWORD wins.
    loaded = load_settings({"CL_SERVER_DIR": str(tmp_path)})
    assert (loaded.mqtt_username, loaded.mqtt_password) == (EMBEDDED_USERNAME, settings.mqtt_password)
    external = load_settings({"CL_SERVER_DIR": str(tmp_path), "MQTT_BROKER": "mqtt.lan"})
    assert (external.mqtt_username, external.mqtt_password) == (None, None)
    given = load_settings({"CL_SERVER_DIR": str(tmp_path), "MQTT_USERNAME": "me", "MQTT_PASSWORD": "pw"})
    assert (given.mqtt_username, given.mqtt_password) == ("me", "pw")
    assert embedded_credentials(given).mqtt_password == "pw"

    path.chmod(0o644)  # loosened by hand: tightened again on the next start
    assert ensure_password_file(tmp_path) == settings.mqtt_password
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # Nothing to read and nothing generated when a broker is configured.
    assert embedded_credentials(replace(settings, mqtt_broker="mqtt.lan")).mqtt_broker == "mqtt.lan"


def embedded(kind: str, host: str, port: int, username: str, password: str) -> Broker:
    if kind == "amqtt":
        return EmbeddedBroker(host, port, username, password)
    executable = find_mosquitto()
    if executable is None:
        pytest.skip("mosquitto is not installed")
    return MosquittoBroker(executable, host, port, username, password)


EMBEDDED_KINDS = pytest.mark.parametrize("kind", ["amqtt", "mosquitto"])


@EMBEDDED_KINDS
async def test_embedded_broker_refuses_anonymous_and_wrong_passwords(
    kind: str, switch_interval: None
) -> None:
    port = free_port()
    broker = embedded(kind, "127.0.0.1", port, "compute", "s3cret-password")
    await broker.start()
    try:
        async with raw_connection(port, "anon") as code:
            assert code != 0
        async with raw_connection(port, "liar", "compute", "wrong") as code:
            assert code != 0
        async with raw_connection(port, "nobody", "nobody", "s3cret-password") as code:
            assert code != 0
        async with raw_connection(port, "ok", "compute", "s3cret-password") as code:
            assert code == 0
    finally:
        await broker.stop()


def _close_wait(port: int) -> int:
    """Connections accepted on `port` whose client has gone and which this side never closed."""
    with open("/proc/net/tcp") as table:
        rows = [line.split() for line in table.readlines()[1:]]
    return sum(1 for row in rows if int(row[1].split(":")[1], 16) == port and row[3] == "08")


async def test_embedded_amqtt_closes_connections_that_never_say_connect(switch_interval: None) -> None:
    # amqtt 0.12 alone leaves them open until the garbage collector runs (amqtt_broker.py): with
    # the collector off, a port probe or a garbage first packet would keep a descriptor for good.
    port = free_port()
    broker = embedded("amqtt", "127.0.0.1", port, "compute", "pw")
    await broker.start()
    gc.disable()
    try:
        for first in (b"", b"GET / HTTP/1.1\r\n\r\n", b"\x10\xff\xff\xff\xff\x7f"):
            for _ in range(5):
                _reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(first)
                writer.close()
                await writer.wait_closed()
        await wait_for(lambda: _close_wait(port) == 0, timeout=10, what="the broker to close them")
    finally:
        gc.enable()
        await broker.stop()


def test_auto_embeds_mosquitto_when_installed_and_amqtt_otherwise(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = embedded_credentials(base_settings(tmp_path, "sqlite://", mqtt_broker=None))
    assert settings.embedded_broker == "auto"
    monkeypatch.setattr(broker_module, "find_mosquitto", lambda: "/usr/sbin/mosquitto")
    assert isinstance(embedded_broker(settings), MosquittoBroker)
    assert isinstance(embedded_broker(replace(settings, embedded_broker="amqtt")), EmbeddedBroker)
    monkeypatch.setattr(broker_module, "find_mosquitto", lambda: None)
    assert isinstance(embedded_broker(settings), EmbeddedBroker)
    with pytest.raises(ConfigError, match="no `mosquitto` executable"):
        embedded_broker(replace(settings, embedded_broker="mosquitto"))
    with pytest.raises(ConfigError, match="cannot contain ':'"):
        embedded_broker(replace(settings, mqtt_username="a:b"))
    with pytest.raises(ConfigError, match="EMBEDDED_BROKER must be one of auto, mosquitto, amqtt"):
        load_settings({"CL_SERVER_DIR": str(tmp_path), "EMBEDDED_BROKER": "rabbit"})


async def test_embedded_mosquitto_says_why_it_cannot_start(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))  # bound, not listening: nothing answers, Mosquitto cannot bind
        port = taken.getsockname()[1]
        broker = embedded("mosquitto", "127.0.0.1", port, "compute", "pw")
        assert isinstance(broker, MosquittoBroker)
        with pytest.raises(ConfigError, match=r"did not start .*Error: Address already in use"):
            await broker.start()
    assert broker.pid is None


async def test_embedded_mosquitto_is_started_again_when_it_dies() -> None:
    port = free_port()
    broker = embedded("mosquitto", "127.0.0.1", port, "compute", "pw")
    assert isinstance(broker, MosquittoBroker)
    await broker.start()
    try:
        first = broker.pid
        assert first is not None
        os.kill(first, signal.SIGKILL)
        await wait_for(
            lambda: broker.pid not in (None, first) and port_answers("127.0.0.1", port),
            timeout=20,
            what="a new Mosquitto",
        )
        assert broker.restarts == 1
        async with raw_connection(port, "ok", "compute", "pw") as code:
            assert code == 0
    finally:
        await broker.stop()
    assert broker.pid is None and not port_answers("127.0.0.1", port)


@EMBEDDED_KINDS
async def test_server_and_worker_work_with_the_embedded_broker(
    kind: str, tmp_path: Path, sqlite_url: str, switch_interval: None
) -> None:
    """What `compute-server --workers 1` does with no MQTT_BROKER: its broker with a generated password."""
    if kind == "mosquitto" and find_mosquitto() is None:
        pytest.skip("mosquitto is not installed")
    port = free_port()
    settings = base_settings(tmp_path, sqlite_url, mqtt_broker=None, mqtt_port=port, embedded_broker=kind)
    app = create_app(settings)  # start_broker: generates the password, starts the broker in the lifespan
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://compute") as client:
            await wait_for(lambda: app.state.services.bus.connected, what="server bus connected")
            server = Server(app, client, app.state.services.settings)
            async with raw_connection(port, "anon") as code:
                assert code != 0, "the embedded broker accepted an anonymous client"
            # A worker as the server starts it: only CL_SERVER_DIR and MQTT_PORT in its environment.
            env = load_settings({"CL_SERVER_DIR": str(tmp_path), "MQTT_PORT": str(port)})
            assert env.mqtt_password == (tmp_path / EMBEDDED_PASSWORD_FILE).read_text().strip()
            worker_settings = replace(
                settings,
                worker_id=W1,
                worker_tasks=(TASK,),
                mqtt_username=env.mqtt_username,
                mqtt_password=env.mqtt_password,
            )
            async with running_worker(worker_settings) as worker:
                await complete_one_job(server, worker)
