"""Which broker and database a test runs over.

The core suite runs each test over every backend (amqtt and Mosquitto; SQLite and PostgreSQL:
the `broker` and `db_url` fixtures). Tests whose subject is something else (the task plugins'
media and models, the `compute` command) run over one: the in-process amqtt and a SQLite file.
"""

from __future__ import annotations

import pytest

#: (fixture, the one value) for tests that need one backend.
ONE_BACKEND = (("broker", "amqtt"), ("db_url", "sqlite"))


def one_backend(metafunc: pytest.Metafunc) -> None:
    """A `pytest_generate_tests` hook (run it first: `tryfirst`) that pins the `broker` and
    `db_url` fixtures to ONE_BACKEND, as a `parametrize(..., indirect=True)` mark would."""
    for name, value in ONE_BACKEND:
        if name in metafunc.fixturenames:
            metafunc.definition.add_marker(pytest.mark.parametrize(name, [value], indirect=True))
