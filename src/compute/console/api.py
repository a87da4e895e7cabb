"""The HTTP calls the `compute` command makes, with errors a person (or a script) can act on.

Only the public HTTP API is used, so the command works against any Compute server (or CL
Server's compute service, for the routes it shares) on any machine. That server may be hostile,
so an answer is read as the size it is allowed to be, never as the size it claims: a JSON
document larger than `max_document_bytes` (or slower than the timeout, all of it) is refused
before it is parsed, nothing compressed is accepted (the command asks for none; a decompressed
bomb would dodge the count), and its shape is checked (`answers.py`) before anything reads it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import IO, Any, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ValidationError

from compute.console.answers import Capabilities, Created, FileList, Job, JobPage, WorkerList

#: The largest JSON document the command reads by default (`--max-document-mb`): a page of 200
#: jobs with their results is far below it. Parsed, 8 MiB of JSON made to cost the most
#: (`[{},{},...]`) peaks at 266 MB of memory (325 MB printed back with --json); a 100 MB job,
#: which used to take 450 MB, is refused at 8 MiB read.
MAX_DOCUMENT_MB = 8
#: What is read of an error answer: its reason is shown, cut to a few lines.
MAX_ERROR_BYTES = 64 * 1024

#: Statuses after which a job never changes (a cancelled job reads `failed`, `cancelled: true`).
FINISHED = frozenset({"completed", "failed"})

Model = TypeVar("Model", bound=BaseModel)


class ServerUnreachable(Exception):
    """No HTTP answer from the server (refused, timed out, name unknown).

    Outside `compute.errors` on purpose: the command imports nothing of the package but itself
    (INTERNALS, Modules); `errors.ServerUnavailable` is compute-worker's own start-up check.
    """


class ApiError(Exception):
    """The server answered with an error status; `detail` is its reason."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"{status}: {detail}")
        self.status = status
        self.detail = detail


class BadAnswer(Exception):
    """The server's answer cannot be used: too large, too slow, not JSON, or not the API's shape."""


def _detail(body: bytes, response: httpx.Response) -> str:
    """The reason an error answer gives: FastAPI's `detail`, else the start of its text."""
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        return body[:500].decode("utf-8", "replace") or response.reason_phrase
    detail = document.get("detail", document) if isinstance(document, dict) else document
    if isinstance(detail, list):  # FastAPI's validation errors
        return "; ".join(
            f"{'.'.join(str(p) for p in loc)}: {d.get('msg')}"
            for d in detail
            if isinstance(d, dict) and isinstance(loc := d.get("loc", ()), list | tuple)
        )
    return str(detail)[:2000]


def _problems(exc: ValidationError) -> str:
    """Which fields were wrong, without the values the server sent (they are shown nowhere)."""
    return "; ".join(
        f"{'.'.join(str(p) for p in error['loc']) or 'document'}: {error['msg']}"
        for error in exc.errors(include_url=False, include_input=False, include_context=False)[:5]
    )


