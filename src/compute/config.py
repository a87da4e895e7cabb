"""Settings read from the environment, with the CL Server variable names."""

from __future__ import annotations

import math
import os
import re
from collections import ChainMap
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from compute.errors import ConfigError
from compute.jobs import DEFAULT_MAX_RESULT_BYTES
from compute.policies import Policies, TaskPolicy

DEFAULT_MAX_IMAGE_PIXELS = 100_000_000
#: 8K UHD (7680x4320), the largest frames cameras and phones record.
DEFAULT_MAX_VIDEO_PIXELS = 7680 * 4320
#: Four hours.
DEFAULT_MAX_VIDEO_SECONDS = 4 * 3600
#: A film with many audio and subtitle tracks has a few dozen.
DEFAULT_MAX_VIDEO_STREAMS = 64
INT_MAX = 2**31 - 1
#: Embedded mode's broker user (unless MQTT_USERNAME) and the file in CL_SERVER_DIR that holds its
#: generated password (written by compute-server, see broker.py).
EMBEDDED_USERNAME = "compute"
EMBEDDED_PASSWORD_FILE = "mqtt_password"


@dataclass(frozen=True)
class Settings:
    """Everything the server and the worker need, validated once at start."""

    cl_server_dir: Path
    database_url: str
    storage_dir: Path
    #: None means "embedded": use the broker on localhost:mqtt_port, or start amqtt there.
    mqtt_broker: str | None = None
    mqtt_port: int = 1883
    #: Address the embedded broker binds to (only used when mqtt_broker is None).
    mqtt_embedded_bind: str = "127.0.0.1"
    #: Which embedded broker (EMBEDDED_BROKERS): "auto" runs Mosquitto when installed, else amqtt.
    embedded_broker: str = "auto"
    mqtt_username: str | None = None
    mqtt_password: str | None = None
    mqtt_tls: bool = False
    #: CA bundle for the broker's certificate (default: the system store).
    mqtt_tls_ca_file: str | None = None
    #: The server's MQTT client id; fixed so the broker keeps its session while it restarts.
    mqtt_client_id: str | None = None
    #: This server process among the deployment's servers (COMPUTE_SERVER_ID); None: the first
    #: free slot `server-<host>-<n>` (compute/slots.py), the same after a restart.
    server_id: str | None = None
    mqtt_keepalive: int = 60  # seconds
    #: 4 = MQTT 3.1.1 (works on every broker, amqtt included); 5 = MQTT 5.
    mqtt_version: int = 4
    #: Root of the compute topic tree (jobs/available, workers, queues ...).
    mqtt_topic_root: str = "compute"
    #: CL Server job event topic, kept for existing clients.
    mqtt_topic: str = "inference/events"
    capability_topic_prefix: str = "inference/workers"
    heartbeat_interval: float = 30.0  # seconds between worker info refreshes
    sweep_interval: float = 30.0  # seconds between fallback claim passes
    #: 0 turns job-available wake-ups off: workers poll every sweep_interval (the old design).
    wake_events: bool = True
    #: How long a claim holds without a heartbeat before the server rescues the job.
    lease_seconds: float = 60.0
    #: How often a worker renews its leases (at most a third of the lease). After a worker's
    #: verified Last Will the server rescues its claims once two renewals are missing, so this
    #: bounds how soon a killed worker's job runs elsewhere (the same value on server and workers).
    lease_renew_seconds: float = 1.0
    task_policies: Policies = field(default_factory=lambda: Policies(TaskPolicy()))
    auth_disabled: bool = False
    public_key_path: Path | None = None
    #: Where older deployments kept the key; read (with a warning) when public_key_path is absent.
    legacy_public_key_path: Path | None = None
    #: Guest mode until an admin changes it (the admin's choice is kept in the database).
    guest_mode: bool = False
    max_upload_bytes: int = 100 * 1024 * 1024
    #: A request body that sends nothing for this long is answered 408 and closed (seconds).
    upload_idle_timeout: float = 30.0
    #: A connection whose request line and headers are not all in after this long is closed (seconds).
    header_read_timeout: float = 10.0
    #: How long an HTTP request waits for the database before it answers 503 (seconds).
    db_request_timeout: float = 5.0
    #: A job folder with no row is removed once it is this old (seconds): an upload in flight is not.
    orphan_grace_seconds: float = 600.0
    #: Largest result a job may store (its task_output as JSON, bytes); a larger one fails the job.
    max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES
    #: Live views (SSE): seconds between heartbeat comments on a quiet stream.
    sse_heartbeat: float = 15.0
    #: Live views: changes buffered per client; a client further behind is disconnected.
    sse_buffer: int = 256
    #: Live views: open streams at most (more answer 503); also bounded by the descriptor budget.
    sse_max_clients: int = 1000
    #: Live views one user (without a token: one client address) may hold at once (more: 429).
    sse_max_per_user: int = 20
    #: A connection whose client takes none of the data waiting for it this long is cut (seconds).
    http_send_timeout: float = 30.0
    #: Jobs a user (or, without a token, a client address) may create per minute; 0 = no limit.
    job_rate_limit: float = 0.0
    #: How many of them at once, before the per-minute rate applies.
    job_rate_burst: int = 1
    #: Finished jobs (and their folders) older than this many days are pruned in the background (0: kept).
    retention_days: float = 0.0
    #: At most this many finished jobs are kept, the newest (0: no limit).
    retention_max_jobs: int = 0
    #: Retained topics and session rows of workers silent this long are cleared (seconds; 0: never).
    worker_forget_after: float = 86400.0
    #: A queued job moves up one priority step per this many seconds of waiting (0: no aging).
    priority_aging_seconds: float = 60.0
    #: The server that runs the periodic sweeps holds a lease this long (renewed every third);
    #: when it dies another takes over within about this long (seconds).
    sweep_lease_seconds: float = 15.0
    #: Folder of model files for the ML plugins.
    models_dir: Path = Path("models")
    #: Largest image accepted as input or asked for as output, in pixels.
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    #: Folders that `input_absolute_path` / `output_absolute_path` may point into.
    media_roots: tuple[Path, ...] = ()
    #: Largest video frame (width x height) a task that decodes videos accepts.
    max_video_pixels: int = DEFAULT_MAX_VIDEO_PIXELS
    #: Longest video, in seconds, such a task accepts.
    max_video_seconds: int = DEFAULT_MAX_VIDEO_SECONDS
    #: Most streams in a video such a task accepts.
    max_video_streams: int = DEFAULT_MAX_VIDEO_STREAMS
    worker_id: str = "worker-default"
    #: "process": plugins run in a child process the worker can kill (cancel, timeout, crash);
    #: "thread": on a thread of the worker, where a plugin that does not stop is only abandoned.
    plugin_isolation: str = "process"
    #: Address-space cap of the plugin process, in MB (RLIMIT_AS); 0 = none. Process isolation only.
    plugin_memory_limit_mb: int = 4096
    #: None: every installed task whose tools and models are present.
    worker_tasks: tuple[str, ...] | None = None
    #: Whether a worker sees the server's job folders (WORKER_FILES_MODES): "auto" finds out from
    #: the storage marker, "shared" and "remote" insist. A remote worker fetches a job's inputs and
    #: sends its outputs over HTTP, working in a scratch folder of its own.
    worker_files: str = "auto"
    #: A remote worker's scratch folders: <worker_scratch_dir>/<worker id>/jobs/<job id>.
    worker_scratch_dir: Path = Path("worker-scratch")
    #: Task type -> how many of its jobs a worker runs at once (WORKER_CONCURRENCY, opt-in, for
    #: light tasks): it claims up to that many in one statement, each in a plugin process of its
    #: own. Tasks not named share one slot, one job at a time.
    worker_concurrency: Mapping[str, int] = field(default_factory=dict)
    #: Task type -> the most of its queued jobs one plugin process takes together (WORKER_BATCH,
    #: opt-in, for tasks whose model takes a batch: clip_embedding, dino_embedding,
    #: face_embedding): claimed in one statement, run through the model in one call. What is
    #: queued is taken at once: a lone job never waits for a batch to fill.
    worker_batch: Mapping[str, int] = field(default_factory=dict)
    server_url: str = "http://127.0.0.1:8002"
    log_level: str = "INFO"
    #: "text" (default) or "json": one JSON object per line, with job_id / worker_id fields.
    log_format: str = "text"
    #: When set, GET /metrics wants `Authorization: Bearer <token>`; open otherwise.
    metrics_token: str | None = None

    @property
    def broker_host(self) -> str:
        return self.mqtt_broker or "127.0.0.1"

    @property
    def server_client_id(self) -> str:
        return self.mqtt_client_id or f"compute-server-{self.mqtt_topic_root.replace('/', '-')}"

    @property
    def lease_ms(self) -> int:
        return int(self.lease_seconds * 1000)


