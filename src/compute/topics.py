"""Every MQTT topic and payload, built and parsed in one place: the code twin of topics.md."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Literal, TypedDict

from compute.errors import ComputeError
from compute.jobs import EventType, JobEvent

if TYPE_CHECKING:
    from compute.config import Settings

#: Largest payload accepted from the bus; anything bigger is dropped unread. Job events may be
#: larger when MAX_RESULT_BYTES is raised (event_payload_limit).
MAX_PAYLOAD_BYTES = 1024 * 1024
#: Room for a job event's fields around its task_output.
EVENT_ENVELOPE_BYTES = 64 * 1024
#: Largest worker `info` accepted: a real one is a few hundred bytes.
MAX_INFO_BYTES = 8 * 1024
#: Most task types one worker may announce.
MAX_TASKS = 64
ONLINE: Final = "online"
OFFLINE: Final = "offline"
#: The plain-text payload of the `status` topics.
Presence = Literal["online", "offline"]
_SEGMENT = re.compile(r"^[A-Za-z0-9_.:@-]{1,128}$")


class MalformedMessage(ComputeError, ValueError):
    """A payload or topic that does not follow topics.md."""


class JobAvailable(TypedDict):
    job_id: str
    task_type: str
    priority: int
    timestamp: int


class _JobEventOptional(TypedDict, total=False):
    #: `failed` only: true for an exception, crash or timeout (retried while attempts remain).
    retryable: bool
    #: `completed` only: the plugin's result.
    task_output: dict[str, Any]
    #: `failed` only: why.
    error: str


class JobEventMessage(_JobEventOptional):
    """A worker's event about its claim, on `<root>/events/<task>/<job_id>`; `sig` is keyed by the
    claim's lease token. (The optional fields sit in a `total=False` base: Python 3.11 does not
    see `NotRequired` under `from __future__ import annotations`.)"""

    job_id: str
    task_type: str
    worker_id: str
    event: EventType
    progress: int
    timestamp: int
    attempt: int
    seq: int
    sig: str


class WorkerInfo(TypedDict):
    worker_id: str
    session: str
    #: "online", or "offline" when parsed from a Last Will (see WorkerWill).
    state: str
    tasks: list[str]
    idle: bool
    hostname: str
    pid: int
    started_at: int
    timestamp: int
    #: HMAC-SHA256 keyed by the session's secret (signing.info_signature); "" when missing.
    sig: str


class WorkerWill(TypedDict):
    """The main connection's Last Will on `info`: this session is gone. Signed like an `info`
    over the fields it has (and `[]`, `0`, `""`, `0`, `0` for those it leaves out)."""

    worker_id: str
    session: str
    state: Literal["offline"]
    timestamp: int
    sig: str


class LegacyCapability(TypedDict):
    """CL Server's `inference/workers/<id>` message, read by its SDK and apps."""

    worker_id: str
    id: str
    capabilities: list[str]
    idle_count: int
    timestamp: int


class LegacyJobEvent(TypedDict):
    """CL Server's `inference/events` message."""

    job_id: str
    event_type: str
    progress: int
    timestamp: int


class QueueState(TypedDict):
    task_type: str
    queued: int
    running: int
    oldest_queued_age_ms: int | None
    timestamp: int


class TaskPaused(TypedDict):
    """Whether a task type is paused: advisory, the database decides (db/paused.py)."""

    task_type: str
    paused: bool
    timestamp: int


class Confirmation(TypedDict):
    """The server's receipt for a result; `sig` is keyed by the claim's lease token."""

    job_id: str
    attempt: int
    status: str
    timestamp: int
    sig: str


class CancelRequest(TypedDict):
    """Stop a running job; `sig` is keyed by the claim's lease token."""

    job_id: str
    attempt: int
    timestamp: int
    sig: str


@dataclass(frozen=True)
class Topics:
    """Topic names for one deployment (root and CL Server prefixes come from Settings)."""

    root: str = "compute"
    legacy_events: str = "inference/events"
    legacy_workers: str = "inference/workers"

    @classmethod
    def for_settings(cls, settings: Settings) -> Topics:
        return cls(settings.mqtt_topic_root, settings.mqtt_topic, settings.capability_topic_prefix)

    def job_available(self, task_type: str) -> str:
        return f"{self.root}/jobs/available/{task_type}"

    def job_event(self, task_type: str, job_id: str) -> str:
        return f"{self.root}/events/{task_type}/{job_id}"

    @property
    def all_job_events(self) -> str:
        return f"{self.root}/events/+/+"

    def worker_status(self, worker_id: str) -> str:
        return f"{self.root}/workers/{worker_id}/status"

    def worker_info(self, worker_id: str) -> str:
        return f"{self.root}/workers/{worker_id}/info"

    def worker_confirm(self, worker_id: str) -> str:
        return f"{self.root}/workers/{worker_id}/confirm"

    def worker_cancel(self, worker_id: str) -> str:
        return f"{self.root}/workers/{worker_id}/cancel"

    @property
    def all_worker_info(self) -> str:
        return f"{self.root}/workers/+/info"

    def queue(self, task_type: str) -> str:
        return f"{self.root}/queues/{task_type}"

    def task_paused(self, task_type: str) -> str:
        return f"{self.root}/tasks/{task_type}/paused"

    @property
    def server_status(self) -> str:
        return f"{self.root}/server/status"

    def legacy_worker(self, worker_id: str) -> str:
        return f"{self.legacy_workers}/{worker_id}"

    def worker_of(self, topic: str) -> str | None:
        """The worker id in `<root>/workers/<id>/<leaf>`, or None for another topic."""
        parts = topic.split("/")
        root_parts = self.root.split("/")
        if len(parts) != len(root_parts) + 3 or parts[: len(root_parts)] != root_parts:
            return None
        if parts[len(root_parts)] != "workers":
            return None
        return parts[len(root_parts) + 1]


