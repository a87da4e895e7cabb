"""The old home of the tests' no-op plugin: it is the benchmark's `bench_noop` now
(compute_bench.noop, which the fault cluster's launcher registers). Kept so tests written
against the old names still import; use compute_bench.noop."""

from __future__ import annotations

from compute_bench.noop import TASK_TYPE, create_router
from compute_bench.noop import BenchNoopTask as NoopTask

__all__ = ["TASK_TYPE", "NoopTask", "create_router"]