def read_secret(path: Path) -> str | None:
    """A secret kept in a file (first line, stripped), or None when it is missing or empty."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return None
    return (lines[0].strip() or None) if lines else None


def _bool(value: str) -> bool:
    return value.strip().lower() in {"1", "true", "yes", "on"}


def _int(
    env: Mapping[str, str], name: str, default: int, *, minimum: int | None = None, maximum: int | None = None
) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, got {raw!r}") from None
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise ConfigError(f"{name} must be {_range(minimum, maximum)}, got {raw!r}")
    return value


def _float(env: Mapping[str, str], name: str, default: float, *, positive: bool = False) -> float:
    """A number of seconds: never negative, and above zero when `positive`."""
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        raise ConfigError(
            f"{name} must be a {'positive' if positive else 'non-negative'} number, got {raw!r}"
        )
    return value


def _range(minimum: int | None, maximum: int | None) -> str:
    if maximum is None:
        return f"at least {minimum}"
    if minimum is None:
        return f"at most {maximum}"
    return f"between {minimum} and {maximum}"


_IDENTIFIER = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def _identifier(env: Mapping[str, str], name: str) -> str | None:
    """A name that can sit in an MQTT client id and a topic segment, or None when unset."""
    raw = (env.get(name) or "").strip()
    if not raw:
        return None
    if not _IDENTIFIER.fullmatch(raw):
        raise ConfigError(f"{name} may only use letters, digits and _ . - (1-64), got {raw!r}")
    return raw


def _port(env: Mapping[str, str], name: str, default: int) -> int:
    return _int(env, name, default, minimum=1, maximum=65535)


def _mqtt_version(env: Mapping[str, str]) -> int:
    version = _int(env, "MQTT_VERSION", 4)
    if version not in (4, 5):
        raise ConfigError(f"MQTT_VERSION must be 4 (MQTT 3.1.1) or 5, got {env['MQTT_VERSION']!r}")
    return version


def _choice(env: Mapping[str, str], name: str, choices: tuple[str, ...]) -> str:
    """One of `choices` (case-insensitive), the first when unset; ConfigError naming them otherwise."""
    value = (env.get(name) or choices[0]).strip().lower()
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {env[name]!r}")
    return value


LOG_FORMATS = ("text", "json")
#: auto: a worker shares the server's disk when its storage folder holds the server's marker.
WORKER_FILES_MODES = ("auto", "shared", "remote")
#: The levels both the logging module and uvicorn know (uvicorn's TRACE is not logging's, and
#: logging's WARN, FATAL and NOTSET are not uvicorn's); the first is the default.
LOG_LEVELS = ("info", "debug", "warning", "error", "critical")
PLUGIN_ISOLATION_MODES = ("process", "thread")
#: auto: Mosquitto as a child process when it is installed, else amqtt in the server's process.
EMBEDDED_BROKERS = ("auto", "mosquitto", "amqtt")


def _path(env: Mapping[str, str], name: str, default: Path) -> Path:
    """The path in `name`, `default` when unset."""
    raw = env.get(name)
    return _as_path(name, raw) if raw else default


#: Linux's limits (NAME_MAX, PATH_MAX): a longer name is refused by every file operation.
MAX_NAME_BYTES, MAX_PATH_BYTES = 255, 4095


def _as_path(name: str, raw: str) -> Path:
    """`raw` as a path, `~` expanded; what cannot name a file (a NUL, a name too long,
    `~nosuchuser`) is refused."""
    if "\x00" in raw:
        raise ConfigError(f"{name} cannot name a file: it contains a NUL character")
    try:
        path = Path(raw).expanduser()
    except RuntimeError:  # ~user of no such user
        raise ConfigError(
            f"{name}: {raw[:100]!r} names the home folder of a user this machine lacks"
        ) from None
    encoded = os.fsencode(path)
    if len(encoded) > MAX_PATH_BYTES or any(len(part) > MAX_NAME_BYTES for part in encoded.split(b"/")):
        raise ConfigError(
            f"{name} cannot name a file: longer than {MAX_PATH_BYTES} bytes, or a name in it longer than "
            f"{MAX_NAME_BYTES}"
        )
    return path


def _topic(env: Mapping[str, str], name: str, default: str, *, prefix: bool) -> str:
    """An MQTT topic (a `prefix` loses its outer `/`) without a wildcard, which would make what is
    published under it invalid and what is subscribed under it take other topics too, or a NUL."""
    raw = env.get(name) or default
    if set(raw) & {"+", "#", "\x00"}:
        raise ConfigError(f"{name} must be an MQTT topic without the wildcards + and # (or NUL), got {raw!r}")
    return raw.strip("/") if prefix else raw


def _database_url(env: Mapping[str, str], default: str) -> str:
    """DATABASE_URL when SQLAlchemy can read it and its driver is installed. The value is not
    echoed in the error: it may hold a password."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    raw = env.get("DATABASE_URL") or default
    try:
        url = make_url(raw)
    except ArgumentError:
        raise ConfigError(
            "DATABASE_URL is not a database URL (sqlite:///<file> or "
            "postgresql+psycopg://<user>@<host>/<database>)"
        ) from None
    try:
        url.get_dialect().import_dbapi()
    except ArgumentError:  # NoSuchModuleError: no such dialect
        raise ConfigError(
            f"DATABASE_URL names a database SQLAlchemy does not know: {url.drivername!r}"
        ) from None
    except ImportError as exc:
        raise ConfigError(
            f"DATABASE_URL needs the Python driver {exc.name or exc}, which is not installed "
            "(PostgreSQL: uv sync --extra postgres)"
        ) from None
    return raw


