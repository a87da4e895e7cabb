"""Every payload the system publishes, validated against the AsyncAPI document.

`checking_payloads` (behind the `published_payloads_follow_asyncapi` fixture, autouse in the
integration and plugin tiers) wraps `MqttBus.publish` and the Last Wills given to `MqttBus`:
each topic must belong to a channel of the document built for that bus's topic names, and its
payload must validate against one of the channel's messages. Anything that does not fails the
test at teardown, naming the topic and the payload. The tests publish their junk with their own
probe client, never through MqttBus, so everything seen here is the product's.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator
from typing import Any

import jsonschema
import pytest

from compute import asyncapi
from compute.bus.mqtt import MqttBus
from compute.topics import Topics


class PayloadChecker:
    def __init__(self) -> None:
        self.failures: list[str] = []
        self.checked = 0
        self._channels: dict[Topics, list[tuple[re.Pattern[str], list[dict[str, Any]]]]] = {}

    def _compiled(self, topics: Topics) -> list[tuple[re.Pattern[str], list[dict[str, Any]]]]:
        if topics not in self._channels:
            doc = asyncapi.document(topics)
            schemas = doc["components"]["schemas"]
            compiled = []
            for channel in doc["channels"].values():
                pattern = re.sub(r"\\{\w+\\}", "[^/]+", re.escape(channel["address"]))
                messages = []
                for ref in channel["messages"].values():
                    message = doc["components"]["messages"][ref["$ref"].rsplit("/", 1)[-1]]
                    schema = schemas[message["payload"]["$ref"].rsplit("/", 1)[-1]]
                    messages.append(
                        {"name": message["name"], "contentType": message["contentType"], "schema": schema}
                    )
                compiled.append((re.compile(f"^{pattern}$"), messages))
            self._channels[topics] = compiled
        return self._channels[topics]

    def problem(self, topics: Topics, topic: str, payload: bytes | str) -> str | None:
        """Why this publish does not follow the document, or None when it does."""
        self.checked += 1
        raw = payload.encode() if isinstance(payload, str) else payload
        for pattern, messages in self._compiled(topics):
            if pattern.match(topic):
                reasons = [f"{m['name']}: {why}" for m in messages if (why := _mismatch(m, raw)) is not None]
                if len(reasons) < len(messages):
                    return None
                return f"{topic} {raw[:300]!r} matches no message: {'; '.join(reasons)}"
        return f"{topic} is on no channel of the AsyncAPI document"

    def check(self, topics: Topics, topic: str, payload: bytes | str) -> None:
        why = self.problem(topics, topic, payload)
        if why is not None:
            self.failures.append(why)


def _mismatch(message: dict[str, Any], raw: bytes) -> str | None:
    try:
        value = json.loads(raw) if message["contentType"] == asyncapi.JSON else raw.decode()
    except ValueError as exc:
        return f"not {message['contentType']}: {exc}"
    error = jsonschema.exceptions.best_match(jsonschema.Draft7Validator(message["schema"]).iter_errors(value))
    return None if error is None else error.message[:200]


@contextlib.contextmanager
def checking_payloads() -> Iterator[PayloadChecker]:
    """Check what MqttBus publishes while this lasts; fail the test at the end if anything was off."""
    checker = PayloadChecker()
    publish, init = MqttBus.publish, MqttBus.__init__

    def checked_publish(
        self: MqttBus, topic: str, payload: bytes | str, qos: int = 0, retain: bool = False
    ) -> bool:
        checker.check(Topics.for_settings(self.settings), topic, payload)
        return publish(self, topic, payload, qos, retain)

    def checked_init(self: MqttBus, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        will = kwargs.get("will")
        if will is not None:
            checker.check(Topics.for_settings(self.settings), will[0], will[1])

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(MqttBus, "publish", checked_publish)
        patch.setattr(MqttBus, "__init__", checked_init)
        yield checker
    if checker.failures:
        pytest.fail(
            "published payloads that do not follow the AsyncAPI document:\n"
            + "\n".join(checker.failures[:20]),
            pytrace=False,
        )
