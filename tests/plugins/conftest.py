"""Plugin tests: the real server, bus and worker over amqtt + SQLite only.

The broker/database matrix is the core suite's business; plugins are about media, tools and
models, so one backend keeps these tests quick. `models_dir` is a fresh folder per test:
tests put tiny ONNX models there (tests/plugins/onnx_models.py) as a deployment would put
the real ones.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest

from compute.config import Settings
from compute.plugins import environment, models
from tests.asyncapi_check import published_payloads_follow_asyncapi
from tests.conftest import BrokerInfo, Server, make_settings

#: Every payload the plugins' jobs make the system publish is checked against the AsyncAPI document.
__all__ = ["published_payloads_follow_asyncapi"]


@pytest.fixture
async def broker(amqtt_broker: BrokerInfo) -> AsyncIterator[BrokerInfo]:
    yield amqtt_broker


@pytest.fixture
def db_url(sqlite_url: str) -> str:
    return sqlite_url


@pytest.fixture
def models_dir(tmp_path: Path) -> Path:
    path = tmp_path / "models"
    path.mkdir()
    return path


@pytest.fixture
def media_root(tmp_path: Path) -> Path:
    path = tmp_path / "media"
    path.mkdir()
    return path


@pytest.fixture
def settings(
    tmp_path: Path, db_url: str, broker: BrokerInfo, prefix: str, models_dir: Path, media_root: Path
) -> Iterator[Settings]:
    s = make_settings(tmp_path, db_url, broker, prefix, models_dir=models_dir, media_roots=(media_root,))
    environment.configure(s)
    models.forget()
    yield s
    models.forget()


@pytest.fixture
def plugin_env(settings: Settings) -> environment.PluginEnvironment:
    """The plugin environment of `settings`, for algorithm tests that need no server."""
    return environment.current()


async def run_job(
    server: Server,
    task: str,
    content: bytes,
    filename: str = "upload.bin",
    data: dict[str, str] | None = None,
    timeout: float = 60.0,
) -> dict[str, Any]:
    """Submit as CL Server's SDK does (multipart `file` + string form fields), wait, return the job."""
    response = await server.client.post(
        f"/jobs/{task}",
        data={"priority": "5", **(data or {})},
        files={"file": (filename, content, "application/octet-stream")},
    )
    assert response.status_code == 200, response.text
    created = response.json()
    assert set(created) == {"job_id", "status", "task_type"} and created["task_type"] == task
    job = await server.wait_status(created["job_id"], "completed", timeout=timeout)
    return job


async def download(server: Server, job_id: str, path: str) -> bytes:
    response: httpx.Response = await server.client.get(f"/jobs/{job_id}/files/{path}")
    assert response.status_code == 200, (path, response.text)
    return response.content


def with_changes(settings: Settings, **changes: Any) -> Settings:
    return replace(settings, **changes)
