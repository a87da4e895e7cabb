"""The benchmark's HTTP client: submits jobs the way CL Server clients do."""

from __future__ import annotations

import io
import json

import aiohttp


def small_png(size: int = 64) -> bytes:
    from PIL import Image

    img = Image.new("RGB", (size, size))
    img.putdata([(x * 4 % 256, y * 4 % 256, (x + y) % 256) for y in range(size) for x in range(size)])
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


class SubmitError(Exception):
    """A submission answered with an error status."""


class Submitter:
    """Keep-alive connections from one aiohttp session.

    aiohttp rather than httpx: the client shares the machine with what it measures, and httpx
    spent about 2.3 ms of CPU per request here (the largest consumer in a no-op burst), aiohttp
    a fraction of that. Every system behind HTTP (Compute, Celery behind FastAPI) gets the same.
    """

    def __init__(self, base_url: str, concurrency: int = 32) -> None:
        self.base_url = base_url.rstrip("/")
        self.concurrency = concurrency
        self._session: aiohttp.ClientSession | None = None
        self.png = small_png()

    @property
    def session(self) -> aiohttp.ClientSession:
        # Made on first use: aiohttp wants a running event loop.
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.concurrency),
                timeout=aiohttp.ClientTimeout(total=120.0),
            )
        return self._session

    async def _post(
        self, task: str, form: dict[str, str] | None = None, file: tuple[str, bytes, str] | None = None
    ) -> str:
        data: aiohttp.FormData | None = None
        if form or file:
            data = aiohttp.FormData()
            for name, value in (form or {}).items():
                data.add_field(name, value)
            if file is not None:
                filename, content, mime = file
                data.add_field("file", content, filename=filename, content_type=mime)
        async with self.session.post(f"{self.base_url}/jobs/{task}", data=data) as r:
            body = await r.read()
            if r.status >= 400:
                raise SubmitError(f"{r.status}: {body[:200]!r}")
            return str(json.loads(body)["job_id"])

    async def noop(self, steps: int = 0, step_ms: float = 0.0) -> str:
        form = {"steps": str(steps), "step_ms": str(step_ms)} if steps else None
        return await self._post("bench_noop", form)

    async def image(self) -> str:
        return await self._post(
            "image_conversion", {"format": "jpg", "quality": "85"}, ("bench.png", self.png, "image/png")
        )

    async def upload(self, task: str, form: dict[str, str], filename: str, content: bytes, mime: str) -> str:
        """POST /jobs/<task> with `content` as the multipart `file`, as CL Server clients send it."""
        return await self._post(task, form, (filename, content, mime))

    async def submit(self, kind: str) -> str:
        return await (self.noop() if kind == "bench_noop" else self.image())

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
