"""load_settings: CL Server variable names, defaults, and clear errors for bad values."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import uvicorn.config

from compute.config import Settings, load_settings, parse_tasks, variable_names
from compute.db.session import make_engine
from compute.errors import ConfigError
from compute.logs import logging_config
from compute.topics import Topics


def test_defaults_live_under_cl_server_dir(tmp_path: Path) -> None:
    s = load_settings({"CL_SERVER_DIR": str(tmp_path)})
    assert s.cl_server_dir == tmp_path
    assert s.database_url == f"sqlite:///{tmp_path / 'compute.db'}"
    assert s.storage_dir == tmp_path / "compute"
    assert s.public_key_path == tmp_path / "keys" / "public_key.pem"
    assert s.legacy_public_key_path == tmp_path / "public_key.pem"
    assert s.models_dir == tmp_path / "models"
    assert s.media_roots == () and s.guest_mode is False
    assert s.mqtt_broker is None and s.mqtt_port == 1883
    assert s.mqtt_topic == "inference/events"
    assert s.capability_topic_prefix == "inference/workers"
    assert s.mqtt_topic_root == "compute"
    assert s.worker_tasks is None  # every task whose tools and models are present
    assert s.server_url == "http://127.0.0.1:8002"
    assert s.wake_events is True and s.auth_disabled is False


def test_values_from_env(tmp_path: Path) -> None:
    s = load_settings(
        {
            "CL_SERVER_DIR": str(tmp_path),
            "DATABASE_URL": "postgresql+psycopg://u@h/db",
            "MQTT_BROKER": "broker.local",
            "MQTT_PORT": "1999",
            "MQTT_TOPIC_ROOT": "/site/compute/",
            "CAPABILITY_TOPIC_PREFIX": "x/workers/",
            "WORKER_SWEEP_INTERVAL": "0.5",
            "WORKER_WAKE_EVENTS": "false",
            "AUTH_DISABLED": "yes",
            "WORKER_SUPPORTED_TASKS": " image_resize , ,image_conversion",
            "COMPUTE_PORT": "9000",
            "LOG_LEVEL": "debug",
            "MAX_UPLOAD_BYTES": "10",
        }
    )
    assert s.database_url == "postgresql+psycopg://u@h/db"
    assert (s.mqtt_broker, s.mqtt_port, s.broker_host) == ("broker.local", 1999, "broker.local")
    assert s.mqtt_topic_root == "site/compute"
    assert s.capability_topic_prefix == "x/workers"
    assert s.sweep_interval == 0.5 and s.wake_events is False and s.auth_disabled is True
    assert s.worker_tasks == ("image_resize", "image_conversion")
    assert s.server_url == "http://127.0.0.1:9000"
    assert s.log_level == "DEBUG" and s.max_upload_bytes == 10


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("MQTT_PORT", "abc"),
        ("COMPUTE_PORT", "80.5"),
        ("MAX_UPLOAD_BYTES", "1MB"),
        ("MQTT_KEEPALIVE", "x"),
        ("WORKER_SWEEP_INTERVAL", "soon"),
    ],
)
def test_bad_numbers_raise_config_error_naming_the_variable(name: str, value: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=name):
        load_settings({"CL_SERVER_DIR": str(tmp_path), name: value})


def test_empty_values_fall_back_to_defaults(tmp_path: Path) -> None:
    s = load_settings({"CL_SERVER_DIR": str(tmp_path), "MQTT_PORT": "", "MQTT_BROKER": ""})
    assert s.mqtt_port == 1883 and s.mqtt_broker is None and s.broker_host == "127.0.0.1"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("JOB_LEASE_SECONDS", "0"),
        ("JOB_LEASE_SECONDS", "-5"),
        ("JOB_TIMEOUT", "-1"),
        ("JOB_TIMEOUT", "nan"),
        ("JOB_MAX_RETRIES", "-1"),
        ("RETRY_BACKOFF_BASE", "-0.5"),
        ("RETRY_BACKOFF_MAX", "-1"),
        ("DB_REQUEST_TIMEOUT", "0"),
        ("DB_REQUEST_TIMEOUT", "-1"),
        ("UPLOAD_IDLE_TIMEOUT", "0"),
        ("UPLOAD_IDLE_TIMEOUT", "inf"),
        ("HEADER_READ_TIMEOUT", "0"),
        ("ORPHAN_GRACE_SECONDS", "-1"),
        ("MQTT_KEEPALIVE", "0"),
        ("MQTT_KEEPALIVE", "-10"),
        ("WORKER_SWEEP_INTERVAL", "0"),
        ("WORKER_SWEEP_INTERVAL", "-1"),
        ("MQTT_HEARTBEAT_INTERVAL", "0"),
        ("MQTT_HEARTBEAT_INTERVAL", "-1"),
        ("MAX_UPLOAD_BYTES", "0"),
        ("MAX_UPLOAD_BYTES", "-1"),
        ("MAX_IMAGE_PIXELS", "0"),
        ("MAX_IMAGE_PIXELS", "-1"),
        ("MQTT_PORT", "0"),
        ("MQTT_PORT", "65536"),
        ("MQTT_PORT", "-1"),
        ("COMPUTE_PORT", "0"),
        ("COMPUTE_PORT", "70000"),
        ("MQTT_VERSION", "3"),
        ("MQTT_VERSION", "6"),
        ("JOB_RATE_LIMIT", "-1"),
        ("JOB_RATE_LIMIT", "inf"),
        ("JOB_RATE_BURST", "0"),
        ("COMPUTE_SERVER_ID", "a/b"),
        ("COMPUTE_SERVER_ID", "x" * 65),
        ("COMPUTE_SERVER_ID", "#"),
    ],
)
def test_out_of_range_values_raise_config_error_naming_the_variable(
    name: str, value: str, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match=name):
        load_settings({"CL_SERVER_DIR": str(tmp_path), name: value})


def test_the_job_rate_limit_is_off_by_default_and_bursts_a_minute_when_on(tmp_path: Path) -> None:
    off = load_settings({"CL_SERVER_DIR": str(tmp_path)})
    assert off.job_rate_limit == 0
    on = load_settings({"CL_SERVER_DIR": str(tmp_path), "JOB_RATE_LIMIT": "2.5"})
    assert (on.job_rate_limit, on.job_rate_burst) == (2.5, 3)
    burst = load_settings({"CL_SERVER_DIR": str(tmp_path), "JOB_RATE_LIMIT": "60", "JOB_RATE_BURST": "5"})
    assert burst.job_rate_burst == 5


def test_boundary_values_are_accepted(tmp_path: Path) -> None:
    s = load_settings(
        {
            "CL_SERVER_DIR": str(tmp_path),
            "MQTT_PORT": "65535",
            "COMPUTE_PORT": "1",
            "MQTT_VERSION": "5",
            "JOB_TIMEOUT": "0",
            "JOB_MAX_RETRIES": "0",
            "RETRY_BACKOFF_BASE": "0",
            "MQTT_KEEPALIVE": "1",
            "MAX_UPLOAD_BYTES": "1",
            "JOB_LEASE_SECONDS": "0.5",
            "ORPHAN_GRACE_SECONDS": "0",
        }
    )
    assert (s.mqtt_port, s.mqtt_version, s.mqtt_keepalive, s.max_upload_bytes) == (65535, 5, 1, 1)
    assert s.task_policies.default.timeout == 0 and s.task_policies.default.max_retries == 0
    assert s.lease_seconds == 0.5 and s.server_url == "http://127.0.0.1:1"


@pytest.mark.parametrize(
    "policy",
    [
        '{"hash": {"max_retries": -1}}',
        '{"hash": {"timeout": -1}}',
        '{"hash": {"backoff_base": -1}}',
        '{"hash": {"backoff_max": -0.1}}',
        '{"hash": {"timeout": "soon"}}',
        '{"hash": {"max_retries": null}}',
    ],
)
def test_bad_task_policies_raise_config_error(policy: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"TASK_POLICIES\['hash'\]"):
        load_settings({"CL_SERVER_DIR": str(tmp_path), "TASK_POLICIES": policy})


def test_task_policies_override_defaults(tmp_path: Path) -> None:
    s = load_settings(
        {"CL_SERVER_DIR": str(tmp_path), "TASK_POLICIES": '{"hash": {"max_retries": 0, "timeout": 5}}'}
    )
    assert s.task_policies.for_task("hash").max_retries == 0
    assert s.task_policies.for_task("hash").timeout == 5.0
    assert s.task_policies.for_task("exif").max_retries == 3


def test_overrides_take_precedence_and_are_validated(tmp_path: Path) -> None:
    env = {"CL_SERVER_DIR": str(tmp_path), "MQTT_PORT": "1999", "MQTT_BROKER": "a"}
    s = load_settings(env, overrides={"MQTT_PORT": "1234", "MQTT_BROKER": None, "COMPUTE_PORT": "9000"})
    assert (s.mqtt_port, s.mqtt_broker, s.server_url) == (1234, "a", "http://127.0.0.1:9000")
    assert env == {"CL_SERVER_DIR": str(tmp_path), "MQTT_PORT": "1999", "MQTT_BROKER": "a"}
    with pytest.raises(ConfigError, match="MQTT_PORT"):
        load_settings(env, overrides={"MQTT_PORT": "0"})


def test_concurrency_per_task_is_opt_in_and_bounded(tmp_path: Path) -> None:
    env = {"CL_SERVER_DIR": str(tmp_path)}
    assert load_settings(env).worker_concurrency == {}
    found = load_settings({**env, "WORKER_CONCURRENCY": " image_resize=4, hash=2 ,"}).worker_concurrency
    assert found == {"image_resize": 4, "hash": 2}
    for bad in ("image_resize", "image_resize=", "=3", "x=0", "x=65", "x=-1", "x=two"):
        with pytest.raises(ConfigError, match="WORKER_CONCURRENCY"):
            load_settings({**env, "WORKER_CONCURRENCY": bad})


def test_batch_per_task_is_opt_in_and_bounded(tmp_path: Path) -> None:
    env = {"CL_SERVER_DIR": str(tmp_path)}
    assert load_settings(env).worker_batch == {}
    found = load_settings({**env, "WORKER_BATCH": "clip_embedding=8,dino_embedding=4"}).worker_batch
    assert found == {"clip_embedding": 8, "dino_embedding": 4}
    for bad in ("clip_embedding", "x=0", "x=65", "x=eight"):
        with pytest.raises(ConfigError, match="WORKER_BATCH"):
            load_settings({**env, "WORKER_BATCH": bad})


def test_parse_tasks() -> None:
    assert parse_tasks("a, b,,c ") == ("a", "b", "c")
    assert parse_tasks("") == ()


def _documented_settings() -> set[str]:
    """The variables named in the first column of docs/operations.md's "Settings (environment)" table."""
    readme = (Path(__file__).resolve().parents[2] / "docs" / "operations.md").read_text()
    table = readme.split("## Settings (environment)", 1)[1].split("\n## ", 1)[0]
    rows = [line.split("|")[1] for line in table.splitlines() if line.startswith("| `")]
    return {name for cell in rows for name in re.findall(r"`([A-Z][A-Z0-9_]+)`", cell)}