class ComputeApi:
    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
        max_document_bytes: int = MAX_DOCUMENT_MB * 1024 * 1024,
    ) -> None:
        # identity: a compressed answer could inflate past any limit counted on what arrives.
        headers = {"Accept-Encoding": "identity"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._http = httpx.Client(
            base_url=base_url.rstrip("/"), headers=headers, timeout=timeout, transport=transport
        )
        self._timeout = timeout
        self._max_document = max_document_bytes
        #: The server's clock when it sent its last answer (its Date header, else ours), in ms since
        #: the epoch: ages are told on the clock that wrote the timestamps.
        self.server_time_ms = int(time.time() * 1000)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ComputeApi:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _unreachable(self, exc: httpx.TransportError) -> ServerUnreachable:
        return ServerUnreachable(f"{self._http.base_url}: {exc or type(exc).__name__}")

    def _read(self, response: httpx.Response, limit: int) -> tuple[bytes, bool]:
        """At most `limit` bytes of the body (and whether there was more), within the timeout."""
        _refuse_encoded(response)
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            return b"", True
        deadline = time.monotonic() + self._timeout
        chunks: list[bytes] = []
        size = 0
        for chunk in response.iter_raw():
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                return b"".join(chunks)[:limit], True
            if time.monotonic() > deadline:
                raise BadAnswer(f"the server took more than {self._timeout:g} s to send its answer")
        return b"".join(chunks), False

    def _call(self, model: type[Model], method: str, url: str, **kwargs: Any) -> tuple[Model, Any]:
        """One request whose answer is a JSON document of `model`'s shape: (checked, as sent)."""
        try:
            with self._http.stream(method, url, **kwargs) as response:
                _refuse_redirect(response)
                if response.is_error:
                    body, _more = self._read(response, MAX_ERROR_BYTES)
                    raise ApiError(response.status_code, _detail(body, response))
                body, more = self._read(response, self._max_document)
                self.server_time_ms = _date_ms(response)
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from None
        if more:
            mb = self._max_document / (1024 * 1024)
            raise BadAnswer(
                f"the server's answer to {method} {url} is larger than {mb:g} MB, the most this command"
                " reads (--max-document-mb)"
            )
        try:
            document = json.loads(body)
        except (ValueError, RecursionError):
            raise BadAnswer(f"the server's answer to {method} {url} is not JSON") from None
        try:
            return model.model_validate(document), document
        except ValidationError as exc:
            raise BadAnswer(
                f"the server's answer to {method} {url} is not what the API describes: {_problems(exc)}"
            ) from None

    # -- jobs --------------------------------------------------------------------------------

    def submit(
        self, task: str, file: Path, fields: dict[str, str], idempotency_key: str | None = None
    ) -> tuple[Created, Any]:
        """POST /jobs/<task> with the file as `file` and `fields` as form fields."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        with file.open("rb") as body:
            return self._call(
                Created,
                "POST",
                f"/jobs/{_segment(task)}",
                data=fields,
                files={"file": (file.name, body)},
                headers=headers,
            )

    def job(self, job_id: str) -> tuple[Job, Any]:
        return self._call(Job, "GET", f"/jobs/{_segment(job_id)}")

    def jobs(self, **filters: Any) -> tuple[JobPage, Any]:
        """One page of GET /jobs; filters with a None value are left out."""
        params = {key: value for key, value in filters.items() if value is not None}
        return self._call(JobPage, "GET", "/jobs", params=params)

    def cancel(self, job_id: str) -> tuple[Job, Any]:
        return self._call(Job, "POST", f"/jobs/{_segment(job_id)}/cancel")

    def follow(self, job_id: str, interval: float = 0.5) -> Iterator[tuple[Job, Any]]:
        """The job each time it changes, until it is finished (polling GET /jobs/{id})."""
        last: tuple[Any, ...] | None = None
        while True:
            job, document = self.job(job_id)
            seen = (job.status, job.progress, job.updated_at)
            if seen != last:
                last = seen
                yield job, document
            if job.status in FINISHED:
                return
            time.sleep(interval)

    # -- files -------------------------------------------------------------------------------

    def files(self, job_id: str) -> FileList:
        return self._call(FileList, "GET", f"/jobs/{_segment(job_id)}/files")[0]

    def download(self, job_id: str, path: str, into: IO[bytes]) -> None:
        """Stream one file of the job into `into`, as it arrives (files have no size limit)."""
        url = f"/jobs/{_segment(job_id)}/files/{'/'.join(_segment(part) for part in path.split('/'))}"
        try:
            with self._http.stream("GET", url) as response:
                _refuse_redirect(response)
                if response.is_error:
                    body, _more = self._read(response, MAX_ERROR_BYTES)
                    raise ApiError(response.status_code, _detail(body, response))
                _refuse_encoded(response)
                for chunk in response.iter_raw():
                    into.write(chunk)
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from None

    # -- workers -----------------------------------------------------------------------------

    def workers(self) -> tuple[WorkerList | Capabilities, Any]:
        """GET /workers; from a server without it (CL Server's), GET /capabilities."""
        try:
            return self._call(WorkerList, "GET", "/workers")
        except ApiError as exc:
            if exc.status not in (404, 405):
                raise
        return self._call(Capabilities, "GET", "/capabilities")


def _segment(value: str) -> str:
    """`value` as one path segment: a `/`, `?` or `..` in a job id cannot reach another route."""
    if value in (".", ".."):  # unreserved characters, yet a client would resolve them as dot segments
        return value.replace(".", "%2E")
    return quote(value, safe="")


def _date_ms(response: httpx.Response) -> int:
    try:
        return int(parsedate_to_datetime(response.headers["date"]).timestamp() * 1000)
    except (KeyError, TypeError, ValueError, IndexError, OverflowError):
        return int(time.time() * 1000)


def _refuse_redirect(response: httpx.Response) -> None:
    """Redirects are not followed: the token would go wherever the server points."""
    if response.is_redirect:
        where = response.headers.get("location", "")[:200]
        raise BadAnswer(f"the server redirects to {where!r}; give that address as --server if you trust it")


def _refuse_encoded(response: httpx.Response) -> None:
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise BadAnswer(f"the server sent a compressed answer ({encoding[:40]!r}); the command asks for none")