def check_segment(value: str, what: str) -> str:
    """Refuse ids that would break a topic (/, +, #, spaces, empty)."""
    if not _SEGMENT.match(value):
        raise ValueError(f"{what} {value!r} may only use letters, digits and _ . : @ - (1-128)")
    return value


def encode(payload: Any) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode()


def event_payload_limit(max_result_bytes: int) -> int:
    """The largest job event payload a server with MAX_RESULT_BYTES = `max_result_bytes` reads."""
    return max(MAX_PAYLOAD_BYTES, max_result_bytes + EVENT_ENVELOPE_BYTES)


def decode_object(raw: bytes, max_bytes: int = MAX_PAYLOAD_BYTES) -> dict[str, Any]:
    if len(raw) > max_bytes:
        raise MalformedMessage(f"payload of {len(raw)} bytes exceeds {max_bytes}")
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise MalformedMessage(f"not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise MalformedMessage("payload is not a JSON object")
    return data


def _field(data: dict[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    value = data.get(name)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise MalformedMessage(f"field {name!r} missing or not {kind}")
    return value


def _optional_int(data: dict[str, Any], name: str) -> int:
    value = data.get(name)
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def parse_job_event(raw: bytes, max_bytes: int = MAX_PAYLOAD_BYTES) -> JobEvent:
    """A worker's job event (topics.md, `<root>/events/<task>/<job_id>`), at most `max_bytes`."""
    data = decode_object(raw, max_bytes)
    try:
        event = EventType(_field(data, "event", str))
    except ValueError:
        raise MalformedMessage(f"unknown event {data.get('event')!r}") from None
    progress = data.get("progress", 0)
    if not isinstance(progress, int) or isinstance(progress, bool) or not 0 <= progress <= 100:
        raise MalformedMessage("field 'progress' must be an integer 0-100")
    output = data.get("task_output")
    if output is not None and not isinstance(output, dict):
        raise MalformedMessage("field 'task_output' must be an object")
    error = data.get("error")
    if error is not None and not isinstance(error, str):
        raise MalformedMessage("field 'error' must be a string")
    retryable = data.get("retryable", False)
    if not isinstance(retryable, bool):
        raise MalformedMessage("field 'retryable' must be a boolean")
    return JobEvent(
        job_id=_field(data, "job_id", str),
        worker_id=_field(data, "worker_id", str),
        event=event,
        progress=progress,
        task_output=output,
        error=error,
        timestamp=_field(data, "timestamp", int),
        attempt=_field(data, "attempt", int),
        seq=_field(data, "seq", int),
        retryable=retryable,
        sig=_field(data, "sig", str),
    )


def job_event_payload(ev: JobEvent, task_type: str) -> JobEventMessage:
    payload = JobEventMessage(
        job_id=ev.job_id,
        task_type=task_type,
        worker_id=ev.worker_id,
        event=ev.event,
        progress=ev.progress,
        timestamp=ev.timestamp,
        attempt=ev.attempt,
        seq=ev.seq,
        sig=ev.sig,
    )
    if ev.retryable:
        payload["retryable"] = True
    if ev.task_output is not None:
        payload["task_output"] = ev.task_output
    if ev.error is not None:
        payload["error"] = ev.error
    return payload


def parse_worker_info(raw: bytes) -> WorkerInfo:
    """A worker's `info` or Last Will. Checks the shape only; the signature is the registry's job."""
    if len(raw) > MAX_INFO_BYTES:
        raise MalformedMessage(f"info of {len(raw)} bytes exceeds {MAX_INFO_BYTES}")
    data = decode_object(raw)
    state = data.get("state", ONLINE)
    if state not in (ONLINE, OFFLINE):
        raise MalformedMessage("field 'state' must be 'online' or 'offline'")
    tasks = _field(data, "tasks", list) if state == ONLINE else data.get("tasks", [])
    if not isinstance(tasks, list) or not all(isinstance(t, str) and _SEGMENT.match(t) for t in tasks):
        raise MalformedMessage("field 'tasks' must be a list of task names")
    if len(tasks) > MAX_TASKS:
        raise MalformedMessage(f"more than {MAX_TASKS} tasks")
    sig = data.get("sig", "")
    session = _field(data, "session", str)
    if not _SEGMENT.match(session):
        raise MalformedMessage("field 'session' must be a short id")
    return WorkerInfo(
        worker_id=_field(data, "worker_id", str),
        session=session,
        state=state,
        tasks=tasks,
        idle=_field(data, "idle", bool) if state == ONLINE else False,
        hostname=str(data.get("hostname", ""))[:255],
        pid=_optional_int(data, "pid"),
        started_at=_optional_int(data, "started_at"),
        timestamp=_field(data, "timestamp", int),
        sig=sig if isinstance(sig, str) else "",
    )


def parse_cancel(raw: bytes) -> CancelRequest:
    data = decode_object(raw)
    return CancelRequest(
        job_id=_field(data, "job_id", str),
        attempt=_field(data, "attempt", int),
        timestamp=_field(data, "timestamp", int),
        sig=_field(data, "sig", str),
    )


def parse_confirmation(raw: bytes) -> Confirmation:
    data = decode_object(raw)
    return Confirmation(
        job_id=_field(data, "job_id", str),
        attempt=_field(data, "attempt", int),
        status=_field(data, "status", str),
        timestamp=_field(data, "timestamp", int),
        sig=_field(data, "sig", str),
    )
