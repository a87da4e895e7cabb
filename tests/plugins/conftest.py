"""Plugin tests: the real server, bus and worker over one backend (amqtt + SQLite).

The broker/database matrix is the core suite's business; plugins are about media, tools and
models, so one backend keeps these tests quick. `models_dir` is a fresh folder per test:
tests put tiny ONNX models there (compute_bench.onnx_models) as a deployment would put
the real ones.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from compute.config import Settings
from compute.plugins import environment, models
from tests.support.asyncapi_payloads import PayloadChecker
from tests.support.backends import one_backend
from tests.support.brokers import BrokerInfo
from tests.support.inprocess import make_settings


@pytest.hookimpl(tryfirst=True)  # before pytest parametrizes the fixtures by their params
def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    one_backend(metafunc)


@pytest.fixture(autouse=True)
def _payloads_follow_asyncapi(published_payloads_follow_asyncapi: PayloadChecker) -> PayloadChecker:
    """Every payload the plugins' jobs make the system publish follows the AsyncAPI document."""
    return published_payloads_follow_asyncapi


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
