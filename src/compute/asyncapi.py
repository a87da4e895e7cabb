"""The AsyncAPI 3.0 document of every topic, generated from the payload types in topics.py.

topics.md says in prose what each topic is for; this is its machine-readable twin, served at
`GET /asyncapi.json` for AsyncAPI-aware tools. `CHANNELS` names, per topic, the `Topics` method
that builds its address, the payload types, who sends and receives it, QoS and retain; the
JSON Schemas come from the `TypedDict`s themselves (`schema_of`), so a field added to a payload
type shows up here, and the tests keep both equal to topics.md and validate every payload the
system publishes against this document.
"""

from __future__ import annotations

import enum
import re
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from compute import __version__
from compute.topics import (
    CancelRequest,
    Confirmation,
    JobAvailable,
    JobEventMessage,
    LegacyCapability,
    LegacyJobEvent,
    Presence,
    QueueState,
    TaskPaused,
    Topics,
    WorkerInfo,
    WorkerWill,
)

ASYNCAPI_VERSION = "3.0.0"
MQTT_BINDING_VERSION = "0.2.0"
JSON, TEXT = "application/json", "text/plain"

#: An empty retained payload: the topic is cleared (the worker is gone).
Cleared = Literal[""]

_PARAMETERS = {
    "task_type": "A task type (a plugin's name, e.g. image_conversion).",
    "job_id": "A job's id.",
    "worker_id": "A worker's id (WORKER_ID).",
}


@dataclass(frozen=True)
class Message:
    name: str
    payload: Any  # a TypedDict, or a Literal for plain text
    summary: str
    content_type: str = JSON


@dataclass(frozen=True)
class Channel:
    key: str
    address: Callable[[Topics], str]
    messages: tuple[Message, ...]
    sender: str
    receivers: tuple[str, ...]
    qos: int
    retained: bool
    summary: str


_CLEARED = Message("Cleared", Cleared, "Empty retained payload: the topic is cleared.", TEXT)
_PRESENCE = Message("Presence", Presence, "Plain text `online` or `offline`.", TEXT)

#: Every topic, in topics.md's order. Senders and receivers are Compute's own parts; dashboards
#: and CL Server clients read whatever they like.
CHANNELS: tuple[Channel, ...] = (
    Channel(
        "jobAvailable",
        lambda t: t.job_available("{task_type}"),
        (Message("JobAvailable", JobAvailable, "A hint: a job of this type waits."),),
        "server",
        ("worker",),
        1,
        False,
        "A job was added, requeued or rescued; workers claim from the database.",
    ),
    Channel(
        "jobEvent",
        lambda t: t.job_event("{task_type}", "{job_id}"),
        (Message("JobEvent", JobEventMessage, "A signed event about the worker's claim."),),
        "worker",
        ("server",),
        1,
        False,
        "What a worker reports about a job it claimed.",
    ),
    Channel(
        "workerConfirm",
        lambda t: t.worker_confirm("{worker_id}"),
        (Message("Confirmation", Confirmation, "The server's signed receipt for a result."),),
        "server",
        ("worker",),
        1,
        False,
        "A terminal event is safe in the database: the worker may forget it.",
    ),
    Channel(
        "workerCancel",
        lambda t: t.worker_cancel("{worker_id}"),
        (Message("CancelRequest", CancelRequest, "Stop a running job (signed)."),),
        "server",
        ("worker",),
        1,
        False,
        "A running job was cancelled.",
    ),
    Channel(
        "workerStatus",
        lambda t: t.worker_status("{worker_id}"),
        (_PRESENCE, _CLEARED),
        "worker",
        (),
        1,
        True,
        "A worker's availability for dashboards (the presence connection's Last Will); cleared "
        "by the server when the worker is forgotten.",
    ),
    Channel(
        "workerInfo",
        lambda t: t.worker_info("{worker_id}"),
        (
            Message("WorkerInfo", WorkerInfo, "A live worker, signed with its session's secret."),
            Message("WorkerWill", WorkerWill, "The main connection's Last Will: the session is gone."),
            _CLEARED,
        ),
        "worker",
        ("server",),
        1,
        True,
        "Retained description of a live worker; the server believes what the database confirms.",
    ),
    Channel(
        "queueState",
        lambda t: t.queue("{task_type}"),
        (Message("QueueState", QueueState, "Queued and running jobs of a task type."),),
        "server",
        (),
        1,
        True,
        "Retained queue summary per task type.",
    ),
    Channel(
        "taskPaused",
        lambda t: t.task_paused("{task_type}"),
        (Message("TaskPaused", TaskPaused, "Whether the task type is paused (advisory)."),),
        "server",
        (),
        1,
        True,
        "A task type was paused or resumed; the database decides, workers do not read this.",
    ),
    Channel(
        "serverStatus",
        lambda t: t.server_status,
        (_PRESENCE,),
        "server",
        ("server",),
        1,
        True,
        "The servers' availability: online while any of them is connected (each one's Last Will "
        "says offline; another puts online back).",
    ),
    Channel(
        "legacyEvents",
        lambda t: t.legacy_events,
        (Message("LegacyJobEvent", LegacyJobEvent, "CL Server's job event."),),
        "server",
        (),
        1,
        False,
        "CL Server's job events, after each change is persisted (a worker that wrote its "
        "result itself publishes it too).",
    ),
    Channel(
        "legacyWorker",
        lambda t: t.legacy_worker("{worker_id}"),
        (
            Message("LegacyCapability", LegacyCapability, "CL Server's worker capability (advisory)."),
            _CLEARED,
        ),
        "worker",
        (),
        1,
        True,
        "CL Server's retained worker capability; cleared when the worker is gone.",
    ),
)


