"""The plugins section's references (compute_bench.references): each runs on a real input and
reports CPU, wall time, memory and output size; a tool that is not installed is reported
missing, not failed; the fastest is the one with the least CPU; and the CPU the section counts
for a job includes what a tool kept running across jobs spends."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from compute_bench import inputs, plugins, references
from compute_bench.stats import cpu_ns

NUMBERS = ("cpu_ms", "wall_ms")


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> inputs.Inputs:
    return inputs.make(tmp_path_factory.mktemp("inputs"), 1.0, want_video=False, large=(640, 480))


def _measured(result: dict[str, Any], runs: int) -> None:
    assert "missing" not in result and "error" not in result, result
    for key in NUMBERS:
        assert result[key]["n"] == runs and result[key]["p50"] >= 0, (key, result)
    assert result["output_bytes"] > 0


@pytest.mark.parametrize(
    ("name", "kind", "size"),
    [
        ("pillow_thumbnail", "large_jpeg", (64, 64)),
        ("pillow_resize", "large_jpeg", (320, 200)),
        ("pillow_hashes", "large_jpeg", (0, 0)),
        ("pillow_png", "large_jpeg", (0, 0)),
        ("pillow_jpeg", "large_png", (0, 0)),
        ("pillow_webp", "large_jpeg", (0, 0)),
    ],
)
def test_in_process_references_run(
    photos: inputs.Inputs, tmp_path: Path, name: str, kind: str, size: tuple[int, int]
) -> None:
    path = photos.path(kind)
    assert path is not None
    result = references.run(name, path, tmp_path, 2, size)
    _measured(result, 2)
    assert result["kind"] == "InProcess" and result["peak_growth_mb"] >= 0
    if name in ("pillow_thumbnail", "pillow_resize"):
        with Image.open(tmp_path / f"{name}.jpg") as out:
            assert out.width <= max(size[0], 1) and out.height <= max(size[1], 1)


def test_a_tool_runs_once_per_job_with_its_own_memory(
    photos: inputs.Inputs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    copy = references.Command("cp", ("cp", "{input}", "{output}"), "coreutils", "jpg")
    monkeypatch.setitem(references.REFERENCES, "copy", copy)
    assert photos.large_jpeg is not None
    result = references.run("copy", photos.large_jpeg, tmp_path, 3, (0, 0))
    _measured(result, 3)
    assert result["output_bytes"] == photos.large_jpeg.stat().st_size
    # cp's own peak, not the benchmark's (a fork of this test process would report its RSS).
    assert 0 < result["peak_rss_mb"] < 40


def test_a_missing_tool_is_reported_missing(
    photos: inputs.Inputs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    absent = references.Command("absent", ("no-such-tool-here", "{input}"), "some-package", "jpg")
    monkeypatch.setitem(references.REFERENCES, "absent", absent)
    assert photos.large_jpeg is not None
    result = references.run("absent", photos.large_jpeg, tmp_path, 2, (0, 0))
    assert result["missing"] == "no-such-tool-here not installed (Debian package some-package)"
    assert references.fastest([result]) is None


def test_a_failing_tool_is_an_error_not_a_crash(
    photos: inputs.Inputs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    failing = references.Command("false", ("false", "{input}"), "coreutils", "jpg")
    monkeypatch.setitem(references.REFERENCES, "failing", failing)
    assert photos.large_jpeg is not None
    result = references.run("failing", photos.large_jpeg, tmp_path, 1, (0, 0))
    assert "exited with 1" in result["error"]


def test_the_fastest_reference_sets_the_ratio() -> None:
    refs = [
        {"name": "slow", "cpu_ms": {"p50": 40.0}, "wall_ms": {"p50": 50.0}},
        {"name": "fast", "cpu_ms": {"p50": 20.0}, "wall_ms": {"p50": 80.0}},
        {"name": "absent", "missing": "absent not installed"},
    ]
    row = {"references": refs, "cpu_ms": {"p50": 23.0}, "run_ms": {"p50": 40.0}}
    assert plugins._ratios(row) == {
        "fastest": "fast",
        "ratio_cpu": 1.15,
        "ratio_wall": 0.5,
        "reference_met": True,
    }
    row["cpu_ms"] = {"p50": 25.0}
    assert plugins._ratios(row)["reference_met"] is False


BUSY_CHILD = """
import sys, time
end = time.process_time() + 0.3
while time.process_time() < end:
    pass
print("spent", flush=True)
sys.stdin.read()
"""


def test_job_cpu_counts_a_tool_that_keeps_running() -> None:
    """A persistent exiftool's work for a job is the job's CPU, though exiftool never exits."""
    before = cpu_ns()
    with subprocess.Popen(
        [sys.executable, "-c", BUSY_CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as child:
        assert child.stdout is not None and child.stdin is not None
        assert child.stdout.readline() == "spent\n"
        during = cpu_ns() - before
        child.stdin.close()
    assert during >= 300_000_000
