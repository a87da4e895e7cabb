"""Absolute paths swapped while the job runs (issue 16 item 1), made deterministic: a stand-in
`ffprobe` on PATH swaps a folder inside the media root for a symlink to a private one, then runs
the real ffprobe. The job must go on with what was checked before: the input it opened, the
output folder it opened."""

from __future__ import annotations

import shutil
import stat
import uuid
from pathlib import Path
from typing import Any

import pytest
from cl_ml_tools import Job

from compute.plugins.environment import PluginEnvironment
from compute.plugins.hls_streaming.task import HlsStreamingParams, HlsStreamingTask
from tests.support.videos import ffprobe

LADDER = [{"resolution": 160, "bitrate": 250}]


@pytest.fixture
def swap_on_ffprobe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """swap(folder, target): when ffprobe first starts, `folder` becomes a symlink to `target`
    (the real folder moves to `<folder>.moved`)."""
    real = shutil.which("ffprobe")
    if real is None or shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg is not installed")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", f"{bin_dir}:{Path(real).parent}")

    def swap(folder: Path, target: Path) -> None:
        wrapper = bin_dir / "ffprobe"
        moved = f"{folder}.moved"
        wrapper.write_text(
            "#!/bin/sh\n"
            f"if [ ! -e '{moved}' ]; then mv '{folder}' '{moved}' && ln -s '{target}' '{folder}'; fi\n"
            f"exec '{real}' \"$@\"\n"
        )
        wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)

    return swap


async def run_task(plugin_env: PluginEnvironment, **params: Any) -> dict[str, Any]:
    """The task as a worker runs it, in this process (so the stand-in ffprobe is the one found)."""
    job_id = str(uuid.uuid4())
    (plugin_env.job_dir(job_id) / "output").mkdir(parents=True)
    checked = HlsStreamingParams(variants=LADDER, include_original=True, **params)
    job = Job(job_id=job_id, task_type="hls_streaming", params=checked.model_dump())
    return dict(await HlsStreamingTask().execute(job, checked))


async def test_the_input_cannot_be_swapped_once_checked(
    plugin_env: PluginEnvironment,
    media_root: Path,
    tmp_path: Path,
    silent_video: Path,
    small_video: Path,
    swap_on_ffprobe: Any,
) -> None:
    """Alice's 2 s silent clip is checked; Bob's private 3 s clip with sound is swapped in under
    its path when ffprobe starts. The HLS must be Alice's clip, not Bob's."""
    mine = media_root / "alice" / "clip.mp4"
    mine.parent.mkdir()
    shutil.copy(silent_video, mine)
    private = tmp_path / "bob-private"
    private.mkdir()
    shutil.copy(small_video, private / "clip.mp4")
    swap_on_ffprobe(media_root / "alice", private)

    result = await run_task(plugin_env, input_absolute_path=str(mine))

    assert (media_root / "alice").is_symlink()  # the swap happened
    assert result["status"] == "ok", result
    assert result["task_output"]["duration_seconds"] == pytest.approx(2.0, abs=0.1)
    job_output = next(plugin_env.storage_dir.glob("jobs/*/output"))
    original = ffprobe(job_output / "adaptive-orig.m3u8")
    assert [s["codec_type"] for s in original["streams"]] == ["video"]  # Bob's has sound


async def test_the_output_folder_cannot_be_swapped_once_checked(
    plugin_env: PluginEnvironment, media_root: Path, tmp_path: Path, silent_video: Path, swap_on_ffprobe: Any
) -> None:
    """The output folder is swapped for a symlink out of the media root when ffprobe starts:
    nothing may be written out there; the HLS goes to the folder that was checked."""
    source = media_root / "clip.mp4"
    shutil.copy(silent_video, source)
    target = media_root / "streams"
    target.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    swap_on_ffprobe(target, outside)

    result = await run_task(plugin_env, input_absolute_path=str(source), output_absolute_path=str(target))

    assert target.is_symlink()  # the swap happened
    assert list(outside.iterdir()) == []
    assert result["status"] == "ok", result
    checked = media_root / "streams.moved"  # the folder that was opened, wherever it is now
    assert {"adaptive.m3u8", "adaptive-160p-250.m3u8", "adaptive-orig.m3u8"} <= {
        p.name for p in checked.iterdir()
    }