def schema_of(tp: Any) -> dict[str, Any]:
    """JSON Schema (draft 7, which AsyncAPI schemas extend) of a payload type annotation."""
    if typing.is_typeddict(tp):
        hints = typing.get_type_hints(tp)
        return {
            "type": "object",
            "properties": {name: schema_of(hint) for name, hint in hints.items()},
            "required": [name for name in hints if name in tp.__required_keys__],
            "additionalProperties": False,
        }
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return {"type": "string", "enum": list(args)}
    if origin in (typing.Union, types.UnionType):
        if type(None) in args and len(args) == 2:
            inner = schema_of(next(a for a in args if a is not type(None)))
            return {**inner, "type": [inner["type"], "null"]}
        return {"anyOf": [schema_of(a) for a in args]}
    if origin is list:
        return {"type": "array", "items": schema_of(args[0])}
    if origin is dict or tp is dict:
        return {"type": "object"}
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return {"type": "string", "enum": [member.value for member in tp]}
    simple = {str: "string", bool: "boolean", int: "integer", float: "number"}
    if tp in simple:
        return {"type": simple[tp]}
    raise TypeError(f"no JSON Schema for payload annotation {tp!r}")


def _operation(channel: Channel, who: str, action: str) -> dict[str, Any]:
    verb = "sends" if action == "send" else "receives"
    return {
        "action": action,
        "channel": {"$ref": f"#/channels/{channel.key}"},
        "summary": f"The {who} {verb}: {channel.summary}",
        "messages": [{"$ref": f"#/channels/{channel.key}/messages/{m.name}"} for m in channel.messages],
        "bindings": {
            "mqtt": {"qos": channel.qos, "retain": channel.retained, "bindingVersion": MQTT_BINDING_VERSION}
        },
    }


def document(
    topics: Topics | None = None, broker: str = "localhost:1883", mqtt_version: int = 4
) -> dict[str, Any]:
    """The AsyncAPI document for one deployment's topic names (topics.md's defaults when None)."""
    topics = topics or Topics()
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    schemas: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    for channel in CHANNELS:
        address = channel.address(topics)
        params = re.findall(r"{(\w+)}", address)
        channels[channel.key] = {
            "address": address,
            "summary": channel.summary,
            "messages": {m.name: {"$ref": f"#/components/messages/{m.name}"} for m in channel.messages},
            **({"parameters": {p: {"description": _PARAMETERS[p]} for p in params}} if params else {}),
        }
        for m in channel.messages:
            schemas[m.name] = schema_of(m.payload)
            messages[m.name] = {
                "name": m.name,
                "summary": m.summary,
                "contentType": m.content_type,
                "payload": {"$ref": f"#/components/schemas/{m.name}"},
            }
        name = channel.key[0].upper() + channel.key[1:]
        operations[f"{channel.sender}Sends{name}"] = _operation(channel, channel.sender, "send")
        for receiver in channel.receivers:
            operations[f"{receiver}Receives{name}"] = _operation(channel, receiver, "receive")
    return {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {
            "title": "Compute",
            "version": __version__,
            "description": "Every MQTT topic Compute's server and workers publish or read "
            "(topics.md is the prose). Timestamps are milliseconds since the Unix epoch.",
        },
        "defaultContentType": JSON,
        "servers": {
            "broker": {
                "host": broker,
                "protocol": "mqtt",
                "protocolVersion": "5" if mqtt_version == 5 else "3.1.1",
            }
        },
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages, "schemas": schemas},
    }
