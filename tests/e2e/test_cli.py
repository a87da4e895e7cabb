"""The real command lines as subprocesses: compute-migrate, compute-server, compute-worker."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from PIL import Image

from compute.ports import port_answers
from compute_bench import harness
from compute_bench.harness import free_port
from tests.support.commands import Commands, run, start_server
from tests.support.images import png_bytes
from tests.support.mqtt import MqttProbe
from tests.support.waits import wait_for

pytestmark = pytest.mark.e2e


async def test_job_end_to_end_and_worker_goodbye(procs: Commands, env: dict[str, str]) -> None:
    migrated = run(env, "compute-migrate")
    assert migrated.returncode == 0, migrated.stderr
    assert "database ready" in migrated.stdout

    served = await start_server(procs, "--no-auth")
    server, http_port, mqtt_port = served.proc, served.http_port, served.mqtt_port
    async with httpx.AsyncClient(base_url=served.base, timeout=10) as client:

        async def submit() -> str:
            files = {"file": ("photo.png", png_bytes((48, 32)), "image/png")}
            response = await client.post("/jobs/image_conversion", data={"format": "webp"}, files=files)
            assert response.status_code == 200, response.text
            assert response.json()["task_type"] == "image_conversion"
            return str(response.json()["job_id"])

        async def status(job_id: str) -> str:
            return str((await client.get(f"/jobs/{job_id}")).json()["status"])

        # The embedded broker refuses anonymous clients: use the password the server generated.
        password = (Path(env["CL_SERVER_DIR"]) / "mqtt_password").read_text().strip()
        async with MqttProbe("127.0.0.1", mqtt_port, username="compute", password=password) as probe:
            await probe.subscribe("inference/#")
            waiting = await submit()  # queued before any worker exists

            worker = procs.start(
                "worker",
                "compute-worker",
                "--port",
                str(http_port),
                "--mqtt-port",
                str(mqtt_port),
                "--worker-id",
                "e2e-1",
                "--tasks",
                "image_conversion,image_resize",
            )

            async def done(job_id: str) -> bool:
                assert worker.poll() is None, procs.log("worker")
                return await status(job_id) == "completed"

            await wait_for(lambda: done(waiting), timeout=60, interval=0.1, what="the waiting job")
            # Its events went through the bus, so CL Server clients heard about it.
            await probe.expect(
                lambda m: (
                    m.topic == "inference/events"
                    and m.json()["job_id"] == waiting
                    and m.json()["event_type"] == "completed"
                ),
                what="legacy completed",
            )
            capability = await probe.expect(
                lambda m: m.topic == "inference/workers/e2e-1" and bool(m.payload), what="capability"
            )
            assert capability.json()["id"] == "e2e-1"
            assert sorted(capability.json()["capabilities"]) == ["image_conversion", "image_resize"]

            # The worker announces itself idle after the job, so /capabilities may lag behind.
            async def idle_worker_listed() -> bool:
                caps = (await client.get("/capabilities")).json()
                return bool(caps["num_workers"] == 1 and caps["capabilities"]["image_conversion"] == 1)

            await wait_for(
                idle_worker_listed, timeout=10, interval=0.05, what="/capabilities to list the idle worker"
            )

            job_id = await submit()
            await wait_for(lambda: done(job_id), timeout=30, interval=0.05, what="the second job")
            job = (await client.get(f"/jobs/{job_id}")).json()
            assert job["progress"] == 100 and job["worker_id"] == "e2e-1"
            output = await client.get(f"/jobs/{job_id}/files/output/converted.webp")
            assert output.status_code == 200
            image = Image.open(io.BytesIO(output.content))
            assert (image.format, image.size) == ("WEBP", (48, 32))

            worker.send_signal(signal.SIGTERM)
            assert await wait_for(
                lambda: worker.poll() is not None, timeout=20, what="the worker to exit on SIGTERM"
            )
            assert worker.returncode == 0, procs.log("worker")
            await probe.expect(
                lambda m: m.topic == "inference/workers/e2e-1" and m.payload == b"",
                what="the retained capability to be cleared",
            )

        async def no_workers() -> bool:
            num_workers: int = (await client.get("/capabilities")).json()["num_workers"]
            return num_workers == 0

        await wait_for(no_workers, timeout=10, what="/capabilities without workers")

        # Nothing retained is left for a client that subscribes now.
        async with MqttProbe("127.0.0.1", mqtt_port, username="compute", password=password) as late:
            await late.subscribe("inference/workers/e2e-1")
            await late.subscribe("inference/workers/_sync")
            await late.sync("inference/workers/_sync")
            assert [m for m in late.messages if m.topic == "inference/workers/e2e-1"] == []

    server.send_signal(signal.SIGTERM)
    assert await wait_for(lambda: server.poll() is not None, timeout=20, what="the server to exit")


def test_server_refuses_an_unmigrated_database(env: dict[str, str]) -> None:
    result = run(
        env, "compute-server", "--no-auth", "--port", str(free_port()), "--mqtt-port", str(free_port())
    )
    assert result.returncode != 0
    assert "compute-migrate" in result.stderr


def test_worker_without_a_server_exits_with_a_clear_message(env: dict[str, str]) -> None:
    Path(env["CL_SERVER_DIR"]).mkdir()
    port = free_port()
    result = run(
        env,
        "compute-worker",
        "--port",
        str(port),
        "--mqtt-port",
        str(free_port()),
        "--worker-id",
        "e2e-lonely",
    )
    assert result.returncode != 0
    assert f"compute server does not answer at http://127.0.0.1:{port}" in result.stderr


def _one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    """The command's error line, once it has said nothing else wrong: exit status 2 (a bad
    setting), no traceback, `error: ...` last on stderr."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: "), result.stderr
    return last


