"""Compute as real processes: what the benchmark and the tests share to start and stop them.

Free ports, waits with a deadline, an environment without the caller's Compute settings, the
launch command (compute_bench.launch, which registers the `bench_noop` plugin first), a broker of
its own (amqtt or a private Mosquitto, in a process that can be killed), and `Processes`: children
with their output in log files, all ended at the end. compute_bench.deployment builds a whole
deployment (broker, database, servers, workers) on these.

It lives in the benchmark's distribution because both users can import it from there: the tests
depend on `compute-bench` (dev group), and the benchmark must not import `tests`. The product
does not carry it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx

from compute.config import variable_names
from compute.ports import port_answers
from compute_bench import probes

__all__ = [
    "LAUNCH",
    "Processes",
    "amqtt_command",
    "amqtt_config",
    "free_port",
    "mosquitto_command",
    "port_answers",
    "scrubbed_environ",
    "server_ready",
    "wait_until",
]

#: `python -m compute_bench.launch {server|worker} [options of compute-server / compute-worker]`.
LAUNCH = (sys.executable, "-m", "compute_bench.launch")


def free_port() -> int:
    """A TCP port nothing listens on right now (the OS picks it)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(
    predicate: Callable[[], Any], timeout: float = 10.0, what: str = "condition", interval: float = 0.05
) -> Any:
    """Call `predicate` until it returns something truthy (returned); AssertionError at the deadline.

    Blocking: for code outside an event loop (tests.support.wait_for is the asyncio twin).
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what} (last value: {value!r})")
        time.sleep(interval)


def scrubbed_environ(extra: Sequence[str] = (), environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """`environ` (os.environ) without any variable Compute or the launcher reads, nor `extra`.

    The names come from compute.config.variable_names(), so the developer's shell can never point
    a started process at another database, broker or key, whatever settings are added later.
    """
    drop = variable_names() | {probes.ENV, probes.KINDS_ENV} | set(extra)
    return {k: v for k, v in (os.environ if environ is None else environ).items() if k not in drop}


def amqtt_config(port: int, host: str = "127.0.0.1") -> dict[str, Any]:
    """An amqtt broker on host:port that lets anyone in (the tests' and the fault cluster's)."""
    return {
        "listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}"}},
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
    }


_AMQTT_SCRIPT = """
import asyncio, json, sys
from compute.amqtt_broker import ClosingBroker
async def main():
    await ClosingBroker(json.loads(sys.argv[1])).start()
    await asyncio.Event().wait()
asyncio.run(main())
"""


def amqtt_command(port: int) -> list[str]:
    """amqtt_config(port) as a process of its own: killing it drops every client, like a crash."""
    return [sys.executable, "-c", _AMQTT_SCRIPT, json.dumps(amqtt_config(port))]


def mosquitto_command(port: int, directory: Path) -> list[str]:
    """A private Mosquitto on 127.0.0.1:port, anonymous, its config file written into `directory`."""
    conf = directory / f"mosquitto-{port}.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 100000\n")
    return [shutil.which("mosquitto") or "mosquitto", "-c", str(conf)]


def server_ready(base_url: str, timeout: float = 1.0) -> bool:
    """compute-server answers `GET /` and says it reached its broker."""
    try:
        return bool(httpx.get(base_url + "/", timeout=timeout).json()["mqtt_connected"])
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        return False


class Processes:
    """Started subprocesses, each with its output in `<logs>/<name>.log`; stop() ends them all."""

    def __init__(self, logs: Path, env: Mapping[str, str]) -> None:
        self.logs = logs
        self.env = dict(env)
        self.started: dict[str, subprocess.Popen[bytes]] = {}

    def spawn(
        self, name: str, cmd: Sequence[str], env: Mapping[str, str] | None = None, cwd: Path | None = None
    ) -> subprocess.Popen[bytes]:
        """Start `cmd` as `name` (a name started again gets a fresh log: name-2, name-3 ...)."""
        self.logs.mkdir(parents=True, exist_ok=True)
        key, n = name, 1
        while key in self.started:
            n += 1
            key = f"{name}-{n}"
        out = open(self.logs / f"{key}.log", "wb")  # noqa: SIM115 - the child keeps its own copy
        try:
            proc = subprocess.Popen(
                list(cmd),
                env=dict(self.env if env is None else env),
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=cwd,
            )
        finally:
            out.close()
        self.started[key] = proc
        return proc

    def log(self, name: str) -> str:
        """Everything the processes started as `name` wrote, oldest first."""
        keys = [
            k
            for k in self.started
            if k == name or (k.startswith(f"{name}-") and k[len(name) + 1 :].isdigit())
        ]
        return "\n".join(
            (self.logs / f"{k}.log").read_text(errors="replace")
            for k in keys
            if (self.logs / f"{k}.log").exists()
        )

    @staticmethod
    def end(procs: Sequence[subprocess.Popen[bytes]], timeout: float = 15.0) -> None:
        """SIGTERM (after SIGCONT, for a stopped one), then SIGKILL past `timeout`; reaped."""
        for proc in procs:
            if proc.poll() is None:
                try:
                    proc.send_signal(signal.SIGCONT)
                    proc.send_signal(signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + timeout
        for proc in procs:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def stop(self, timeout: float = 15.0) -> None:
        """End every process, the last started first."""
        self.end(list(reversed(self.started.values())), timeout)
