"""The peers: what a user would build instead of Compute, measured at the same points.

* Celery + Redis, no HTTP (`celery_app`): the bench process calls `apply_async` itself;
* Celery behind FastAPI (`web`): an upload endpoint served by uvicorn that stores the file and
  calls `delay`, driven by the same HTTP burst as Compute (compute_bench.client);
* Procrastinate + PostgreSQL, no HTTP (`procrastinate_app`): the bench process defers jobs.

Every peer task stamps `time.time_ns()` on its first line and reports it, and its completion, to
Redis (`stamps`), so pickup is measured from the start of the submit call to the first line of
the task body, as for Compute's `bench_noop`. They live in the `peers` dependency group, never in
the product's dependencies.
"""

from __future__ import annotations
