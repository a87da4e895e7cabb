"""Every reply renders as strict JSON, whatever the request held (issue 16, item 6).

`PATCH /jobs/{id}` with `{"priority": NaN}` answered 500: the 422 echoed the NaN, which strict
JSON cannot carry; a lone surrogate (`"\\ud800"`) failed the same way, in UTF-8. Here every
operation of the OpenAPI document gets non-finite numbers, huge numbers, lone surrogates, NUL,
control characters and invalid UTF-8 in each of its parameters, JSON fields and form fields, on
SQLite and PostgreSQL: no reply may be a 5xx, and every JSON reply must parse as strict JSON.
A stored job whose `task_output` holds a NaN renders too.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import pytest

from compute.db.tables import dumps
from tests.support.images import png_bytes
from tests.support.inprocess import Server
from tests.support.jobs import add_job, set_columns

pytestmark = pytest.mark.parametrize("broker", ["amqtt"], indirect=True)

#: Raw JSON literals for JSON bodies: what Python's json module accepts and JSON cannot carry.
JSON_VALUES = [
    "NaN",
    "Infinity",
    "-Infinity",
    "1e400",
    "-1e400",
    '"\\ud800"',
    '"a\\udfffb"',
    '"\\u0000"',
    "123456789012345678901234567890123456789",
    "[NaN, Infinity]",
    '{"\\ud800": NaN}',
]
#: Already percent-encoded text for paths, queries and headers-as-text.
TEXT_VALUES = [
    "NaN",
    "-Infinity",
    "1e400",
    "%ED%A0%80",  # a surrogate in (invalid) UTF-8
    "%FF%FE",
    "%00",
    "%1B%5D52%3Bc%3BAAAA%07",  # an OSC 52 sequence
    "%E2%80%AE",  # right-to-left override
    "9" * 400,
]
#: Raw bytes for form fields.
FORM_VALUES = [b"NaN", b"-Infinity", b"1e400", b"\xed\xa0\x80", b"\xff\xfe", b"\x00", b"9" * 400]

#: Their bodies never end while a job is open: their bad input is tested in test_live_views.
STREAMS = {"/events", "/jobs/{job_id}/events"}


def _strict(text: str) -> Any:
    def refuse(name: str) -> Any:
        raise AssertionError(f"{name} in a reply")

    return json.loads(text, parse_constant=refuse)


async def _check(server: Server, method: str, url: str, **kwargs: Any) -> None:
    response = await server.client.request(method, url, **kwargs)
    assert response.status_code < 500, (method, url, kwargs.get("content"), response.text[:300])
    if response.headers.get("content-type", "").startswith("application/json"):
        _strict(response.text)


def _operations(server: Server) -> list[tuple[str, str, dict[str, Any]]]:
    found = []
    for path, operations in server.app.openapi()["paths"].items():
        if path in STREAMS:
            continue
        for method, operation in operations.items():
            found.append((method.upper(), path, operation))
    return found


def _fill(path: str, job_id: str, override: tuple[str, str] | None = None) -> str:
    """`path` with its parameters set: the seeded job, a real task, or `override` (name, value)."""
    values = {"job_id": job_id, "file_path": "input/x.png", "task_type": "image_conversion"}
    if override is not None:
        values[override[0]] = override[1]
    for name, value in values.items():
        path = path.replace("{" + name + "}", value)
    return path


async def test_hostile_values_in_every_parameter_get_a_reply_that_renders(server: Server) -> None:
    job_id = add_job(server, "image_conversion")
    for method, path, operation in _operations(server):
        params = operation.get("parameters", [])
        for param in params:
            for value in TEXT_VALUES:
                if param["in"] == "path":
                    await _check(server, method, _fill(path, job_id, (param["name"], value)))
                elif param["in"] == "query":
                    await _check(server, method, f"{_fill(path, job_id)}?{param['name']}={value}")
                elif param["in"] == "header":
                    raw = value.encode("latin-1", "replace")
                    await _check(server, method, _fill(path, job_id), headers={param["name"]: raw})
        content = (operation.get("requestBody") or {}).get("content", {})
        if "application/json" in content:
            for literal in JSON_VALUES:
                for body in (f'{{"priority": {literal}}}', literal):
                    await _check(
                        server,
                        method,
                        _fill(path, job_id),
                        content=body,
                        headers={"content-type": "application/json"},
                    )
        for form in ("multipart/form-data", "application/x-www-form-urlencoded"):
            if form in content:
                fields = [
                    name
                    for name in server.app.openapi()["components"]["schemas"]
                    .get(content[form]["schema"].get("$ref", "").rsplit("/", 1)[-1], {})
                    .get("properties", {})
                    if name != "file"
                ]
                for name in fields:
                    for raw in FORM_VALUES:
                        await _form(server, method, _fill(path, job_id), form, name, raw)


async def _form(server: Server, method: str, url: str, form: str, name: str, raw: bytes) -> None:
    if form == "multipart/form-data":
        boundary = "b0undary"
        body = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
            + raw
            + f'\r\n--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="p.png"\r\n'
            f"Content-Type: image/png\r\n\r\n".encode()
            + png_bytes()
            + f"\r\n--{boundary}--\r\n".encode()
        )
        headers = {"content-type": f"multipart/form-data; boundary={boundary}"}
    else:
        body = f"{quote(name)}=".encode() + quote(raw).encode()
        headers = {"content-type": form}
    await _check(server, method, url, content=body, headers=headers)


@pytest.mark.parametrize("literal", ["NaN", "-Infinity", "Infinity", "1e400"])
async def test_a_non_finite_priority_is_a_422_that_says_why(server: Server, literal: str) -> None:
    job_id = add_job(server, "image_conversion")
    response = await server.client.patch(
        f"/jobs/{job_id}", content=f'{{"priority": {literal}}}', headers={"content-type": "application/json"}
    )
    assert response.status_code == 422, response.text
    [error] = _strict(response.text)["detail"]
    assert error["loc"] == ["body", "priority"]
    assert error["input"] in ("NaN", "Infinity", "-Infinity")


async def test_a_stored_non_finite_output_renders(server: Server) -> None:
    """A result holding NaN (Python's json writes it) is shown, not a 500."""
    job_id = add_job(server, "image_conversion")
    set_columns(
        server, job_id, status="completed", task_output=dumps({"score": float("nan"), "name": "a\ud800"})
    )
    response = await server.client.get(f"/jobs/{job_id}")
    assert response.status_code == 200, response.text
    output = _strict(response.text)["task_output"]
    assert output["score"] in (None, "NaN")  # pydantic writes null, the reply class "NaN"
    assert output["name"] == "a\ufffd"
