"""Log setup (text or JSON lines) and rate-limited logging for lines that bus input can trigger.

Anyone who can publish on the broker can send junk as fast as the broker forwards it. A warning
per junk message let a flood grow the server log by 40 MB a minute; `LogLimiter` lets through
at most `burst` lines per key per `interval` seconds and then one line saying how many it held
back. Keys are fixed reasons ("malformed job event"), never text taken from a message, so their
number stays small; past `max_keys` every new key shares one bucket.

`LOG_FORMAT=json` makes every line (ours, uvicorn's, the libraries') one JSON object; what a
call passes as `extra` (job_id, worker_id ...) becomes fields of it, so a log pipeline can
filter by job or worker without parsing messages.

No secret reaches a log: both formats pass each finished line through `redact()`, which hides a
JWT wherever it appears, the value of an `access_token=` query parameter, of a `Bearer` header
and the password of a URL. The line is what is redacted, so this holds whoever logs it (uvicorn,
a library, an exception's message in a traceback). `logging_config` is the one configuration of
every process, uvicorn's `--reload` child included (uvicorn applies it there).
"""

from __future__ import annotations

import json
import logging
import logging.config
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: Attributes every LogRecord has; anything else on a record came from `extra`.
_RECORD_FIELDS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


#: A JWT (its header always encodes `{"`, hence `eyJ`), the value of `access_token=` or of a
#: `Bearer` credential, the password in `scheme://user:password@host`.
_SECRETS = re.compile(
    r"\beyJ[\w-]+\.[\w-]+\.[\w-]*"
    r"|(?P<parameter>access_token=|\b[Bb]earer\s+)[^\s&#\"',]+"
    r"|(?P<user>://[^/\s:@]*:)[^/\s@]+(?=@)"
)
REDACTED = "[redacted]"
#: uvicorn's loggers (its own configuration gives them handlers that bypass the root's).
_UVICORN = ("uvicorn", "uvicorn.error", "uvicorn.access")


def redact(line: str) -> str:
    """`line` with every secret `_SECRETS` knows replaced by `[redacted]`."""
    return _SECRETS.sub(lambda m: (m["parameter"] or m["user"] or "") + REDACTED, line)


class TextFormatter(logging.Formatter):
    """`TEXT_FORMAT` lines, secrets redacted."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the `extra` fields, exception;
    secrets redacted."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _RECORD_FIELDS and not key.startswith("_"):
                line[key] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return redact(json.dumps(line, default=str))


def logging_config(level: str, fmt: str = "text") -> dict[str, Any]:
    """The `logging.config.dictConfig` of a command line: one handler, on the root, writing text
    lines (or JSON lines, `fmt="json"`) to stderr; uvicorn's loggers keep none of their own and
    reach it (uvicorn applies this configuration in its --reload child too)."""
    number = logging.getLevelNamesMapping()[level.upper()]
    formatter = "compute.logs.JsonFormatter" if fmt == "json" else "compute.logs.TextFormatter"
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"line": {"()": formatter}},
        "handlers": {
            "stderr": {"class": "logging.StreamHandler", "formatter": "line", "stream": "ext://sys.stderr"}
        },
        "root": {"level": number, "handlers": ["stderr"]},
        "loggers": {
            **{name: {"handlers": [], "propagate": True} for name in _UVICORN},
            # gmqtt and amqtt narrate every packet at INFO.
            **{noisy: {"level": max(logging.WARNING, number)} for noisy in ("gmqtt", "amqtt", "transitions")},
        },
    }


def setup_logging(level: str, fmt: str = "text") -> None:
    """Root logging for a command line: text lines, or JSON lines with `fmt="json"`."""
    logging.config.dictConfig(logging_config(level, fmt))


BURST = 5
INTERVAL = 60.0  # seconds
MAX_KEYS = 256
_OVERFLOW = "(other reasons)"


@dataclass
class _Window:
    started: float
    logged: int = 0
    suppressed: int = 0


class LogLimiter:
    """`warning(key, msg, *args)` and friends, at most `burst` lines per key per `interval`."""

    def __init__(
        self, logger: logging.Logger, burst: int = BURST, interval: float = INTERVAL, max_keys: int = MAX_KEYS
    ) -> None:
        self.logger = logger
        self.burst = burst
        self.interval = interval
        self.max_keys = max_keys
        self._windows: dict[str, _Window] = {}
        #: Lines held back since start, per key (for tests and health checks).
        self.suppressed_total = 0

    def log(
        self,
        level: int,
        key: str,
        msg: str,
        *args: Any,
        exc_info: bool = False,
        extra: Mapping[str, object] | None = None,
    ) -> bool:
        """Log unless `key` used up its burst in this interval; True when the line was written.
        `extra`: fields for structured (JSON) logs, e.g. job_id and worker_id."""
        if not self.logger.isEnabledFor(level):
            return False
        now = time.monotonic()
        if key not in self._windows and len(self._windows) >= self.max_keys:
            key = _OVERFLOW
        window = self._windows.get(key)
        if window is None:
            window = self._windows[key] = _Window(now)
        elif now - window.started >= self.interval:
            self._summarise(level, key, window, now)
            window.started, window.logged, window.suppressed = now, 0, 0
        if window.logged >= self.burst:
            window.suppressed += 1
            self.suppressed_total += 1
            return False
        window.logged += 1
        self.logger.log(level, msg, *args, exc_info=exc_info, extra=extra)
        return True

    def warning(self, key: str, msg: str, *args: Any, extra: Mapping[str, object] | None = None) -> bool:
        return self.log(logging.WARNING, key, msg, *args, extra=extra)

    def info(self, key: str, msg: str, *args: Any, extra: Mapping[str, object] | None = None) -> bool:
        return self.log(logging.INFO, key, msg, *args, extra=extra)

    def exception(self, key: str, msg: str, *args: Any, extra: Mapping[str, object] | None = None) -> bool:
        return self.log(logging.ERROR, key, msg, *args, exc_info=True, extra=extra)

    def flush(self, level: int = logging.WARNING) -> None:
        """Write the summaries of every finished interval that held lines back."""
        now = time.monotonic()
        for key, window in list(self._windows.items()):
            if now - window.started >= self.interval:
                self._summarise(level, key, window, now)
                del self._windows[key]

    def _summarise(self, level: int, key: str, window: _Window, now: float) -> None:
        if window.suppressed:
            self.logger.log(
                level,
                "suppressed %d more '%s' lines in the last %.0f s",
                window.suppressed,
                key,
                now - window.started,
            )
