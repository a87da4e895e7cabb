"""External programs plugins run (ffmpeg, ffprobe, exiftool): found on PATH, run with a deadline,
failures reported in the tool's own words without server paths."""

from __future__ import annotations

import asyncio
import shutil
import signal
from collections.abc import Mapping, Sequence
from pathlib import Path

from compute import deathsignal
from compute.errors import ComputeError

#: Lines of a failing tool's stderr kept in the error message.
ERROR_LINES = 3


class ToolFailed(ComputeError):
    """An external tool failed."""

    def __init__(self, message: str | None = None, output: bytes = b"", stderr: bytes = b"") -> None:
        super().__init__(message)
        #: What the tool wrote to stdout (some tools explain a failure there).
        self.output = output
        #: All it wrote to stderr (the message keeps its last lines), for callers that look for a
        #: particular reason in it.
        self.stderr = stderr


def missing(*names: str) -> str | None:
    """Which of these programs is not on PATH, as an `unavailable()` reason, or None."""
    absent = [n for n in names if shutil.which(n) is None]
    if not absent:
        return None
    return f"{', '.join(absent)} not found on PATH (install Debian's ffmpeg / libimage-exiftool-perl)"


class ToolTimedOut(ToolFailed, TimeoutError):
    """An external tool did not finish in time (a ToolFailed: the job fails, it is not retried)."""


async def run(
    args: Sequence[str],
    *,
    timeout: float,
    hide: Sequence[Path] = (),
    pass_fds: Sequence[int] = (),
    names: Mapping[str, str] | None = None,
) -> bytes:
    """Run a program, return its stdout; raise ToolFailed with the end of its stderr.

    `hide`: folders whose paths are cut out of error messages (job folders, media roots);
    `names`: what to say instead of other strings in them (`/dev/fd/5` -> `input/upload.mp4`).
    `pass_fds`: descriptors the program inherits (it opens a checked file as `/dev/fd/N`).
    The child is killed when the deadline passes or the calling task is cancelled, and (Linux)
    when the process running the plugin dies: a killed plugin process leaves no ffmpeg behind.
    """
    proc = await asyncio.create_subprocess_exec(
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        stdin=asyncio.subprocess.DEVNULL,
        pass_fds=pass_fds,
        preexec_fn=deathsignal.preexec(signal.SIGKILL),
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except BaseException as exc:  # timeout or cancellation: do not leave the tool running
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        if isinstance(exc, TimeoutError):
            raise ToolTimedOut(f"{Path(args[0]).name} did not finish within {timeout:g} s") from None
        raise
    if proc.returncode != 0:
        lines = [ln for ln in err.decode(errors="replace").splitlines() if ln.strip()]
        reason = scrub(" | ".join(lines[-ERROR_LINES:]) or f"exit code {proc.returncode}", hide, names)
        raise ToolFailed(f"{Path(args[0]).name} failed: {reason}", output=out, stderr=err)
    return out


def scrub(text: str, folders: Sequence[Path], names: Mapping[str, str] | None = None) -> str:
    """`text` with every folder in `folders` cut out, so messages name files as the job does,
    and each key of `names` replaced by its value."""
    for raw, shown in (names or {}).items():
        text = text.replace(raw, shown)
    for folder in sorted((str(f) for f in folders), key=len, reverse=True):
        text = text.replace(folder.rstrip("/") + "/", "").replace(folder, ".")
    return text