def _server_url(env: Mapping[str, str], default: str) -> str:
    raw = env.get("COMPUTE_SERVER_URL") or default
    try:
        parts = urlsplit(raw)
        parts.port  # noqa: B018 - raises ValueError for a port that is not one
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"COMPUTE_SERVER_URL must be an http:// or https:// URL with a host, got {raw!r}")
    return raw


def parse_tasks(raw: str) -> tuple[str, ...]:
    return tuple(t.strip() for t in raw.split(",") if t.strip())


#: The most jobs of one task a worker runs at once (each in a process of its own).
MAX_CONCURRENCY = 64


#: The most jobs of one task a plugin process takes in one batch.
MAX_BATCH = 64


def parse_concurrency(
    raw: str, var: str = "WORKER_CONCURRENCY", maximum: int = MAX_CONCURRENCY
) -> dict[str, int]:
    """`task=N,task2=M` -> {task: N, task2: M}; ConfigError for anything else."""
    found: dict[str, int] = {}
    for item in raw.split(","):
        if not item.strip():
            continue
        task, sep, count = item.partition("=")
        task = task.strip()
        if not sep or not task or not count.strip().isdigit():
            raise ConfigError(f"{var}: expected task=N[,task=N ...], got {item.strip()!r}")
        n = int(count)
        if not 1 <= n <= maximum:
            raise ConfigError(f"{var}: {task}={n}: between 1 and {maximum}")
        found[task] = n
    return found


