"""Playlist checks on hand-written HLS: each way a result can be broken is caught and named."""

from __future__ import annotations

from pathlib import Path

import pytest

from compute.plugins.hls_streaming.playlists import InvalidHls, master_playlist, media_playlist

MASTER = "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-STREAM-INF:BANDWIDTH=500000,RESOLUTION=320x240\nlow.m3u8\n"


def media(*segments: str, ended: bool = True) -> str:
    body = "".join(f"#EXTINF:2.000000,\n{s}\n" for s in segments)
    return "#EXTM3U\n#EXT-X-TARGETDURATION:2\n" + body + ("#EXT-X-ENDLIST\n" if ended else "")


def write(folder: Path, files: dict[str, str | bytes]) -> Path:
    for name, content in files.items():
        path = folder / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return folder


def test_complete_hls_is_read(tmp_path: Path) -> None:
    write(tmp_path, {"master.m3u8": MASTER, "low.m3u8": media("a.ts", "b.ts"), "a.ts": b"x", "b.ts": b"y"})
    [low] = master_playlist(tmp_path, "master.m3u8")
    assert (low.name, low.segments) == ("low.m3u8", ("a.ts", "b.ts"))


@pytest.mark.parametrize(
    ("files", "reason"),
    [
        ({"low.m3u8": media("a.ts"), "a.ts": b"x"}, "master.m3u8 is missing"),
        ({"master.m3u8": "hello\n"}, "does not start with #EXTM3U"),
        ({"master.m3u8": "#EXTM3U\n"}, "lists no variant streams"),
        ({"master.m3u8": MASTER}, "low.m3u8 is missing"),
        ({"master.m3u8": MASTER, "low.m3u8": media()}, "low.m3u8 lists no segments"),
        ({"master.m3u8": MASTER, "low.m3u8": media("a.ts"), "a.ts": b""}, "lists a.ts, which is missing or"),
        (
            {"master.m3u8": MASTER, "low.m3u8": media("a.ts", "b.ts"), "a.ts": b"x"},
            "lists b.ts, which is miss",
        ),
        ({"master.m3u8": MASTER, "low.m3u8": media("a.ts", ended=False), "a.ts": b"x"}, "no #EXT-X-ENDLIST"),
        ({"master.m3u8": MASTER, "low.m3u8": media("../a.ts")}, "not a file beside it"),
        ({"master.m3u8": MASTER.replace("low.m3u8", "/etc/low.m3u8")}, "not a file beside it"),
    ],
)
def test_broken_hls_is_refused_with_the_reason(
    tmp_path: Path, files: dict[str, str | bytes], reason: str
) -> None:
    write(tmp_path, files)
    with pytest.raises(InvalidHls, match=reason.replace("#", "\\#")):
        master_playlist(tmp_path, "master.m3u8")


def test_media_playlist_alone(tmp_path: Path) -> None:
    write(tmp_path, {"orig.m3u8": media("o.ts"), "o.ts": b"z"})
    assert media_playlist(tmp_path, "orig.m3u8").segments == ("o.ts",)
