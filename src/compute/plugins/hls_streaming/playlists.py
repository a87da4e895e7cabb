"""Read back the HLS that ffmpeg wrote: every playlist parses, every listed segment is on disk."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from compute.errors import ComputeError


class InvalidHls(ComputeError):
    """The HLS output is incomplete or malformed."""


@dataclass(frozen=True)
class MediaPlaylist:
    name: str
    segments: tuple[str, ...]


def _uris(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def _local(folder: Path, uri: str, listed_in: str) -> Path:
    """A URI of the playlist as a file in `folder`; HLS we wrote names only siblings."""
    relative = PurePosixPath(uri)
    if relative.is_absolute() or ".." in relative.parts or "://" in uri:
        raise InvalidHls(f"{listed_in} lists {uri!r}, which is not a file beside it")
    return folder / relative


def _read(path: Path, name: str) -> str:
    if not path.is_file():
        raise InvalidHls(f"{name} is missing")
    text = path.read_text(errors="replace")
    if not text.startswith("#EXTM3U"):
        raise InvalidHls(f"{name} does not start with #EXTM3U")
    return text


def media_playlist(folder: Path, name: str) -> MediaPlaylist:
    """The media playlist `name` in `folder`, checked: complete (ENDLIST) and every segment present."""
    text = _read(folder / name, name)
    segments = tuple(_uris(text))
    if "#EXTINF" not in text or not segments:
        raise InvalidHls(f"{name} lists no segments")
    if "#EXT-X-ENDLIST" not in text:
        raise InvalidHls(f"{name} has no #EXT-X-ENDLIST: the stream was not finished")
    for segment in segments:
        path = _local(folder, segment, name)
        if not path.is_file() or path.stat().st_size == 0:
            raise InvalidHls(f"{name} lists {segment}, which is missing or empty")
    return MediaPlaylist(name, segments)


def master_playlist(folder: Path, name: str) -> list[MediaPlaylist]:
    """The variants the master playlist `name` in `folder` lists, each checked."""
    text = _read(folder / name, name)
    if "#EXT-X-STREAM-INF" not in text:
        raise InvalidHls(f"{name} lists no variant streams")
    variants = []
    for uri in _uris(text):
        _local(folder, uri, name)
        variants.append(media_playlist(folder, uri))
    return variants
