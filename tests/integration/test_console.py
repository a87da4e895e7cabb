"""The `compute` command against a real server (uvicorn) and worker, over amqtt + SQLite.

The command is synchronous (a person's terminal), so each run goes to a thread while the
server and worker keep running on the test's event loop.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from email.utils import formatdate
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from typer.testing import CliRunner, Result

from compute.config import Settings
from compute.console.commands import EXIT_CANCELLED, EXIT_FAILED, EXIT_REFUSED, EXIT_UNREACHABLE, app
from compute_bench.harness import free_port
from tests.support.backends import one_backend
from tests.support.images import png_bytes
from tests.support.inprocess import Server, WorkerFactory, running_server, uvicorn_serving
from tests.support.scripted_http import ScriptedServer
from tests.support.waits import wait_for


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    one_backend(metafunc)


@pytest.fixture
def photo(tmp_path: Path) -> Path:
    path = tmp_path / "photo.png"
    path.write_bytes(png_bytes((40, 30)))
    return path


@asynccontextmanager
async def serving(settings: Settings) -> AsyncIterator[tuple[Server, str]]:
    async with running_server(settings) as srv, uvicorn_serving(srv.app) as web:
        yield srv, f"http://127.0.0.1:{web.config.port}"


async def compute(url: str, *args: str) -> Result:
    """`compute --server URL ARGS...` on a thread, as a person would run it in an 80-column terminal."""
    runner = CliRunner()
    return await asyncio.to_thread(runner.invoke, app, ["--server", url, *args], env={"COLUMNS": "80"})


def fits_80_columns(result: Result) -> bool:
    return max(len(line) for line in result.stdout.splitlines()) <= 80


def _json(result: Result) -> Any:
    return json.loads(result.stdout)


async def test_submit_wait_and_download_a_conversion(
    settings: Settings, start_worker: WorkerFactory, photo: Path, tmp_path: Path
) -> None:
    async with serving(settings) as (_srv, url):
        await start_worker()
        saved = tmp_path / "results"
        result = await compute(
            url,
            "--json",
            "submit",
            "image_conversion",
            str(photo),
            "-f",
            "format=jpg",
            "--priority",
            "7",
            "--wait",
            "--quiet",
            "--download",
            str(saved),
        )
        assert result.exit_code == 0, result.output
        job = _json(result)
        assert job["status"] == "completed" and job["priority"] == 7
        assert job["params"]["output_path"] == "output/converted.jpg"
        with Image.open(saved / "output" / "converted.jpg") as image:
            assert (image.format, image.size) == ("JPEG", (40, 30))
        assert not list(saved.rglob("*.part"))


async def test_submit_prints_the_job_id_and_status_shows_it(settings: Settings, photo: Path) -> None:
    async with serving(settings) as (srv, url):  # no worker: the job stays queued
        result = await compute(url, "submit", "image_conversion", str(photo), "-f", "format=png")
        assert result.exit_code == 0, result.output
        job_id = result.stdout.strip()
        assert (await srv.job(job_id))["status"] == "queued"

        shown = await compute(url, "--json", "status", job_id)
        assert shown.exit_code == 0 and _json(shown)["job_id"] == job_id


async def test_a_cancelled_job_exits_5_and_a_failed_one_1(
    settings: Settings, start_worker: WorkerFactory, tmp_path: Path, photo: Path
) -> None:
    async with serving(settings) as (_srv, url):
        submitted = await compute(url, "submit", "image_conversion", str(photo), "-f", "format=png")
        queued = submitted.stdout.strip()
        assert (await compute(url, "cancel", queued)).exit_code == 0
        assert (await compute(url, "wait", queued, "-q")).exit_code == EXIT_CANCELLED

        await start_worker()
        broken = tmp_path / "broken.png"
        noise = Image.effect_noise((256, 256), 64).convert("RGB")  # incompressible: a long body
        noise.save(broken, "PNG")
        broken.write_bytes(broken.read_bytes()[:20_000])  # the header reads, the pixels do not
        result = await compute(
            url, "--json", "submit", "image_conversion", str(broken), "-f", "format=jpg", "--wait", "-q"
        )
        assert result.exit_code == EXIT_FAILED, result.output
        assert _json(result)["error_message"]


async def test_jobs_and_workers_are_listed(
    settings: Settings, start_worker: WorkerFactory, photo: Path
) -> None:
    async with serving(settings) as (srv, url):
        submit = ("submit", "image_conversion", str(photo), "-f", "format=png")
        first = (await compute(url, *submit)).stdout.strip()
        second = (await compute(url, *submit)).stdout.strip()
        page = _json(await compute(url, "--json", "jobs", "--limit", "1"))
        assert [job["job_id"] for job in page["jobs"]] == [second] and page["next_cursor"]
        rest = _json(await compute(url, "--json", "jobs", "--cursor", page["next_cursor"]))
        assert [job["job_id"] for job in rest["jobs"]] == [first] and rest["next_cursor"] is None
        table = await compute(url, "jobs", "--status", "queued")
        assert table.exit_code == 0 and fits_80_columns(table)
        assert first in table.stdout and second in table.stdout  # whole, to copy into `compute status`

        running = await start_worker(wait_idle=False)
        # The worker's state is what it last announced: busy while it converts the two jobs,
        # idle after. Compared across two listings, it must be one that can no longer change.
        for job_id in (first, second):
            await srv.wait_status(job_id, "completed", timeout=60)

        async def listed_idle() -> list[dict[str, Any]] | None:
            result = await compute(url, "--json", "workers")
            if result.exit_code != 0:  # a loaded machine's 503 (DB_REQUEST_TIMEOUT): ask again
                return None
            workers: list[dict[str, Any]] = _json(result)
            return workers if [w["state"] for w in workers] == ["idle"] else None

        (worker,) = await wait_for(listed_idle, timeout=30, interval=0.2, what="the worker listed, idle")
        assert worker["worker_id"] == running.settings.worker_id and worker["session"] and worker["pid"]

        shown = await compute(url, "workers")
        assert shown.exit_code == 0 and fits_80_columns(shown), shown.stdout
        assert f"{worker['worker_id']}  idle  last seen " in shown.stdout
        assert re.search(r"last seen \d+ (s|min) ago", shown.stdout)
        listed_tasks = " ".join(shown.stdout.split()).replace(", ", " ").split()
        assert set(worker["tasks"]) <= set(listed_tasks)  # every task name whole
        assert worker["session"] not in shown.stdout and str(worker["started_at"]) not in shown.stdout


async def test_workers_for_a_person_at_80_columns() -> None:
    """Long ids and a dozen tasks, on the server's clock: the worker and job ids whole, the task
    list wrapped, `last seen` as an age; session, pid, host and raw times only under --json."""
    now = 1_700_000_000
    tasks = [f"{name}_embedding" for name in ("clip", "dino", "face", "text")] + [
        "exif", "face_detection", "hash", "hls_streaming", "image_conversion", "image_resize",
        "media_thumbnail",
    ]  # fmt: skip
    busy = {
        "worker_id": "worker-compute-node-07.example.lan-1",
        "session": "f" * 32,
        "state": "busy",
        "tasks": tasks,
        "running_jobs": ["4f1c2a9e-0000-4000-8000-000000000001", "4f1c2a9e-0000-4000-8000-000000000002"],
        "hostname": "compute-node-07.example.lan",
        "pid": 48213,
        "version": "0.1.0",
        "started_at": now * 1000 - 3_600_000,
        "last_heartbeat": now * 1000 - 12_000,
        "last_announced": now * 1000 - 12_000,
    }
    idle = {**busy, "worker_id": "worker-pi-2", "state": "idle", "tasks": ["exif"], "running_jobs": []}
    idle["last_heartbeat"] = now * 1000 - 125_000
    with ScriptedServer() as server:
        server.date = formatdate(now, usegmt=True)
        server.json("/workers", {"workers": [busy, idle]})
        shown = await compute(server.url, "workers")
        assert shown.exit_code == 0 and fits_80_columns(shown), shown.stdout
        assert "worker-compute-node-07.example.lan-1  busy  last seen 12 s ago" in shown.stdout
        assert "worker-pi-2  idle  last seen 2 min ago" in shown.stdout
        assert "4f1c2a9e-0000-4000-8000-000000000001" in shown.stdout
        assert "4f1c2a9e-0000-4000-8000-000000000002" in shown.stdout
        assert set(tasks) <= set(" ".join(shown.stdout.split()).replace(",", " ").split())
        for raw in ("f" * 32, "48213", "compute-node-07.example.lan ", "0.1.0", str(now * 1000 - 12_000)):
            assert raw not in shown.stdout
        assert _json(await compute(server.url, "--json", "workers")) == [busy, idle]


async def test_refusals_exit_4_with_the_servers_reason(settings: Settings, photo: Path) -> None:
    async with serving(settings) as (_srv, url):
        bad_format = await compute(url, "submit", "image_conversion", str(photo), "-f", "format=nope")
        assert bad_format.exit_code == EXIT_REFUSED
        assert "422" in bad_format.stderr and "format" in bad_format.stderr

        missing = await compute(url, "status", "no-such-job")
        assert missing.exit_code == EXIT_REFUSED and "404" in missing.stderr

        unknown_task = await compute(url, "submit", "no_such_task", str(photo))
        assert unknown_task.exit_code == EXIT_REFUSED and "available" in unknown_task.stderr


async def test_bad_field_syntax_is_a_usage_error(photo: Path) -> None:
    result = await compute("http://127.0.0.1:9", "submit", "image_conversion", str(photo), "-f", "format")
    assert result.exit_code == 2 and "key=value" in result.output


async def test_an_unreachable_server_exits_3(photo: Path) -> None:
    result = await compute(f"http://127.0.0.1:{free_port()}", "status", "some-job")
    assert result.exit_code == EXIT_UNREACHABLE and "cannot reach" in result.stderr


async def test_the_file_listing_shows_input_and_outputs(
    settings: Settings, start_worker: WorkerFactory, photo: Path
) -> None:
    async with serving(settings) as (srv, _url):
        await start_worker()
        job_id = (await srv.submit("image_conversion", {"format": "jpg"}))["job_id"]
        await srv.wait_status(job_id, "completed")
        listing = (await srv.client.get(f"/jobs/{job_id}/files")).json()
        paths = [f["path"] for f in listing["files"]]
        assert paths == ["input/upload.png", "output/converted.jpg"]
        assert all(f["size"] > 0 for f in listing["files"])
        assert (await srv.client.get("/jobs/no-such-job/files")).status_code == 404


def test_the_command_is_installed() -> None:
    # pyproject's [project.scripts] entry, as `uv run compute` finds it.
    from importlib.metadata import entry_points

    (script,) = [ep for ep in entry_points(group="console_scripts") if ep.name == "compute"]
    assert script.value == "compute.console.commands:main"
