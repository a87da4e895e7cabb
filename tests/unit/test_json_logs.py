"""LOG_FORMAT=json: one JSON object per line, `extra` fields included, rate limiting intact."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from compute.config import load_settings
from compute.errors import ConfigError
from compute.logs import JsonFormatter, LogLimiter, TextFormatter, logging_config


@pytest.fixture
def captured() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger(f"compute.test_json_logs.{id(out)}")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    yield logger, out
    logger.removeHandler(handler)


def lines(out: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_lines_are_json_with_extra_fields(captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, out = captured
    logger.info("job %s: completed", "j1", extra={"job_id": "j1", "worker_id": "w1", "attempt": 2})
    try:
        raise ValueError("boom\nsecond line")
    except ValueError:
        logger.exception("it failed")
    first, second = lines(out)
    assert first["message"] == "job j1: completed" and first["level"] == "INFO"
    assert (first["job_id"], first["worker_id"], first["attempt"]) == ("j1", "w1", 2)
    assert str(first["time"]).endswith("+00:00") and first["logger"] == logger.name
    assert "args" not in first and "msg" not in first  # LogRecord internals stay out
    assert second["level"] == "ERROR" and "ValueError: boom" in str(second["exception"])


def test_rate_limited_lines_keep_their_fields(captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, out = captured
    limited = LogLimiter(logger, burst=2, interval=60.0)
    for i in range(5):
        limited.warning("forged", "dropped event for job %s", f"j{i}", extra={"job_id": f"j{i}"})
    assert [line["job_id"] for line in lines(out)] == ["j0", "j1"]
    assert limited.suppressed_total == 3


def test_log_format_setting(tmp_path: Path) -> None:
    assert load_settings({"CL_SERVER_DIR": str(tmp_path)}).log_format == "text"
    assert load_settings({"CL_SERVER_DIR": str(tmp_path), "LOG_FORMAT": "JSON"}).log_format == "json"
    with pytest.raises(ConfigError, match="LOG_FORMAT must be one of text, json"):
        load_settings({"CL_SERVER_DIR": str(tmp_path), "LOG_FORMAT": "yaml"})
    assert load_settings({"CL_SERVER_DIR": str(tmp_path)}).metrics_token is None
    assert load_settings({"CL_SERVER_DIR": str(tmp_path), "METRICS_TOKEN": "t"}).metrics_token == "t"


JWT = "eyJhbGciOiJFUzI1NiJ9.eyJpZCI6ImFsaWNlIn0.c2lnbmF0dXJl_-x"


@pytest.mark.parametrize("formatter", [JsonFormatter(), TextFormatter()], ids=["json", "text"])
def test_no_secret_survives_a_formatter(formatter: logging.Formatter) -> None:
    """In the message, its arguments, an `extra` field or a traceback: whoever logged it."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter)
    logger = logging.getLogger(f"compute.test_json_logs.secrets.{id(out)}")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning('%s - "GET /events?access_token=%s HTTP/1.1" 200', "127.0.0.1:1", JWT)
        logger.warning("header", extra={"authorization": "Bearer opaque-metrics-token"})  # json shows it
        logger.warning("sent Authorization: Bearer %s", "opaque-metrics-token")
        logger.warning("broker at mqtt://compute:hunter2@127.0.0.1:1883, server http://127.0.0.1:8002/")
        try:
            raise ValueError(f"bad token {JWT}")
        except ValueError:
            logger.exception("auth failed")
    finally:
        logger.removeHandler(handler)
    written = out.getvalue()
    for secret in (JWT, JWT.split(".")[2], "opaque-metrics-token", "hunter2"):
        assert secret not in written
    assert "access_token=[redacted]" in written and "Bearer [redacted]" in written
    assert "mqtt://compute:[redacted]@127.0.0.1:1883" in written
    assert "http://127.0.0.1:8002/" in written  # a port is no password


def test_logging_config_sends_uvicorn_through_the_root() -> None:
    config = logging_config("debug", "json")
    assert config["root"]["level"] == logging.DEBUG
    assert config["formatters"]["line"]["()"] == "compute.logs.JsonFormatter"
    assert all(
        config["loggers"][name] == {"handlers": [], "propagate": True}
        for name in ("uvicorn", "uvicorn.access")
    )
    assert config["loggers"]["gmqtt"]["level"] == logging.WARNING
