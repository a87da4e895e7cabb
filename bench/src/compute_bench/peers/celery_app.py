"""The Celery peer: a Redis broker and result backend, a no-op task and the same image conversion
Compute's `image_conversion` runs (compute.plugins.image_conversion.algorithm.convert).

`celery -A compute_bench.peers.celery_app worker` runs it; the queue is the run's namespace.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from celery import Celery

from compute_bench.peers import stamps

app = Celery("compute_bench_peers", broker=stamps.redis_url(), backend=stamps.redis_url())
app.conf.update(
    task_default_queue=stamps.namespace(),
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    result_expires=600,
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
)


@app.task(name="bench_noop")  # type: ignore[untyped-decorator]
def noop(job: str) -> dict[str, Any]:
    started_ns = time.time_ns()
    stamps.done(job, started_ns)
    return {"status": "ok", "started_ns": started_ns}


@app.task(name="image_conversion")  # type: ignore[untyped-decorator]
def image_conversion(job: str, source: str, fmt: str, quality: int) -> dict[str, Any]:
    started_ns = time.time_ns()
    from compute.plugins.image_conversion.algorithm import convert, extension

    target = Path(source).with_suffix("." + extension(fmt))
    convert(Path(source), target, fmt, quality)
    stamps.done(job, started_ns)
    return {"output_path": str(target), "format": fmt, "quality": quality}
