"""compute-bench --peers with tiny counts: Celery, Celery behind FastAPI and Procrastinate run at
Compute's measurement points and the report prints each figure with its ratio to each peer.

Nothing here judges speed (the ratios are the benchmark's business); it checks the rows exist
and hold numbers. Needs the `peers` dependency group (`uv sync --group peers`), Redis on 6379 (and
PostgreSQL on 5432 for Procrastinate), which .ci/run's machine has; skipped with the reason otherwise.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from numbers import Number
from pathlib import Path
from typing import Any

import pytest

from compute_bench.harness import port_answers
from compute_bench.peers.runner import PEERS
from compute_bench.report import PEER_FIGURES, PEER_TARGETS

pytestmark = [pytest.mark.bench, pytest.mark.timeout(300)]

TINY = "pickup=5,pickup_image=3,burst=40,burst_image=10,warmup=1,concurrency=4"


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, Any]]:
    missing = [name for name in ("celery", "procrastinate") if importlib.util.find_spec(name) is None]
    if missing:
        pytest.skip(f"the peers group is not installed ({', '.join(missing)}): uv sync --group peers")
    if not port_answers("127.0.0.1", 6379):
        pytest.skip("Redis does not answer on 127.0.0.1:6379 (the Celery peers need it)")
    out = tmp_path_factory.mktemp("peers") / "bench.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "compute_bench",
            "--peers",
            "--workers",
            "1",
            "--sections",
            "pickup,throughput",
            "--jobs",
            TINY,
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout, json.loads(Path(out).read_text())


def test_every_peer_measured(run: tuple[str, dict[str, Any]]) -> None:
    _, result = run
    peers = result["peers"]
    expected = set(PEERS) if port_answers("127.0.0.1", 5432) else set(PEERS) - {"procrastinate"}
    for name in expected:
        p = peers[name]
        assert "skipped" not in p, p
        assert p["pickup"]["submit_to_task_start_ms"]["n"] == 5
        assert p["throughput"]["finished"] == p["throughput"]["jobs"] == 40
        assert isinstance(p["throughput"]["jobs_per_s"], float) and p["throughput"]["jobs_per_s"] > 0
    image = peers["fastapi_celery"]["throughput_image"]
    assert image["finished"] == image["jobs"] == 10


def test_report_prints_each_figure_with_its_ratios(run: tuple[str, dict[str, Any]]) -> None:
    stdout, _ = run
    section = stdout.split("8. Peers", 1)[1].split("Targets", 1)[0]
    header = next(line for line in section.splitlines() if "Compute" in line and "ratio to" in line)
    for name in PEERS:
        assert name in header and f"ratio to {name}" in header
    for label, *_ in PEER_FIGURES:
        row = next(line for line in section.splitlines() if line.startswith(label))
        assert any(ch.isdigit() for ch in row[len(label) :]), row


def test_peer_targets_evaluated(run: tuple[str, dict[str, Any]]) -> None:
    _, result = run
    targets = {t["target"]: t for t in result["targets"]}
    for name, *_ in PEER_TARGETS:
        t = targets[f"{name} (ratio)"]
        assert isinstance(t["value"], Number) and t["met"] in (True, False), t


def test_the_no_op_burst_runs_again_on_postgresql(run: tuple[str, dict[str, Any]]) -> None:
    _, result = run
    if not port_answers("127.0.0.1", 5432):
        pytest.skip("PostgreSQL does not answer on 127.0.0.1:5432")
    burst = result["throughput_postgres"]["bench_noop"]
    assert burst["finished"] == burst["jobs"] == 40
    targets = {t["target"]: t for t in result["targets"]}
    ratio = targets["no-op jobs/s on PostgreSQL / on SQLite (same run)"]
    assert isinstance(ratio["value"], Number) and ratio["met"] in (True, False)