def test_variable_names_are_the_settings_the_docs_list() -> None:
    """variable_names() sees every variable load_settings reads, and docs/operations.md lists each of them."""
    assert variable_names() == _documented_settings()


@pytest.mark.parametrize("value", ["TRACE", "warn", "NOTSET", "fatal", "5", "verbose"])
def test_an_unknown_log_level_is_a_config_error_naming_the_levels(value: str, tmp_path: Path) -> None:
    """TRACE is uvicorn's alone, WARN, FATAL and NOTSET logging's alone: either would crash a
    command line after its settings were accepted."""
    with pytest.raises(ConfigError, match="LOG_LEVEL must be one of info, debug, warning, error, critical"):
        load_settings({"CL_SERVER_DIR": str(tmp_path), "LOG_LEVEL": value})


@pytest.mark.parametrize("level", ["debug", "INFO", "Warning", "error", "critical"])
def test_every_log_level_accepted_is_one_logging_and_uvicorn_know(level: str, tmp_path: Path) -> None:
    s = load_settings({"CL_SERVER_DIR": str(tmp_path), "LOG_LEVEL": level})
    assert s.log_level == level.upper()
    assert logging_config(s.log_level)["root"]["level"] == uvicorn.config.LOG_LEVELS[s.log_level.lower()]


