"""The embedded broker as a Mosquitto child process, when a `mosquitto` executable is installed.

Why a child and not amqtt in our process: compute-bench measured amqtt's forwarding as the
largest single cost of the server (about 1.5-2 ms of the server's CPU per no-op job, sharing the
GIL with the HTTP loop), while Mosquitto, in C and in its own process, forwards the same messages
for a few percent of a core (docs/performance.md). amqtt stays the fallback when Mosquitto
is not installed (`EMBEDDED_BROKER=auto`), so the first command still works with Python packages
only.

Same promises as the embedded amqtt: one user (MQTT_USERNAME, default `compute`) with the
generated password, no anonymous clients, bound to MQTT_EMBEDDED_BIND. Its configuration and
password file live in a private temporary folder (mode 0700) while it runs. The child gets the
parent-death signal, so a server killed with -9 does not leave it holding the port; if it dies
by itself, it is started again (clients reconnect, the workers' outboxes re-send).
"""

from __future__ import annotations

import asyncio
import base64
import getpass
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from compute.deathsignal import preexec
from compute.errors import ConfigError
from compute.ports import port_answers

log = logging.getLogger(__name__)

#: Debian installs the broker in /usr/sbin, which an unprivileged user's PATH often lacks.
_SBIN = "/usr/sbin:/usr/local/sbin:/sbin"
#: Seconds to wait for the child to accept connections.
START_TIMEOUT = 10.0
#: Seconds between SIGTERM and SIGKILL when stopping it.
STOP_GRACE = 5.0
#: PBKDF2-SHA512 rounds Mosquitto 2 itself uses for `$7$` hashes (mosquitto_passwd's default).
_PBKDF2_ROUNDS = 101


def find_mosquitto() -> str | None:
    """The `mosquitto` executable on PATH or in the sbin folders, or None."""
    return shutil.which("mosquitto") or shutil.which("mosquitto", path=_SBIN)


def password_line(username: str, password: str) -> str:
    """`user:$7$rounds$salt$hash`, the PBKDF2-SHA512 format of Mosquitto 2's password files."""
    salt = os.urandom(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, _PBKDF2_ROUNDS)
    b64 = base64.b64encode
    return f"{username}:$7${_PBKDF2_ROUNDS}${b64(salt).decode()}${b64(digest).decode()}\n"


def config_text(host: str, port: int, password_file: Path) -> str:
    """The child's configuration. Queue settings as in deploy/mosquitto (see there for why)."""
    return "\n".join(
        [
            "per_listener_settings false",
            f"listener {port} {host}",
            "allow_anonymous false",
            f"password_file {password_file}",
            # Run as whoever runs the server: as root, Mosquitto would switch to the `mosquitto` user,
            # which cannot read our private folder.
            f"user {getpass.getuser()}",
            # Without it every forwarded message can wait ~40 ms for a delayed ACK.
            "set_tcp_nodelay true",
            "max_inflight_messages 100",
            "max_queued_messages 100000",
            "persistence false",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "",
        ]
    )


class MosquittoBroker:
    """Mosquitto in a child process, for the server's lifetime."""

    def __init__(self, executable: str, host: str, port: int, username: str, password: str) -> None:
        """`username` without ':' (embedded_broker checks it: password files are `user:hash`)."""
        self.executable = executable
        self.host = host
        self.port = port
        self._username = username
        self._password = password
        self._dir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._watch: asyncio.Task[None] | None = None
        #: Tries to start the child again after it died by itself (also the backoff's step).
        self.restarts = 0

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    async def start(self) -> None:
        self._dir = Path(tempfile.mkdtemp(prefix="compute-mosquitto-"))  # mode 0700
        passwd = self._dir / "passwd"
        passwd.write_text(password_line(self._username, self._password))
        passwd.chmod(0o600)
        (self._dir / "mosquitto.conf").write_text(config_text(self.host, self.port, passwd))
        await self._spawn()
        self._watch = asyncio.create_task(self._keep_running(), name="mosquitto")
        log.info(
            "embedded MQTT broker (Mosquitto, pid %s) listening on %s:%s, user %s, no anonymous access",
            self.pid,
            self.host,
            self.port,
            self._username,
        )

    async def _spawn(self) -> None:
        """Start the child and wait until it accepts connections; ConfigError with its output if
        it exits first. Runs on the event loop's thread: the parent-death signal is tied to the
        thread that started the child."""
        self._proc = self._launch()  # on this thread, not to_thread (see above)
        deadline = time.monotonic() + START_TIMEOUT
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        while not await asyncio.to_thread(port_answers, host, self.port, 0.2):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                output = self._output()
                await self._end()
                raise ConfigError(
                    f"the embedded Mosquitto ({self.executable}) did not start on "
                    f"{self.host}:{self.port}: {output or 'no output'} (EMBEDDED_BROKER=amqtt "
                    "runs the Python broker instead)"
                )
            await asyncio.sleep(0.02)

    def _launch(self) -> subprocess.Popen[bytes]:
        assert self._dir is not None
        with open(self._dir / "mosquitto.log", "ab") as out:  # the child keeps its own copy
            return subprocess.Popen(
                [self.executable, "-c", str(self._dir / "mosquitto.conf")],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=preexec(),
            )

    def _output(self, limit: int = 2000) -> str:
        """What the child wrote: its error lines when there are any (it also warns about running as
        root, which is how the server may be run), else everything, cut to the last `limit`."""
        try:
            assert self._dir is not None
            lines = (self._dir / "mosquitto.log").read_text(errors="replace").splitlines()
        except OSError:
            return ""
        errors = [line for line in lines if "Error" in line]
        return " / ".join(errors or lines)[-limit:]

    async def _keep_running(self) -> None:
        """Start the child again if it dies while the server runs (backing off while it fails)."""
        while True:
            proc = self._proc
            if proc is not None:
                code = await asyncio.to_thread(proc.wait)
                log.error(
                    "embedded Mosquitto exited (code %s): %s; starting it again",
                    code,
                    self._output(500) or "no output",
                )
            self.restarts += 1
            await asyncio.sleep(min(5.0, 0.1 * 2 ** min(self.restarts, 6)))
            try:
                await self._spawn()
            except ConfigError as exc:
                log.error("%s", exc)

    async def stop(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            await asyncio.gather(self._watch, return_exceptions=True)
            self._watch = None
        await self._end()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    async def _end(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            await asyncio.to_thread(proc.wait, STOP_GRACE)
        except subprocess.TimeoutExpired:
            proc.kill()
            await asyncio.to_thread(proc.wait)
