"""MQTT brokers for the tests: amqtt in the test's event loop or in a process of its own, and the
shared Mosquitto of the machine, each named by a `BrokerInfo`."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from compute.ports import port_answers
from compute_bench.harness import amqtt_command, amqtt_config, free_port
from tests.support.waits import wait_for

#: The machine's Mosquitto, which the tests share (each test under a topic prefix of its own).
MOSQUITTO = ("127.0.0.1", 1883)


@dataclass(frozen=True)
class BrokerInfo:
    kind: str
    host: str
    port: int


class AmqttBroker:
    """amqtt in the test's event loop."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self._broker: Any = None

    async def start(self) -> AmqttBroker:
        from compute.amqtt_broker import ClosingBroker

        self._broker = ClosingBroker(amqtt_config(self.port))
        await self._broker.start()
        return self

    async def stop(self) -> None:
        """Stop like a broker process would: no new connections, then drop the clients.

        amqtt's shutdown() drops the clients before it closes its listener, so a client that
        reconnects fast lands on the dying instance and stays there; close the listener first.
        """
        if self._broker is not None:
            for server in getattr(self._broker, "_servers", {}).values():
                instance = getattr(server, "instance", None)
                if instance is not None:
                    instance.close()
            await asyncio.wait_for(self._broker.shutdown(), 5)
            self._broker = None


class AmqttProcess:
    """amqtt in a child process: stopping it closes every connection, like a broker crash."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> AmqttProcess:
        self.proc = await asyncio.create_subprocess_exec(
            *amqtt_command(self.port), stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
        )
        await wait_for(
            lambda: port_answers("127.0.0.1", self.port),
            timeout=20,
            what=f"amqtt process on port {self.port}",
        )
        return self

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await asyncio.wait_for(self.proc.wait(), 10)
        self.proc = None
