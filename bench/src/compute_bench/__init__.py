"""compute-bench: pickup latency, throughput, progress, idle and polling costs of Compute.

It starts the real `compute-server` and `compute-worker` processes in a temporary
CL_SERVER_DIR and drives them over HTTP, reading the database read-only. It is a distribution
of its own (`compute-bench`, beside the product's `compute`): the no-op task (`bench_noop`) is
a real cl_ml_tools plugin, but registered in-process by the benchmark's launcher
(compute_bench.launch) in the processes the benchmark starts, never by the product's install.
"""

from __future__ import annotations
