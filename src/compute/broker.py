"""The embedded MQTT broker (amqtt) that `compute-server` runs when none is configured."""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

log = logging.getLogger(__name__)


def port_answers(host: str, port: int, timeout: float = 0.5) -> bool:
    """True when something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


class EmbeddedBroker:
    """amqtt in the server's event loop, anonymous, MQTT 3.1.1 only."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._broker: Any = None

    async def start(self) -> None:
        from amqtt.broker import (
            Broker,  # imported here: only the embedded mode needs it
        )

        # amqtt logs every packet at INFO; keep it quiet unless debugging.
        for name in ("amqtt", "transitions"):
            logging.getLogger(name).setLevel(max(logging.WARNING, log.getEffectiveLevel()))
        config = {
            "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}"}},
            "plugins": {
                "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True},
            },
        }
        self._broker = Broker(config)
        await self._broker.start()
        log.info("embedded MQTT broker (amqtt) listening on %s:%s", self.host, self.port)

    async def stop(self) -> None:
        if self._broker is not None:
            try:
                await asyncio.wait_for(self._broker.shutdown(), 5.0)
            except Exception:  # shutting down anyway
                log.debug("embedded broker shutdown", exc_info=True)
            self._broker = None


async def start_embedded_if_needed(configured_host: str | None, port: int,
                                   bind: str) -> EmbeddedBroker | None:
    """Embedded mode (no MQTT_BROKER): reuse a broker on localhost:port, else start amqtt."""
    if configured_host is not None:
        return None
    if port_answers("127.0.0.1", port):
        log.info("MQTT_BROKER not set and a broker already answers on 127.0.0.1:%s: using it", port)
        return None
    broker = EmbeddedBroker(bind, port)
    await broker.start()
    return broker
