"""One `exiftool -stay_open True -@ -` per process, asked to read one file at a time.

Perl starting ExifTool is most of a one-shot call (84 of 132 ms on a 12 MP JPEG), so the
process is started once and fed a command per file on its standard input; it answers on
stdout, ending with `{readyN}`, and (`-echo4`) on stderr with the same mark.

What a hostile file can do to it, and what happens then:
- take too long, or hang: past the request's deadline exiftool is killed; the next request
  starts a fresh one;
- crash it, or make it exit: the request fails with what it wrote to stderr; the next one
  starts a fresh exiftool;
- print a huge answer: no line is held past `line_cap` bytes (the rest of a longer line is
  counted and dropped) and stderr past STDERR_CAP bytes is dropped, so memory stays bounded
  whatever the file holds;
- the caller is cancelled (job cancelled or timed out in thread mode): exiftool is killed, as
  its answer would otherwise be read as the next request's.

Requests run on one thread of the instance's own, one after another, which also starts
exiftool: the parent-death signal (deathsignal) fires when the starting thread ends, and this
one lives as long as the process, so exiftool dies with the process that uses it, whatever
event loop or thread the caller runs on (the plugin process's loop, thread mode's plugin thread).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import secrets
import selectors
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from compute import deathsignal
from compute.plugins.tools import ToolFailed, ToolTimedOut

#: Bytes of stderr kept per request (exiftool's errors and warnings are one line each).
STDERR_CAP = 4096
#: Seconds exiftool gets to leave after `-stay_open False` before it is killed.
CLOSE_GRACE = 2.0
READ_CHUNK = 65536

#: Called with lines of exiftool's answer, in order: (each line's first `line_cap` bytes, without
#: its line break; each line's full length).
OnLines = Callable[[list[bytes], list[int]], None]


class ExifToolDied(ToolFailed):
    """exiftool ended while reading a file."""


@dataclass(frozen=True)
class Answer:
    #: What exiftool wrote to stderr for this file (at most STDERR_CAP bytes), without the mark.
    stderr: str


class StayOpenExifTool:
    """A persistent exiftool. `read()` is called from any event loop; one request at a time."""

    def __init__(self, executable: str, common_args: Sequence[str], line_cap: int) -> None:
        self.executable = executable
        self.common_args = list(common_args)
        self.line_cap = line_cap
        self._thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="exiftool")
        #: Used on that thread only; the pipes are registered for the time of one request.
        self._selector = selectors.DefaultSelector()
        self._proc: subprocess.Popen[bytes] | None = None
        #: The request being served, so a cancelled caller kills exiftool only for its own.
        self._serving: object | None = None
        self._lock = threading.Lock()
        #: exiftool processes started so far (the first, and one after each kill or crash).
        self.started = 0

    @property
    def pid(self) -> int | None:
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    @property
    def busy(self) -> bool:
        """Whether a request is being served now."""
        return self._serving is not None

    async def read(self, args: Sequence[str], on_lines: OnLines, timeout: float) -> Answer:
        """Run one exiftool command (`args`, one argument per item, after the common ones),
        handing the lines of its answer to `on_lines`; ToolTimedOut past `timeout` seconds,
        ExifToolDied when exiftool ends meanwhile."""
        if any("\n" in a or "\r" in a for a in args):
            raise ValueError("an exiftool argument cannot contain a line break")
        request = object()
        future = self._thread.submit(self._serve, request, list(args), on_lines, timeout)
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            if not future.cancel():
                self._kill_if_serving(request)
            raise

    def close(self) -> None:
        """Ask exiftool to leave (`-stay_open False`), kill it if it does not, and end the thread."""
        self._thread.submit(self._stop).result()
        self._thread.shutdown()
        self._selector.close()

    # -- on the instance's thread --------------------------------------------------------------

    def _serve(self, request: object, args: list[str], on_lines: OnLines, timeout: float) -> Answer:
        deadline = time.monotonic() + timeout
        proc = self._running()
        with self._lock:
            self._serving = request
        try:
            return self._exchange(proc, args, on_lines, deadline)
        except BaseException:
            # Killed, timed out, or a reader that raised: what exiftool still has to say about
            # this file must not be read as the next file's answer.
            self._kill(proc)
            raise
        finally:
            with self._lock:
                self._serving = None

    def _running(self) -> subprocess.Popen[bytes]:
        proc = self._proc
        if proc is not None and proc.poll() is None:
            return proc
        if proc is not None:
            self._reap(proc)
        proc = subprocess.Popen(
            [self.executable, "-stay_open", "True", "-@", "-", "-common_args", *self.common_args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            preexec_fn=deathsignal.preexec(signal.SIGKILL),
        )
        assert proc.stdout is not None and proc.stderr is not None
        os.set_blocking(proc.stdout.fileno(), False)
        os.set_blocking(proc.stderr.fileno(), False)
        self._proc = proc
        self.started += 1
        return proc

    def _exchange(
        self, proc: subprocess.Popen[bytes], args: list[str], on_lines: OnLines, deadline: float
    ) -> Answer:
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        number = secrets.randbelow(10**9)
        mark = f"{{ready{number}}}".encode()
        command = [*args, "-echo4", mark.decode(), f"-execute{number}"]
        try:
            proc.stdin.write(("\n".join(command) + "\n").encode())
            proc.stdin.flush()
        except (BrokenPipeError, ConnectionResetError):
            raise ExifToolDied(f"exiftool ended ({_how(proc)})") from None
        out = _Lines(self.line_cap, on_lines, mark)
        err = _Tail(mark)
        selector = self._selector
        selector.register(proc.stdout, selectors.EVENT_READ, out)
        selector.register(proc.stderr, selectors.EVENT_READ, err)
        try:
            while not (out.done and err.done):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ToolTimedOut("exiftool did not finish in time")
                for key, _ in selector.select(left):
                    chunk = os.read(key.fd, READ_CHUNK)
                    if not chunk:
                        stderr = err.text()
                        raise ExifToolDied(
                            f"exiftool ended ({_how(proc)})" + (f": {stderr}" if stderr else "")
                        )
                    key.data.feed(chunk)
                    if key.data.done:
                        selector.unregister(key.fileobj)
        finally:
            for stream, reader in ((proc.stdout, out), (proc.stderr, err)):
                if not reader.done:
                    selector.unregister(stream)
        return Answer(err.text())

    def _kill_if_serving(self, request: object) -> None:
        with self._lock:
            proc = self._proc
            if self._serving is request and proc is not None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()

    def _kill(self, proc: subprocess.Popen[bytes]) -> None:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        self._reap(proc)

    def _reap(self, proc: subprocess.Popen[bytes]) -> None:
        proc.wait()
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()
        if self._proc is proc:
            self._proc = None

    def _stop(self) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            assert proc.stdin is not None
            with contextlib.suppress(OSError):
                proc.stdin.write(b"-stay_open\nFalse\n")
                proc.stdin.flush()
            try:
                proc.wait(CLOSE_GRACE)
            except subprocess.TimeoutExpired:
                proc.kill()
        self._reap(proc)


class _Lines:
    """stdout split into lines, each handed on with at most `cap` bytes kept, until the mark.

    Lines go on a chunk's worth at a time: per-line Python calls would cost more than exiftool
    takes to answer for a small file."""

    def __init__(self, cap: int, on_lines: OnLines, mark: bytes) -> None:
        self.cap = cap
        self.on_lines = on_lines
        self.mark = mark
        #: The start of a line whose end has not arrived yet, and its length so far.
        self.partial = bytearray()
        self.partial_length = 0
        self.done = False

    def feed(self, chunk: bytes) -> None:
        parts = chunk.split(b"\n")
        self._extend(parts[0])
        if len(parts) == 1:
            return
        lines = [bytes(self.partial), *parts[1:-1]]
        lengths = [self.partial_length, *map(len, parts[1:-1])]
        self.partial.clear()
        self.partial_length = 0
        self._extend(parts[-1])
        if self.mark in lines:
            end = lines.index(self.mark)
            lines, lengths = lines[:end], lengths[:end]
            self.done = True
        if lines and max(lengths) > self.cap:
            lines = [line[: self.cap] for line in lines]
        if lines:
            self.on_lines(lines, lengths)

    def _extend(self, piece: bytes) -> None:
        room = self.cap - len(self.partial)
        if room > 0:
            self.partial += piece[:room]
        self.partial_length += len(piece)


class _Tail:
    """stderr, its first STDERR_CAP bytes kept, until a line that is the mark."""

    def __init__(self, mark: bytes) -> None:
        self.mark = mark
        self.kept = bytearray()
        self.line = bytearray()
        self.done = False

    def feed(self, chunk: bytes) -> None:
        for piece in chunk.splitlines(keepends=True):
            if len(self.line) <= len(self.mark) + 2:
                self.line += piece[: len(self.mark) + 3]
            if piece.endswith(b"\n"):
                if self.line.rstrip(b"\r\n") == self.mark:
                    self.done = True
                    return
                self.line.clear()
            if len(self.kept) < STDERR_CAP:
                self.kept += piece[: STDERR_CAP - len(self.kept)]

    def text(self) -> str:
        return self.kept.decode(errors="replace").strip()


def _how(proc: subprocess.Popen[bytes]) -> str:
    try:
        code = proc.wait(0.5)
    except subprocess.TimeoutExpired:
        return "closed its output"
    return f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
