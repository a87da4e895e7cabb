"""Run ffmpeg in a folder, reading its `-progress pipe:1` report as it encodes.

tools.run waits for the end; an encode takes as long as the video, so the job's progress
follows ffmpeg's `out_time_us` here instead. Same guarantees: a deadline, the child killed on
timeout or cancellation, failures as ToolFailed in ffmpeg's words without server paths.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from compute import deathsignal
from compute.plugins.tools import ERROR_LINES, ToolFailed, scrub

#: Called with how many seconds of the output ffmpeg has written so far.
OnSeconds = Callable[[float], None]


async def _follow(stream: asyncio.StreamReader, on_seconds: OnSeconds) -> None:
    async for raw in stream:
        key, _, value = raw.decode(errors="replace").strip().partition("=")
        if key == "out_time_us" and value.isdigit():  # "N/A" before the first frame
            on_seconds(int(value) / 1_000_000)


async def run_ffmpeg(
    args: Sequence[str],
    *,
    cwd: Path,
    timeout: float,
    on_seconds: OnSeconds,
    hide: Sequence[Path] = (),
    pass_fds: Sequence[int] = (),
    names: Mapping[str, str] | None = None,
) -> None:
    """Run ffmpeg (`args` without the program and the progress options) with `cwd` as its folder.

    Output names relative to `cwd` keep a client's folder name out of ffmpeg's `%` templates.
    `pass_fds`, `names`: as tools.run.
    """
    proc = await asyncio.create_subprocess_exec(
        "ffmpeg",
        "-hide_banner",
        "-nostdin",
        "-loglevel",
        "error",
        "-nostats",
        "-progress",
        "pipe:1",
        *args,
        cwd=cwd,
        pass_fds=pass_fds,
        preexec_fn=deathsignal.preexec(signal.SIGKILL),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    try:
        async with asyncio.timeout(timeout):
            _, err, _ = await asyncio.gather(
                _follow(proc.stdout, on_seconds), proc.stderr.read(), proc.wait()
            )
    except BaseException:  # timeout or cancellation: do not leave ffmpeg running
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        raise
    if proc.returncode != 0:
        lines = [ln for ln in err.decode(errors="replace").splitlines() if ln.strip()]
        said = " | ".join(lines[-ERROR_LINES:]) or f"exit code {proc.returncode}"
        reason = scrub(said, [*hide, cwd], names)
        raise ToolFailed(f"ffmpeg failed: {reason}", stderr=err)
