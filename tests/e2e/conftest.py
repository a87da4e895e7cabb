"""End-to-end fixtures: the installed command lines started in a deployment of their own (ended at
teardown), and its environment (without the caller's Compute settings) for the ones run directly."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.commands import Commands


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Commands]:
    p = Commands(tmp_path)
    yield p
    p.stop()


@pytest.fixture
def env(procs: Commands) -> dict[str, str]:
    return dict(procs.env)
