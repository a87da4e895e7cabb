"""The benchmark's plugin lives only where the benchmark runs: its launcher registers it, the
product's install does not."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from compute.plugins import registry
from compute_bench import launch, noop


@pytest.fixture(autouse=True)
def own_registrations(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """In-process registrations are global: keep this test's to itself."""
    monkeypatch.delenv("COMPUTE_BENCH_PROBES", raising=False)
    registry.unregister(noop.TASK_TYPE)
    yield
    registry.unregister(noop.TASK_TYPE)


def test_the_product_has_no_bench_plugin() -> None:
    assert noop.TASK_TYPE not in registry.installed_tasks()
    assert noop.TASK_TYPE not in registry.route_factories()


def test_the_launcher_registers_the_bench_plugin() -> None:
    launch.prepare("server")
    assert isinstance(registry.installed_tasks()[noop.TASK_TYPE], noop.BenchNoopTask)
    assert registry.route_factories()[noop.TASK_TYPE] is noop.create_router


def test_the_launcher_wants_a_role(capsys: pytest.CaptureFixture[str]) -> None:
    assert launch.main(["migrate"]) == 2
    assert "usage" in capsys.readouterr().err