#: Values a person (or a bad deployment template) may give any variable.
ODD_VALUES = [
    "",
    " ",
    "x",
    "TRACE",
    "-1",
    "0",
    "1.5",
    "nan",
    "-inf",
    "1e309",
    "9" * 30,
    "9" * 5000,  # past Python's int() digit limit
    "0x10",
    "true",
    "{",
    "[]",
    "é",
    "\udcff",  # an undecodable byte, as os.environ holds it
    "\x00",
    "a/+/#",
    "~no-such-user-here/x",
    "http://[",
    "://",
    "a" * 10_000,
]


@pytest.mark.parametrize("name", sorted(variable_names()))
def test_no_value_of_any_variable_fails_other_than_with_a_config_error(name: str, tmp_path: Path) -> None:
    """Every variable over odd values: load_settings answers a ConfigError (the command lines'
    one line and exit status 2) or Settings the command lines can start with, never another
    exception (a traceback), now or as they start."""
    for value in ODD_VALUES:
        try:
            s = load_settings({"CL_SERVER_DIR": str(tmp_path), name: value})
        except ConfigError:
            continue
        _starts_with(s)


def _starts_with(s: Settings) -> None:
    """What the command lines do with Settings before anything connects."""
    logging_config(s.log_level, s.log_format)
    assert s.log_level.lower() in uvicorn.config.LOG_LEVELS
    make_engine(s.database_url).dispose()
    topics = Topics.for_settings(s)
    for topic in (topics.server_status, s.mqtt_topic, f"{s.capability_topic_prefix}/w"):
        assert not set(topic) & {"+", "#", "\x00"}, topic
    for path in (s.cl_server_dir, s.storage_dir, s.models_dir, s.public_key_path, *s.media_roots):
        assert path is not None
        path.exists()  # raises for a name no file can have
    assert urlsplit(s.server_url).hostname
