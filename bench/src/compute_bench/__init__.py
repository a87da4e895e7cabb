"""compute-bench: pickup latency, throughput, progress, idle and polling costs of Compute.

It starts the real `compute-server` and `compute-worker` processes in a temporary
CL_SERVER_DIR and drives them over HTTP, reading the database read-only. The no-op task
(`bench_noop`) is a real cl_ml_tools plugin, registered in pyproject.toml.
"""

from __future__ import annotations