def load_settings(
    env: Mapping[str, str] | None = None, overrides: Mapping[str, str | None] | None = None
) -> Settings:
    """Build Settings from environment variables (os.environ by default).

    `overrides` (variable name -> value; None values are ignored) take precedence over `env`:
    the command lines pass their flags this way, so a flag is read and checked exactly like the
    variable it stands for, without touching os.environ.
    """
    env = os.environ if env is None else env
    if overrides:
        env = ChainMap({k: v for k, v in overrides.items() if v is not None}, dict(env))
    cl_server_dir = _path(env, "CL_SERVER_DIR", Path.home() / ".cl_server")
    database_url = _database_url(env, f"sqlite:///{cl_server_dir / 'compute.db'}")
    storage_dir = _path(env, "COMPUTE_STORAGE_DIR", cl_server_dir / "compute")
    mqtt_username, mqtt_password = env.get("MQTT_USERNAME") or None, env.get("MQTT_PASSWORD") or None
    if not env.get("MQTT_BROKER") and mqtt_password is None:
        # Embedded mode: the password compute-server generated for its broker, if it did.
        mqtt_password = read_secret(cl_server_dir / EMBEDDED_PASSWORD_FILE)
        if mqtt_password is not None:
            mqtt_username = mqtt_username or EMBEDDED_USERNAME
    explicit_key = env.get("PUBLIC_KEY_PATH")
    public_key = _path(env, "PUBLIC_KEY_PATH", cl_server_dir / "keys" / "public_key.pem")
    port = _port(env, "COMPUTE_PORT", 8002)
    ca_file = env.get("MQTT_TLS_CA_FILE")
    rate_limit = _float(env, "JOB_RATE_LIMIT", 0.0)
    return Settings(
        cl_server_dir=cl_server_dir,
        database_url=database_url,
        storage_dir=storage_dir,
        mqtt_broker=env.get("MQTT_BROKER") or None,
        mqtt_port=_port(env, "MQTT_PORT", 1883),
        mqtt_embedded_bind=env.get("MQTT_EMBEDDED_BIND") or "127.0.0.1",
        embedded_broker=_choice(env, "EMBEDDED_BROKER", EMBEDDED_BROKERS),
        mqtt_username=mqtt_username,
        mqtt_password=mqtt_password,
        mqtt_tls=_bool(env.get("MQTT_TLS", "false")),
        mqtt_tls_ca_file=str(_as_path("MQTT_TLS_CA_FILE", ca_file)) if ca_file else None,
        mqtt_client_id=env.get("MQTT_CLIENT_ID") or None,
        server_id=_identifier(env, "COMPUTE_SERVER_ID"),
        mqtt_keepalive=_int(env, "MQTT_KEEPALIVE", 60, minimum=1),
        mqtt_version=_mqtt_version(env),
        mqtt_topic_root=_topic(env, "MQTT_TOPIC_ROOT", "compute", prefix=True),
        mqtt_topic=_topic(env, "MQTT_TOPIC", "inference/events", prefix=False),
        capability_topic_prefix=_topic(env, "CAPABILITY_TOPIC_PREFIX", "inference/workers", prefix=True),
        heartbeat_interval=_float(env, "MQTT_HEARTBEAT_INTERVAL", 30.0, positive=True),
        sweep_interval=_float(env, "WORKER_SWEEP_INTERVAL", 30.0, positive=True),
        wake_events=_bool(env.get("WORKER_WAKE_EVENTS", "true")),
        lease_seconds=_float(env, "JOB_LEASE_SECONDS", 60.0, positive=True),
        lease_renew_seconds=_float(env, "JOB_LEASE_RENEW_SECONDS", 1.0, positive=True),
        task_policies=Policies.parse(
            TaskPolicy(
                max_retries=_int(env, "JOB_MAX_RETRIES", 3, minimum=0),
                timeout=_float(env, "JOB_TIMEOUT", 600.0),
                backoff_base=_float(env, "RETRY_BACKOFF_BASE", 1.0),
                backoff_max=_float(env, "RETRY_BACKOFF_MAX", 60.0),
                retry_plugin_errors=_bool(env.get("RETRY_PLUGIN_ERRORS", "false")),
            ),
            env.get("TASK_POLICIES"),
        ),
        auth_disabled=_bool(env.get("AUTH_DISABLED", "false")),
        public_key_path=public_key,
        legacy_public_key_path=None if explicit_key else cl_server_dir / "public_key.pem",
        guest_mode=_bool(env.get("GUEST_MODE", "off")),
        max_upload_bytes=_int(env, "MAX_UPLOAD_BYTES", 100 * 1024 * 1024, minimum=1),
        upload_idle_timeout=_float(env, "UPLOAD_IDLE_TIMEOUT", 30.0, positive=True),
        header_read_timeout=_float(env, "HEADER_READ_TIMEOUT", 10.0, positive=True),
        db_request_timeout=_float(env, "DB_REQUEST_TIMEOUT", 5.0, positive=True),
        orphan_grace_seconds=_float(env, "ORPHAN_GRACE_SECONDS", 600.0),
        max_result_bytes=_int(env, "MAX_RESULT_BYTES", DEFAULT_MAX_RESULT_BYTES, minimum=1024),
        sse_heartbeat=_float(env, "SSE_HEARTBEAT_SECONDS", 15.0, positive=True),
        sse_buffer=_int(env, "SSE_BUFFER", 256, minimum=1),
        sse_max_clients=_int(env, "SSE_MAX_CLIENTS", 1000, minimum=1),
        sse_max_per_user=_int(env, "SSE_MAX_PER_USER", 20, minimum=1),
        http_send_timeout=_float(env, "HTTP_SEND_TIMEOUT", 30.0, positive=True),
        job_rate_limit=rate_limit,
        job_rate_burst=_int(
            env, "JOB_RATE_BURST", max(1, math.ceil(rate_limit)), minimum=1, maximum=1_000_000
        ),
        retention_days=_float(env, "RETENTION_DAYS", 0.0),
        retention_max_jobs=_int(env, "RETENTION_MAX_JOBS", 0, minimum=0),
        worker_forget_after=_float(env, "WORKER_FORGET_AFTER", 86400.0),
        priority_aging_seconds=_float(env, "PRIORITY_AGING_SECONDS", 60.0),
        sweep_lease_seconds=_float(env, "SWEEP_LEASE_SECONDS", 15.0, positive=True),
        models_dir=_path(env, "COMPUTE_MODELS_DIR", cl_server_dir / "models"),
        max_image_pixels=_int(env, "MAX_IMAGE_PIXELS", DEFAULT_MAX_IMAGE_PIXELS, minimum=1),
        max_video_pixels=_int(
            env, "MAX_VIDEO_PIXELS", DEFAULT_MAX_VIDEO_PIXELS, minimum=1, maximum=2**31 - 1
        ),
        max_video_seconds=_int(env, "MAX_VIDEO_SECONDS", DEFAULT_MAX_VIDEO_SECONDS, minimum=1),
        max_video_streams=_int(
            env, "MAX_VIDEO_STREAMS", DEFAULT_MAX_VIDEO_STREAMS, minimum=1, maximum=100_000
        ),
        media_roots=tuple(
            _as_path("COMPUTE_MEDIA_ROOTS", p)
            for p in (env.get("COMPUTE_MEDIA_ROOTS") or "").split(os.pathsep)
            if p.strip()
        ),
        worker_id=env.get("WORKER_ID") or "worker-default",
        plugin_isolation=_choice(env, "PLUGIN_ISOLATION", PLUGIN_ISOLATION_MODES),
        plugin_memory_limit_mb=_int(env, "PLUGIN_MEMORY_LIMIT_MB", 4096, minimum=0),
        worker_tasks=parse_tasks(env["WORKER_SUPPORTED_TASKS"])
        if env.get("WORKER_SUPPORTED_TASKS")
        else None,
        worker_concurrency=parse_concurrency(env.get("WORKER_CONCURRENCY") or ""),
        worker_batch=parse_concurrency(env.get("WORKER_BATCH") or "", "WORKER_BATCH", MAX_BATCH),
        worker_files=_choice(env, "WORKER_FILES", WORKER_FILES_MODES),
        worker_scratch_dir=_path(env, "WORKER_SCRATCH_DIR", cl_server_dir / "worker-scratch"),
        server_url=_server_url(env, f"http://127.0.0.1:{port}").rstrip("/"),
        log_level=_choice(env, "LOG_LEVEL", LOG_LEVELS).upper(),
        log_format=_choice(env, "LOG_FORMAT", LOG_FORMATS),
        metrics_token=env.get("METRICS_TOKEN") or None,
    )


class _Reads(Mapping[str, str]):
    """An empty environment that remembers every name asked of it."""

    def __init__(self) -> None:
        self.names: set[str] = set()

    def __getitem__(self, name: str) -> str:
        self.names.add(name)
        raise KeyError(name)

    def get(self, name: str, default: object = None) -> Any:
        self.names.add(name)
        return default

    def __contains__(self, name: object) -> bool:
        if isinstance(name, str):
            self.names.add(name)
        return False

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


def variable_names() -> frozenset[str]:
    """Every environment variable load_settings reads: it is run over an empty environment that
    records the names asked of it, so a new setting is listed the moment load_settings reads it.
    Test and benchmark harnesses remove these from the environment of the processes they start.
    """
    reads = _Reads()
    load_settings(reads)
    return frozenset(reads.names)
