"""The HTTP calls the `compute` command makes, with errors a person (or a script) can act on.

Only the public HTTP API is used, so the command works against any Compute server (or CL
Server's compute service, for the routes it shares) on any machine.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

#: Statuses after which a job never changes (a cancelled job reads `failed`, `cancelled: true`).
FINISHED = frozenset({"completed", "failed"})


class ServerUnreachable(Exception):
    """No HTTP answer from the server (refused, timed out, name unknown)."""


class ApiError(Exception):
    """The server answered with an error status; `detail` is its reason."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"{status}: {detail}")
        self.status = status
        self.detail = detail


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:500] or response.reason_phrase
    detail = body.get("detail", body) if isinstance(body, dict) else body
    if isinstance(detail, list):  # FastAPI's validation errors
        return "; ".join(
            f"{'.'.join(str(p) for p in d.get('loc', ()))}: {d.get('msg')}"
            for d in detail
            if isinstance(d, dict)
        )
    return str(detail)


class ComputeApi:
    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(
            base_url=base_url.rstrip("/"), headers=headers, timeout=timeout, transport=transport
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ComputeApi:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, url, **kwargs)
        except httpx.TransportError as exc:
            raise ServerUnreachable(f"{self._http.base_url}: {exc or type(exc).__name__}") from None
        if response.is_error:
            raise ApiError(response.status_code, _detail(response))
        return response

    # -- jobs --------------------------------------------------------------------------------

    def submit(
        self, task: str, file: Path, fields: dict[str, str], idempotency_key: str | None = None
    ) -> dict[str, Any]:
        """POST /jobs/<task> with the file as `file` and `fields` as form fields."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        with file.open("rb") as body:
            response = self._request(
                "POST", f"/jobs/{task}", data=fields, files={"file": (file.name, body)}, headers=headers
            )
        return response.json()  # type: ignore[no-any-return]

    def job(self, job_id: str) -> dict[str, Any]:
        return self._request("GET", f"/jobs/{job_id}").json()  # type: ignore[no-any-return]

    def jobs(self, **filters: Any) -> dict[str, Any]:
        """One page of GET /jobs; filters with a None value are left out."""
        params = {key: value for key, value in filters.items() if value is not None}
        return self._request("GET", "/jobs", params=params).json()  # type: ignore[no-any-return]

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self._request("POST", f"/jobs/{job_id}/cancel").json()  # type: ignore[no-any-return]

    def follow(self, job_id: str, interval: float = 0.5) -> Iterator[dict[str, Any]]:
        """The job each time it changes, until it is finished (polling GET /jobs/{id})."""
        last: tuple[Any, ...] | None = None
        while True:
            job = self.job(job_id)
            seen = (job["status"], job["progress"], job.get("updated_at"))
            if seen != last:
                last = seen
                yield job
            if job["status"] in FINISHED:
                return
            time.sleep(interval)

    # -- files -------------------------------------------------------------------------------

    def files(self, job_id: str) -> list[dict[str, Any]]:
        return self._request("GET", f"/jobs/{job_id}/files").json()["files"]  # type: ignore[no-any-return]

    def download(self, job_id: str, path: str, target: Path) -> Path:
        """Stream one file of the job into `target` (written whole or not at all)."""
        partial = target.with_name(target.name + ".part")
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            with self._http.stream("GET", f"/jobs/{job_id}/files/{path}") as response:
                if response.is_error:
                    response.read()
                    raise ApiError(response.status_code, _detail(response))
                with partial.open("wb") as out:
                    for chunk in response.iter_bytes():
                        out.write(chunk)
        except httpx.TransportError as exc:
            partial.unlink(missing_ok=True)
            raise ServerUnreachable(f"{self._http.base_url}: {exc or type(exc).__name__}") from None
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        partial.replace(target)
        return target

    # -- workers -----------------------------------------------------------------------------

    def workers(self) -> list[dict[str, Any]]:
        """GET /workers; from a server without it, one row per task from /capabilities."""
        try:
            body = self._request("GET", "/workers").json()
        except ApiError as exc:
            if exc.status not in (404, 405):
                raise
            caps = self._request("GET", "/capabilities").json()["capabilities"]
            return [{"task": task, "idle_workers": count} for task, count in sorted(caps.items())]
        return body["workers"] if isinstance(body, dict) else body  # type: ignore[no-any-return]
