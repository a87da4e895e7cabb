"""compute-bench --quick: every section runs against real processes and reports numbers.

Nothing here judges speed: the targets are the benchmark's business, not the test's. One run
covers every section, `plugins` (not in the default set) included, with stand-in models for the
model plugins (no real weights on test machines).
"""

from __future__ import annotations

import json
import subprocess
import sys
from numbers import Number
from pathlib import Path
from typing import Any

import pytest

from compute.plugins.models import MODELS
from compute_bench import standins
from compute_bench.latency import STEPS
from compute_bench.plugins import PLUGINS
from compute_bench.runner import SECTIONS

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
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "compute_bench",
            "--quick",
            "--sections",
            ",".join(SECTIONS),
            "--stand-in-models",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=540,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Targets" in proc.stdout
    assert "7. Plugins" in proc.stdout and standins.LABEL in proc.stdout
    assert "Against the fastest way found" in proc.stdout
    data: dict[str, Any] = json.loads(Path(out).read_text())
    return data


def test_pickup(result: dict[str, Any]) -> None:
    for kind in ("bench_noop", "image_conversion"):
        p = result["pickup"][kind]
        assert p["completed"] == p["jobs"] > 0
        for key in (
            "submit_to_task_start_ms",
            "submit_to_started_event_ms",
            "created_to_claim_ms",
            "submit_call_ms",
            "submit_to_done_ms",
        ):
            _dist(p[key])


def test_latency(result: dict[str, Any]) -> None:
    runs = result["latency"]["runs"]
    # The run's own broker, then the default-config Mosquitto the benchmark starts itself.
    assert len(runs) == 2 and "default configuration" in runs[1]["broker"]
    for run in runs:
        for kind in ("bench_noop", "image_conversion"):
            steps = run[kind]
            assert steps["completed"] == steps["jobs"] > 0
            for key, _ in STEPS:
                _dist(steps[key])
    assert any(t["target"].startswith("no-op done -> inference/events p50") for t in result["targets"])


def test_recovery(result: dict[str, Any]) -> None:
    runs = result["recovery"]["runs"]
    assert len(runs) == 2 and "default configuration" in runs[1]["broker"]
    for run in runs:
        assert run["not_rerun"] == 0
        for key in ("kill_seconds", "stop_seconds"):
            _dist(run[key])
        # The job ran again on the other worker, never on the one signalled.
        assert all(r["to"] and r["to"] != r["from"] for r in run["rounds"])


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
    for key in (
        "window_s",
        "statements",
        "statements_per_min",
        "worker_sweeps",
        "worker_statements_outside_sweeps",
        "server_statements",
    ):
        assert _number(idle[key]), key


def test_polling(result: dict[str, Any]) -> None:
    poll = result["polling"]
    _dist(poll["polling"]["submit_to_task_start_ms"])
    assert _number(poll["median_ratio"])


def test_empty_claims(result: dict[str, Any]) -> None:
    for name in ("pickup", "throughput", "idle_progress", "polling", "plugins"):
        e = result["empty_claims"][name]
        assert e["reported_by"] == e["workers"]
        assert _number(e["empty_claims"]) and e["jobs_run"] > 0


def test_targets_listed(result: dict[str, Any]) -> None:
    targets = result["targets"]
    plugin_targets = [t for t in targets if "% of run p50" in t["target"]]
    reference_targets = [t for t in targets if "fastest reference" in t["target"]]
    # No peers without --peers; done -> visible p50 and p99 per latency broker, kill -9 per recovery broker.
    issue20 = 2 * len(result["latency"]["runs"]) + len(result["recovery"]["runs"])
    assert len(targets) - len(plugin_targets) - len(reference_targets) == 12 + issue20
    assert len(plugin_targets) == len(TOOL_ROWS) + len(MODELS)
    assert len(reference_targets) == len([p for p in PLUGINS if p.references])
    assert all(_number(t["value"]) for t in targets), targets


TOOL_ROWS = tuple(p.row for p in PLUGINS if p.task not in MODELS)


