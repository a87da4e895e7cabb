"""The AsyncAPI document: valid AsyncAPI 3.0, equal to topics.md, and strict about payloads."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from compute import asyncapi
from compute.topics import Topics
from tests.support.asyncapi_payloads import PayloadChecker

ROOT = Path(__file__).resolve().parents[2]
#: The official AsyncAPI 3.0.0 JSON Schema (npm @asyncapi/specs 6.11.1, Apache-2.0), minified.
SPEC = ROOT / "tests" / "data" / "asyncapi-3.0.0.schema.json"
TOPICS_MD = (ROOT / "topics.md").read_text(encoding="utf-8")
DOC = asyncapi.document()
#: A markdown table cell: anything but an unescaped `|`.
CELL = r"(?:[^|\\]|\\.)+"


def _address(markdown_topic: str) -> str:
    return re.sub(r"<(\w+)>", r"{\1}", markdown_topic)


def _channels_by_address() -> dict[str, dict[str, Any]]:
    return {c["address"]: c for c in DOC["channels"].values()}


def _messages(channel: dict[str, Any]) -> list[dict[str, Any]]:
    names = [ref["$ref"].rsplit("/", 1)[-1] for ref in channel["messages"].values()]
    return [DOC["components"]["messages"][n] for n in names]


def _schema(message: dict[str, Any]) -> dict[str, Any]:
    return DOC["components"]["schemas"][message["payload"]["$ref"].rsplit("/", 1)[-1]]  # type: ignore[no-any-return]


def _sections() -> dict[str, str]:
    """topics.md's `## \\`topic\\`` sections: address -> text."""
    parts = re.split(r"^## `([^`]+)`.*$", TOPICS_MD, flags=re.M)
    return {_address(parts[i]): parts[i + 1] for i in range(1, len(parts), 2)}


def test_document_is_valid_asyncapi_3() -> None:
    validator = jsonschema.Draft7Validator(json.loads(SPEC.read_text()))
    assert list(validator.iter_errors(DOC)) == []
    broken = copy.deepcopy(DOC)
    broken["operations"]["serverSendsJobAvailable"]["action"] = "publish"  # AsyncAPI 2's word
    assert list(validator.iter_errors(broken)), "the spec schema should refuse a wrong action"


def test_topic_table_equals_the_channels() -> None:
    rows = re.findall(r"^\| `([^`]+)` \| [^|]+ \| (\d) \| (yes|no) \|", TOPICS_MD, flags=re.M)
    table = {_address(topic): (int(qos), retained == "yes") for topic, qos, retained in rows}
    channels = {}
    for key, channel in DOC["channels"].items():
        binding = DOC["operations"][
            next(k for k, op in DOC["operations"].items() if op["channel"]["$ref"] == f"#/channels/{key}")
        ]["bindings"]["mqtt"]
        channels[channel["address"]] = (binding["qos"], binding["retain"])
    assert table == channels


def test_every_section_documents_its_channel_field_for_field() -> None:
    sections = _sections()
    channels = _channels_by_address()
    assert set(sections) == set(channels)
    for address, text in sections.items():
        documented = set(re.findall(rf"^\| `(\w+)` \| {CELL} \| {CELL} \|$", text, flags=re.M))
        typed = {
            name
            for m in _messages(channels[address])
            if m["contentType"] == asyncapi.JSON
            for name in _schema(m)["properties"]
        }
        assert documented == typed, address


def test_every_example_in_topics_md_validates() -> None:
    channels = _channels_by_address()
    checker = PayloadChecker()
    examples = 0
    for address, text in _sections().items():
        for fence, body in re.findall(r"^```(\w*)\n(.*?)^```", text, flags=re.M | re.S):
            if fence not in ("json", ""):
                continue
            topic = (
                address.replace("{task_type}", "image_conversion")
                .replace("{job_id}", "0b6c5e0e")
                .replace("{worker_id}", "worker-a")
            )
            assert checker.problem(Topics(), topic, body.strip()) is None, (address, body)
            assert address in channels
            examples += 1
    assert examples >= 10


def test_required_fields_and_types_are_enforced() -> None:
    checker = PayloadChecker()
    topic = Topics().job_available("hash")
    good = {"job_id": "j", "task_type": "hash", "priority": 5, "timestamp": 1}
    assert checker.problem(Topics(), topic, json.dumps(good)) is None
    for bad in (
        {k: v for k, v in good.items() if k != "priority"},
        {**good, "priority": "5"},
        {**good, "undocumented": 1},
    ):
        assert checker.problem(Topics(), topic, json.dumps(bad)) is not None, bad
    event = Topics().job_event("hash", "j")
    payload = {
        "job_id": "j",
        "task_type": "hash",
        "worker_id": "w",
        "event": "exploded",
        "progress": 1,
        "timestamp": 1,
        "attempt": 1,
        "seq": 1,
        "sig": "x",
    }
    assert "exploded" in (checker.problem(Topics(), event, json.dumps(payload)) or "")
    assert checker.problem(Topics(), Topics().worker_status("w"), "maybe") is not None
    assert checker.problem(Topics(), Topics().worker_info("w"), b"") is None  # cleared
    assert checker.problem(Topics(), Topics().job_available("hash"), b"") is not None
    assert "no channel" in (checker.problem(Topics(), "compute/elsewhere", b"{}") or "")


@pytest.mark.parametrize("root", ["compute", "site-a/compute"])
def test_addresses_follow_the_deployments_topic_names(root: str) -> None:
    topics = Topics(root=root, legacy_events="cl/inference/events", legacy_workers="cl/inference/workers")
    doc = asyncapi.document(topics, broker="mqtt.example:8883", mqtt_version=5)
    addresses = {c["address"] for c in doc["channels"].values()}
    assert f"{root}/jobs/available/{{task_type}}" in addresses
    assert {"cl/inference/events", "cl/inference/workers/{worker_id}"} <= addresses
    assert doc["servers"]["broker"] == {
        "host": "mqtt.example:8883",
        "protocol": "mqtt",
        "protocolVersion": "5",
    }


def test_cl_server_contract_topics_are_unchanged() -> None:
    """CL Server's SDK reads these exactly: names, fields and retain flags must not drift."""
    channels = _channels_by_address()
    events = _schema(_messages(channels["inference/events"])[0])
    assert set(events["properties"]) == {"job_id", "event_type", "progress", "timestamp"}
    capability = _schema(_messages(channels["inference/workers/{worker_id}"])[0])
    assert set(capability["properties"]) == {"worker_id", "id", "capabilities", "idle_count", "timestamp"}