@pytest.mark.parametrize("command", ["compute-server", "compute-worker", "compute-migrate"])
@pytest.mark.parametrize(
    ("variable", "value"),
    [("LOG_LEVEL", "TRACE"), ("DATABASE_URL", "not a url"), ("MQTT_TOPIC_ROOT", "site/+")],
)
def test_a_bad_setting_is_one_line_and_status_2(
    env: dict[str, str], command: str, variable: str, value: str
) -> None:
    Path(env["CL_SERVER_DIR"]).mkdir()
    flags = [] if command == "compute-migrate" else ["--port", str(free_port())]
    line = _one_line_error(run({**env, variable: value}, command, *flags))
    assert variable in line


def test_a_broker_that_cannot_listen_is_one_line_and_status_2(env: dict[str, str]) -> None:
    """A failure while the server starts its parts (here the embedded broker's listener) is
    stated like a bad setting, not as uvicorn's traceback of the app's startup."""
    assert run(env, "compute-migrate").returncode == 0
    result = run(
        {**env, "EMBEDDED_BROKER": "amqtt", "MQTT_EMBEDDED_BIND": "no-such-host.invalid"},
        "compute-server",
        "--no-auth",
        "--host",
        "127.0.0.1",
        "--port",
        str(free_port()),
        "--mqtt-port",
        str(free_port()),
    )
    line = _one_line_error(result)
    assert "MQTT_EMBEDDED_BIND" in line and "no-such-host.invalid" in line


