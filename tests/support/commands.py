"""The installed command lines (`compute-migrate`, `compute-server`, `compute-worker`) as a person
runs them: one at a time to its end (`run`), or started in the background in a
compute_bench.deployment.Deployment launched "installed" (`Commands`), its output in a log file."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from compute_bench.deployment import BIN, Deployment
from compute_bench.harness import free_port

__all__ = ["BIN", "Commands", "Served", "run", "start_server"]


def run(env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """`args` (a command line, its name first) run to its end; its output captured."""
    return subprocess.run(
        [str(BIN / args[0]), *args[1:]], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


class Commands(Deployment):
    """A deployment of installed command lines in `directory`, whose flags say where the broker
    and the database are; `env` is what they run in (a test may change it); stop() ends them."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory, launch="installed", broker="none")

    def start(self, name: str, *args: str, cwd: Path | None = None) -> subprocess.Popen[bytes]:
        """The command line `args` (its name first), started as `name`."""
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
    procs: Commands,
    *flags: str,
    cwd: Path | None = None,
    mqtt_port: int | None = None,
    wrap: Sequence[str] = (),
) -> Served:
    """compute-server (under the command `wrap`, if any) on free ports, its embedded broker or the
    one on `mqtt_port` with `--mqtt-broker`, once it answers with its bus connected."""
    http_port, mqtt_port = free_port(), mqtt_port or free_port()
    await asyncio.to_thread(
        procs.start_server,
        port=http_port,
        args=[*flags, "--mqtt-port", str(mqtt_port)],
        cwd=cwd,
        wrap=wrap,
        timeout=60,
    )
    return Served(procs.server(), http_port, mqtt_port)
