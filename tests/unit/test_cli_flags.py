"""compute-server and compute-worker apply their flags to Settings the same way, without os.environ."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from compute import cli
from compute.config import Settings, load_settings

FLAG_VARS = (
    "MQTT_BROKER",
    "MQTT_PORT",
    "LOG_LEVEL",
    "AUTH_DISABLED",
    "COMPUTE_PORT",
    "WORKER_ID",
    "WORKER_SUPPORTED_TASKS",
    "COMPUTE_SERVER_URL",
)


class _Stop(Exception):
    pass


@pytest.fixture
def loaded(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[Settings]:
    """The Settings each command loads; the command stops right after loading them."""
    for var in FLAG_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("CL_SERVER_DIR", str(tmp_path))
    monkeypatch.setenv("MQTT_PORT", "1999")
    seen: list[Settings] = []

    def recording(*args: Any, **kwargs: Any) -> Settings:
        seen.append(load_settings(*args, **kwargs))
        raise _Stop

    monkeypatch.setattr(cli, "load_settings", recording)
    return seen


def test_server_flags_override_settings_without_touching_environ(loaded: list[Settings]) -> None:
    before = dict(os.environ)
    with pytest.raises(_Stop):
        cli.server_main(
            ["--mqtt-broker", "b.local", "--mqtt-port", "1234", "--log-level", "debug", "--no-auth"]
        )
    [s] = loaded
    assert (s.mqtt_broker, s.mqtt_port, s.log_level, s.auth_disabled) == ("b.local", 1234, "DEBUG", True)
    assert dict(os.environ) == before


def test_server_without_flags_reads_the_environment(loaded: list[Settings]) -> None:
    with pytest.raises(_Stop):
        cli.server_main([])
    [s] = loaded
    assert (s.mqtt_broker, s.mqtt_port, s.log_level, s.auth_disabled) == (None, 1999, "INFO", False)


def test_worker_flags_override_settings_without_touching_environ(loaded: list[Settings]) -> None:
    before = dict(os.environ)
    with pytest.raises(_Stop):
        cli.worker_main(
            [
                "--mqtt-broker",
                "b.local",
                "--mqtt-port",
                "1234",
                "--log-level",
                "debug",
                "--port",
                "9000",
                "--worker-id",
                "w-1",
                "--tasks",
                "hash,exif",
            ]
        )
    [s] = loaded
    assert (s.mqtt_broker, s.mqtt_port, s.log_level) == ("b.local", 1234, "DEBUG")
    assert (s.server_url, s.worker_id, s.worker_tasks) == ("http://127.0.0.1:9000", "w-1", ("hash", "exif"))
    assert dict(os.environ) == before


def test_worker_without_an_id_loads_no_pid_based_one(loaded: list[Settings]) -> None:
    """The default id is a slot taken after the prerequisites (worker/identity.py), not the pid."""
    with pytest.raises(_Stop):
        cli.worker_main(["--server-url", "http://h:1"])
    [s] = loaded
    assert str(os.getpid()) not in s.worker_id
    assert s.server_url == "http://h:1" and s.mqtt_port == 1999


@pytest.mark.parametrize("main", [cli.server_main, cli.worker_main])
def test_bad_flag_value_is_a_config_error(
    main: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CL_SERVER_DIR", str(tmp_path))
    monkeypatch.delenv("MQTT_PORT", raising=False)
    assert main(["--mqtt-port", "70000"]) == 2
    assert "MQTT_PORT" in capsys.readouterr().err
    assert "MQTT_PORT" not in os.environ


@pytest.mark.parametrize(
    ("host", "url"),
    [
        ("0.0.0.0", "http://127.0.0.1:8002"),
        ("", "http://127.0.0.1:8002"),
        ("10.0.0.5", "http://10.0.0.5:8002"),
        ("::", "http://[::1]:8002"),
        ("fd00::5", "http://[fd00::5]:8002"),
    ],
)
def test_the_servers_own_workers_reach_it_where_it_binds(host: str, url: str) -> None:
    """compute-server --host 10.0.0.5 --workers 2: its workers must not look on 127.0.0.1."""
    assert cli.local_url(host, 8002) == url
