"""End-to-end fixtures: an environment without the caller's Compute settings, and the command
lines started in it (ended at teardown)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from compute_bench.harness import scrubbed_environ
from tests.support.commands import Commands


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {**scrubbed_environ(), "CL_SERVER_DIR": str(tmp_path / "cl_server"), "LOG_LEVEL": "INFO"}


@pytest.fixture
def procs(tmp_path: Path, env: dict[str, str]) -> Iterator[Commands]:
    p = Commands(tmp_path, env)
    yield p
    p.stop()
