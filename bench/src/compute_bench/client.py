"""The benchmark's HTTP client: submits jobs the way CL Server clients do."""

from __future__ import annotations

import io

import httpx


def small_png(size: int = 64) -> bytes:
    from PIL import Image

    img = Image.new("RGB", (size, size))
    img.putdata([(x * 4 % 256, y * 4 % 256, (x + y) % 256) for y in range(size) for x in range(size)])
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


class Submitter:
    def __init__(self, base_url: str, concurrency: int = 32) -> None:
        self.client = httpx.AsyncClient(
            base_url=base_url, timeout=120.0,
            limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency))
        self.png = small_png()

    async def noop(self, steps: int = 0, step_ms: float = 0.0) -> str:
        data = {"steps": str(steps), "step_ms": str(step_ms)} if steps else None
        r = await self.client.post("/jobs/bench_noop", data=data)
        r.raise_for_status()
        return str(r.json()["job_id"])

    async def image(self) -> str:
        r = await self.client.post("/jobs/image_conversion", data={"format": "jpg", "quality": "85"},
                                   files={"file": ("bench.png", self.png, "image/png")})
        r.raise_for_status()
        return str(r.json()["job_id"])

    async def upload(self, task: str, form: dict[str, str], filename: str, content: bytes, mime: str) -> str:
        """POST /jobs/<task> with `content` as the multipart `file`, as CL Server clients send it."""
        r = await self.client.post(f"/jobs/{task}", data=form, files={"file": (filename, content, mime)})
        r.raise_for_status()
        return str(r.json()["job_id"])

    async def submit(self, kind: str) -> str:
        return await (self.noop() if kind == "bench_noop" else self.image())

    async def aclose(self) -> None:
        await self.client.aclose()
