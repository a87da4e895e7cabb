"""The installed command lines (`compute-migrate`, `compute-server`, `compute-worker`) as a person
runs them: one at a time to its end, or started in the background with its output in a log file."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from compute_bench import harness
from compute_bench.harness import free_port, server_ready
from tests.support.waits import wait_for

#: Where `uv sync` installed the command lines (beside the interpreter).
BIN = Path(sys.executable).parent


def run(env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """`args` (a command line, its name first) run to its end; its output captured."""
    return subprocess.run(
        [str(BIN / args[0]), *args[1:]], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


class Commands(harness.Processes):
    """Installed command lines started in the background, by name; stop() ends them all."""

    def start(self, name: str, *args: str, cwd: Path | None = None) -> subprocess.Popen[bytes]:
        return self.spawn(name, [str(BIN / args[0]), *args[1:]], cwd=cwd)


@dataclass
class Served:
    proc: subprocess.Popen[bytes]
    http_port: int
    mqtt_port: int

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"


async def start_server(
    procs: Commands, *flags: str, cwd: Path | None = None, mqtt_port: int | None = None
) -> Served:
    """compute-server on free ports (its embedded broker, or the one on `mqtt_port` with
    `--mqtt-broker`), once it answers with its bus connected."""
    http_port, mqtt_port = free_port(), mqtt_port or free_port()
    server = procs.start(
        "server",
        "compute-server",
        *flags,
        "--host",
        "127.0.0.1",
        "--port",
        str(http_port),
        "--mqtt-port",
        str(mqtt_port),
        cwd=cwd,
    )
    served = Served(server, http_port, mqtt_port)

    async def healthy() -> bool:
        assert server.poll() is None, procs.log("server")
        return await asyncio.to_thread(server_ready, served.base, 5.0)

    await wait_for(healthy, timeout=60, interval=0.1, what="compute-server to answer")
    return served
