"""compute-bench --quick: every section runs against real processes and reports numbers.

Nothing here judges speed: the targets are the benchmark's business, not the test's.
"""

from __future__ import annotations

import json
import subprocess
import sys
from numbers import Number
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.bench, pytest.mark.timeout(600)]


def _number(value: Any) -> bool:
    return isinstance(value, Number) and not isinstance(value, bool)


def _dist(d: dict[str, Any]) -> None:
    assert d["n"] > 0
    for key in ("p50", "p90", "p99", "max"):
        assert _number(d[key]), (key, d)


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    proc = subprocess.run([sys.executable, "-m", "compute_bench", "--quick", "--json", str(out)],
                          capture_output=True, text=True, timeout=540, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Targets" in proc.stdout
    data: dict[str, Any] = json.loads(Path(out).read_text())
    return data


def test_pickup(result: dict[str, Any]) -> None:
    for kind in ("bench_noop", "image_conversion"):
        p = result["pickup"][kind]
        assert p["completed"] == p["jobs"] > 0
        for key in ("submit_to_task_start_ms", "submit_to_started_event_ms", "created_to_claim_ms",
                    "submit_call_ms", "submit_to_done_ms"):
            _dist(p[key])


def test_throughput(result: dict[str, Any]) -> None:
    for kind in ("bench_noop", "image_conversion"):
        t = result["throughput"][kind]
        assert t["finished"] == t["jobs"] > 0
        assert t["failed"] == 0 and t["submit_errors"] == 0
        assert _number(t["jobs_per_s"]) and _number(t["submit_per_s"])
        assert t["jobs_per_s"] > 0


def test_progress(result: dict[str, Any]) -> None:
    variants = {v["label"]: v for v in result["progress"]["variants"]}
    assert len(variants) == 3
    for v in variants.values():
        _dist(v["task_ms"])
        _dist(v["submit_to_done_ms"])
    with_progress = [v for v in variants.values() if v["steps"]]
    for v in with_progress:
        _dist(v["db_updates_per_job"])
        assert v["db_updates_per_job"]["max"] >= 1
        _dist(v["lag_ms"])


def test_idle(result: dict[str, Any]) -> None:
    idle = result["idle"]
    assert idle["workers"] == 4
    for key in ("window_s", "statements", "statements_per_min", "worker_sweeps",
                "worker_statements_outside_sweeps", "server_statements"):
        assert _number(idle[key]), key


def test_polling(result: dict[str, Any]) -> None:
    poll = result["polling"]
    _dist(poll["polling"]["submit_to_task_start_ms"])
    assert _number(poll["median_ratio"])


def test_empty_claims(result: dict[str, Any]) -> None:
    for name in ("pickup", "throughput", "idle_progress", "polling"):
        e = result["empty_claims"][name]
        assert e["reported_by"] == e["workers"]
        assert _number(e["empty_claims"]) and e["jobs_run"] > 0


def test_targets_listed(result: dict[str, Any]) -> None:
    targets = result["targets"]
    assert len(targets) == 11
    assert all(_number(t["value"]) for t in targets), targets
