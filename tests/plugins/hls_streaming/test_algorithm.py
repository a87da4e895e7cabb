"""make_hls on ffmpeg-made videos: variants at the asked heights, H.264/AAC, 2 s segments,
no audio when there is none, no upscaling, the original copied, corrupt input refused."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from compute.plugins.hls_streaming.algorithm import COPIED, PROBED, make_hls
from compute.plugins.hls_streaming.ffmpeg_progress import run_ffmpeg
from compute.plugins.hls_streaming.ladder import Variant
from compute.plugins.tools import ToolFailed
from compute.plugins.video_probe import NoVideoStream, parse_probe
from tests.support.videos import CORRUPT_MP4, codecs, heights, opened


def files_like(folder: Path, pattern: str) -> list[str]:
    return sorted(p.name for p in folder.glob(pattern))


def segment_durations(playlist: Path) -> list[float]:
    return [float(d) for d in re.findall(r"#EXTINF:([\d.]+),", playlist.read_text())]


async def test_variants_with_sound_and_the_original(small_video: Path, tmp_path: Path) -> None:
    seen: list[int] = []
    with opened(small_video) as source:
        result = await make_hls(source, tmp_path, [Variant(240, 500), Variant(160, 250)], True, seen.append)

    assert result.variants == [Variant(240, 500), Variant(160, 250)] and result.original
    assert (result.info.width, result.info.height, result.info.has_audio) == (320, 240, True)
    assert result.info.duration == pytest.approx(3.0, abs=0.1)
    master = (tmp_path / "adaptive.m3u8").read_text()
    assert "adaptive-240p-500.m3u8" in master and "adaptive-160p-250.m3u8" in master
    assert "adaptive-orig" not in master  # as upstream: the original is beside the master, not in it
    for name, height in (("adaptive-240p-500.m3u8", 240), ("adaptive-160p-250.m3u8", 160)):
        assert heights(tmp_path / name) == [height]
        assert codecs(tmp_path / name) == {"h264", "aac"}
        # A keyframe every 2 s: 3 s of video is a 2 s segment and a 1 s one.
        assert segment_durations(tmp_path / name) == pytest.approx([2.0, 1.0], abs=0.05)
    assert files_like(tmp_path, "adaptive-240p-500-*.ts") == [
        "adaptive-240p-500-000.ts",
        "adaptive-240p-500-001.ts",
    ]
    assert result.total_segments == 4
    assert heights(tmp_path / "adaptive-orig.m3u8") == [240] and (tmp_path / "adaptive-orig-000.ts").is_file()

    assert seen[0] == PROBED and seen == sorted(seen) and seen[-1] == COPIED


async def test_silent_video_gets_no_audio(silent_video: Path, tmp_path: Path) -> None:
    with opened(silent_video) as source:
        result = await make_hls(source, tmp_path, [Variant(240, 400)], False, lambda _: None)
    assert not result.info.has_audio and not result.original
    assert codecs(tmp_path / "adaptive-240p-400.m3u8") == {"h264"}
    assert 'CODECS="avc1' in (tmp_path / "adaptive.m3u8").read_text()
    assert not (tmp_path / "adaptive-orig.m3u8").exists()


async def test_no_upscaling(silent_video: Path, tmp_path: Path) -> None:
    with opened(silent_video) as source:
        result = await make_hls(
            source, tmp_path, [Variant(720, 3500), Variant(480, 1500)], False, lambda _: None
        )
    assert result.variants == [Variant(240, 375)]
    assert heights(tmp_path / "adaptive-240p-375.m3u8") == [240]
    assert files_like(tmp_path, "adaptive-720p*") == files_like(tmp_path, "adaptive-480p*") == []


async def test_corrupt_video_fails_with_ffmpegs_reason(tmp_path: Path) -> None:
    source = tmp_path / "input" / "bad.mp4"
    source.parent.mkdir()
    source.write_bytes(CORRUPT_MP4)
    (tmp_path / "output").mkdir()
    with pytest.raises(ToolFailed) as caught, opened(source, "input/bad.mp4") as video:
        await make_hls(video, tmp_path / "output", [Variant(240, 400)], True, lambda _: None, hide=[tmp_path])
    message = str(caught.value)
    assert "moov atom not found" in message and "input/bad.mp4" in message
    assert str(tmp_path) not in message
    assert list((tmp_path / "output").iterdir()) == []


def test_probe_reads_rotation_and_skips_cover_pictures() -> None:
    report = {
        "format": {"duration": "12.5"},
        "streams": [
            {
                "index": 0,
                "codec_type": "video",
                "width": 600,
                "height": 600,
                "disposition": {"attached_pic": 1},
            },
            {
                "index": 1,
                "codec_type": "video",
                "width": 1920,
                "height": 1080,
                "disposition": {"attached_pic": 0},
                "side_data_list": [{"rotation": -90}],
            },
            {"index": 2, "codec_type": "audio"},
        ],
    }
    info = parse_probe(report)
    assert (info.stream, info.width, info.height) == (1, 1080, 1920)
    assert (info.has_audio, info.duration) == (True, 12.5)
    old_style = {
        "format": {},
        "streams": [
            {"index": 0, "codec_type": "video", "width": 640, "height": 480, "tags": {"rotate": "270"}}
        ],
    }
    assert (parse_probe(old_style).height, parse_probe(old_style).duration) == (640, 0.0)
    with pytest.raises(NoVideoStream):
        parse_probe({"streams": [{"index": 0, "codec_type": "audio"}]})


async def test_ffmpegs_progress_report_is_followed(small_video: Path, tmp_path: Path) -> None:
    seconds: list[float] = []
    await run_ffmpeg(
        ["-y", "-i", str(small_video), "-f", "null", "-"], cwd=tmp_path, timeout=30, on_seconds=seconds.append
    )
    # ffmpeg reports twice a second and once at the end, whatever the speed.
    assert seconds and seconds == sorted(seconds) and seconds[-1] == pytest.approx(3.0, abs=0.1)


async def test_ffmpeg_failure_names_no_folder(tmp_path: Path) -> None:
    with pytest.raises(ToolFailed) as caught:
        await run_ffmpeg(["-y", "-i", "missing.mp4", "out.ts"], cwd=tmp_path, timeout=30, on_seconds=print)
    assert "missing.mp4: No such file or directory" in str(caught.value)
    assert str(tmp_path) not in str(caught.value)