def _children(pid: int) -> list[int]:
    """Live child processes of `pid`, from /proc (Linux)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended while we looked
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(stat.parent.name))
    return found


def _command(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "(ended)"


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL], ids=["term", "int", "kill"])
async def test_server_workers_end_with_the_server(
    procs: Commands, env: dict[str, str], how: signal.Signals
) -> None:
    """compute-server --workers N: its workers (and its embedded Mosquitto, when installed) stop on
    SIGTERM and SIGINT, and die if it is killed."""
    assert run(env, "compute-migrate").returncode == 0
    server = procs.start(
        "server",
        "compute-server",
        "--no-auth",
        "--host",
        "127.0.0.1",
        "--workers",
        "1",
        "--port",
        str(free_port()),
        "--mqtt-port",
        str(free_port()),
    )

    def worker_started() -> list[int]:
        assert server.poll() is None, procs.log("server")
        children = _children(server.pid)
        return children if any(_command(pid) != "mosquitto" for pid in children) else []

    children = await wait_for(worker_started, timeout=90, interval=0.2, what="the server's worker")
    assert len(children) <= 2, [_command(pid) for pid in children]  # the worker (and Mosquitto)
    server.send_signal(how)
    assert await wait_for(lambda: server.poll() is not None, timeout=30, what="the server to exit")
    for child in children:
        await wait_for(
            lambda: not _alive(child),  # noqa: B023 - awaited here
            timeout=30,
            interval=0.1,
            what=f"its {_command(child)} to end after the server's {how.name}",
        )


def _signed_token(tmp_path: Path, user: str) -> tuple[str, Path]:
    """An ES256 JWT for `user` (a CL Server token: `ai_inference_support`) and the public key file."""
    key = ec.generate_private_key(ec.SECP256R1())
    public = tmp_path / "public_key.pem"
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    claims = {"id": user, "permissions": ["ai_inference_support"], "exp": int(time.time()) + 600}
    return jwt.encode(claims, key, algorithm="ES256"), public


async def _requests_carrying(base: str, token: str, forged: str) -> None:
    """Every way a token reaches the server: the live views' `?access_token=` (valid, forged, on
    a route that does not exist), the Authorization header, a request uvicorn cannot parse."""
    async with httpx.AsyncClient(base_url=base, timeout=10) as client:
        for url in (f"/events?access_token={token}", "/jobs/no-such-job/events?access_token=" + token):
            async with client.stream("GET", url) as live:
                assert live.status_code in (200, 404)
        assert (await client.get(f"/events?access_token={forged}")).status_code == 401
        assert (await client.get(f"/nowhere?access_token={token}")).status_code == 404
        assert (await client.get("/jobs", headers={"Authorization": f"Bearer {token}"})).status_code == 200
        assert (await client.get("/jobs", headers={"Authorization": f"Bearer {forged}"})).status_code == 401
    host, port = base.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(f"GET /events?access_token={token} HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n".encode())
    await writer.drain()
    await reader.read()  # the server answers 400 and closes
    writer.close()


@pytest.mark.parametrize(
    "mode",
    [("text",), ("text", "--reload"), ("json",), ("json", "--reload"), ("json", "--workers", "1")],
    ids=["text", "text-reload", "json", "json-reload", "json-workers"],
)
async def test_no_token_in_any_log(
    procs: Commands, env: dict[str, str], tmp_path: Path, mode: tuple[str, ...]
) -> None:
    """At DEBUG, in every mode compute-server runs in, with its workers' lines in the same log:
    the tokens the requests carried appear nowhere (docs/http-api.md: no access log; a secret is redacted
    from whatever logs it)."""
    log_format, *flags = mode
    token, public_key = _signed_token(tmp_path, "alice")
    forged = token[:-8] + "AAAAAAAA"
    env.update(LOG_LEVEL="DEBUG", LOG_FORMAT=log_format, PUBLIC_KEY_PATH=str(public_key))
    procs.env = env
    assert run(env, "compute-migrate").returncode == 0
    workdir = tmp_path / "workdir"  # what --reload watches: not the repository
    workdir.mkdir()
    served = await start_server(procs, *flags, cwd=workdir)
    await _requests_carrying(served.base, token, forged)

    served.proc.send_signal(signal.SIGTERM)
    assert await wait_for(lambda: served.proc.poll() is not None, timeout=30, what="the server to exit")
    log = procs.log("server")
    assert "embedded MQTT broker" in log and "listening on" in log, log  # the app logs, in every mode
    _header, payload, signature = token.split(".")
    leaked = [line for line in log.splitlines() if payload in line or signature in line or forged in line]
    assert leaked == []
    if log_format == "json":
        ours = [line for line in log.splitlines() if line.startswith("{")]
        assert any(json.loads(line)["logger"] in ("compute.mosquitto", "compute.broker") for line in ours)
        assert any(json.loads(line)["logger"] == "uvicorn.error" for line in ours)


def _descendants(pid: int) -> list[int]:
    found = []
    for child in _children(pid):
        found += [child, *_descendants(child)]
    return found


async def _capabilities_left(port: int) -> dict[str, bytes]:
    """The CL Server capabilities a client subscribing now receives (retained, not empty)."""
    async with MqttProbe("127.0.0.1", port) as late:
        await late.subscribe("inference/workers/+")
        await late.subscribe("probe/sync")
        await late.sync("probe/sync")  # Mosquitto sends the retained ones before it
        return {m.topic: m.payload for m in late.messages if m.topic.startswith("inference/") and m.payload}


@pytest.mark.skipif(shutil.which("mosquitto") is None, reason="needs Debian's mosquitto")
@pytest.mark.parametrize(
    "how",
    ["idle, server signalled", "busy, worker and server signalled", "busy, server signalled"],
)
async def test_server_workers_leave_no_capability_on_a_shared_broker(
    procs: Commands, env: dict[str, str], tmp_path: Path, how: str
) -> None:
    """compute-server --workers 1 on a broker that outlives it, stopped with SIGTERM: no
    `inference/workers/<id>` is left for CL Server clients, whatever reaches the worker first.

    Busy: the worker's plugin process is frozen (SIGSTOP) under a job, so the worker is still
    finishing that job when the next SIGTERM comes, deterministically: from the server's stop
    together with the test's own (as a service manager signals the whole group), or, with the
    server's alone, the second one the server sends after STOP_GRACE."""
    broker_port = free_port()
    procs.spawn("broker", harness.mosquitto_command(broker_port, tmp_path))
    await wait_for(lambda: port_answers("127.0.0.1", broker_port), what="the broker")
    assert run(env, "compute-migrate").returncode == 0
    served = await start_server(
        procs, "--no-auth", "--workers", "1", "--mqtt-broker", "127.0.0.1", mqtt_port=broker_port
    )
    server = served.proc

    def worker_pid() -> int | None:
        assert server.poll() is None, procs.log("server")
        children = _children(server.pid)
        return children[0] if children and _descendants(children[0]) else None  # its plugin host too

    worker = await wait_for(worker_pid, timeout=90, interval=0.2, what="the server's worker and its plugins")
    left = await wait_for(lambda: _capabilities_left(broker_port), timeout=30, what="the worker's capability")
    assert len(left) == 1, left
    frozen = _descendants(worker) if how.startswith("busy") else []
    try:
        for pid in frozen:
            os.kill(pid, signal.SIGSTOP)
        if frozen:
            async with httpx.AsyncClient(base_url=served.base, timeout=10) as client:
                files = {"file": ("photo.png", png_bytes((48, 32)), "image/png")}
                submitted = await client.post("/jobs/image_conversion", data={"format": "webp"}, files=files)
                job_id = submitted.json()["job_id"]

                async def processing() -> bool:
                    return bool((await client.get(f"/jobs/{job_id}")).json()["status"] == "processing")

                await wait_for(processing, timeout=30, what="the job to start on the frozen plugin")
        if how.startswith("busy, worker"):
            os.kill(worker, signal.SIGTERM)
            await wait_for(
                lambda: "stopping: handing the running job back" in procs.log("server"),
                what="the worker's first SIGTERM",
            )
        server.send_signal(signal.SIGTERM)
        assert await wait_for(lambda: server.poll() is not None, timeout=60, what="the server to exit")
        await wait_for(lambda: not _alive(worker), timeout=30, what="its worker to exit")
    finally:
        for pid in frozen:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    assert await _capabilities_left(broker_port) == {}, procs.log("server")