def _plugin_rows(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {row["row"]: row for row in result["plugins"]["plugins"]}


def test_plugins_tool_backed(result: dict[str, Any]) -> None:
    """Every plugin without a model runs here (CI installs ffmpeg and exiftool) and has its figures."""
    rows = _plugin_rows(result)
    for name in TOOL_ROWS:
        row = rows[name]
        assert "skipped" not in row and "error" not in row, row
        assert row["model"] is None and row["completed"] == row["jobs"] > 0, row
        _dist(row["run_ms"])
        _dist(row["pickup_ms"])
        _dist(row["persist_ms"])
        for key in ("jobs_per_s", "overhead_pct", "rss_after_load_mb", "peak_rss_mb", "tools_peak_rss_mb"):
            assert _number(row[key]), (name, key, row[key])
        # Measured in the plugin process: the job's CPU and memory there.
        _dist(row["cpu_ms"])
        assert _number(row["plugin_peak_rss_mb"]) and _number(row["plugin_job_growth_mb"]), row
        assert row["overhead_met"] in (True, False)
        assert row["model_load_ms"] is None
    assert rows["exif"]["output"]["Make"] == "Compute Bench"  # the standard photo's EXIF was read
    assert rows["hls_streaming"]["tools_peak_rss_mb"] > 0  # ffmpeg's memory, apart from the worker's


def test_plugins_beside_their_references(result: dict[str, Any]) -> None:
    """Each image row has its references measured on its own input (CI installs libvips-tools and
    webp; a tool that is not installed says so), the fastest named, and the ratios."""
    rows = _plugin_rows(result)
    for plugin in PLUGINS:
        if not plugin.references:
            continue
        row = rows[plugin.row]
        assert [r["name"] for r in row["references"]] == list(plugin.references)
        for ref in row["references"]:
            assert "error" not in ref, (plugin.row, ref)
            if "missing" not in ref:
                _dist(ref["cpu_ms"])
                _dist(ref["wall_ms"])
        assert row["fastest"] in plugin.references
        assert _number(row["ratio_cpu"]) and _number(row["ratio_wall"]), row
        assert row["reference_met"] in (True, False)


def test_plugins_model_backed(result: dict[str, Any]) -> None:
    """Model plugins are measured with stand-ins, and say so (or say why they were skipped)."""
    rows = _plugin_rows(result)
    for task in MODELS:
        row = rows[task]
        if "skipped" in row:
            assert "missing" in row["skipped"] or "no stand-in" in row["skipped"], row
            continue
        assert row["model"] in ("stand-in", "real"), row
        if row["model"] == "stand-in":
            assert row["note"] == standins.LABEL
        assert row["completed"] == row["jobs"] > 0, row
        _dist(row["run_ms"])
        assert _number(row["model_load_ms"]) and _number(row["overhead_pct"]), row


def test_plugins_inputs(result: dict[str, Any]) -> None:
    section = result["plugins"]
    assert section["inputs"]["photo"].startswith("1920x1080 JPEG")
    assert section["inputs"]["large_jpeg"].startswith("1600x1200 JPEG q92")
    assert section["inputs"]["large_png"].startswith("1600x1200 PNG")
    assert section["inputs"]["video"].startswith("1280x720 H.264+AAC MP4, 2 s")


def test_ml_batch(result: dict[str, Any]) -> None:
    section = result["ml_batch"]
    assert set(section["plugin"]) == {"clip_embedding", "dino_embedding", "face_embedding"}
    for row in section["plugin"].values():
        for size in ("batch_1", "batch_8"):
            assert row[size]["jobs_per_s"] > 0 and _number(row[size]["cpu_ms_per_job"])
    assert len(section["network"]) == 3
    for row in section["network"].values():
        for key in ("batch_1", "batch_8", "batch_1_spinning"):
            assert row[key]["cpu_ms_per_image"] > 0
    assert set(section["estimate"]) == set(section["plugin"])
    # Through the service: every queued job done at both sizes, one plugin call per job at batch
    # 1, and batches at 8 (all were queued when the task resumed).
    service = section["service"]
    for size in ("batch_1", "batch_8"):
        assert service[size]["jobs"] == section["jobs"] and service[size]["jobs_per_s"] > 0
    assert service["batch_1"]["batches"] == section["jobs"]
    assert service["batch_8"]["batches"] < section["jobs"]
