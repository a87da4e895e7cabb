"""Celery behind FastAPI: the stack a user would build instead of Compute.

Served by uvicorn (`uvicorn compute_bench.peers.web:app`), with the routes the benchmark's
Submitter posts to: `/jobs/bench_noop` (form fields, no file) and `/jobs/image_conversion` (the
upload is stored under COMPUTE_BENCH_PEER_DIR, then `delay`).
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Annotated

from fastapi import FastAPI, Form, UploadFile

from compute_bench.peers.celery_app import image_conversion, noop

DIR_ENV = "COMPUTE_BENCH_PEER_DIR"
app = FastAPI()
_uploads = Path(os.environ.get(DIR_ENV, "/tmp/compute-bench-peer"))
_uploads.mkdir(parents=True, exist_ok=True)


@app.get("/")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@app.post("/jobs/bench_noop")
async def submit_noop(
    steps: Annotated[int, Form()] = 0, step_ms: Annotated[float, Form()] = 0.0
) -> dict[str, str]:
    job = str(uuid.uuid4())
    noop.apply_async((job,), task_id=job)
    return {"job_id": job, "status": "queued"}


@app.post("/jobs/image_conversion")
async def submit_image(
    file: UploadFile, format: Annotated[str, Form()] = "jpg", quality: Annotated[int, Form()] = 85
) -> dict[str, str]:
    job = str(uuid.uuid4())
    path = _uploads / f"{job}{Path(file.filename or 'upload').suffix}"
    path.write_bytes(await file.read())
    image_conversion.apply_async((job, str(path), format, quality), task_id=job)
    return {"job_id": job, "status": "queued"}
