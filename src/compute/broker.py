"""The embedded MQTT broker (amqtt) that `compute-server` runs when none is configured."""

from __future__ import annotations

import asyncio
import logging
import socket
import sys
import threading
from typing import Any

log = logging.getLogger(__name__)

GIL_SWITCH_INTERVAL = 0.0005  # seconds


def port_answers(host: str, port: int, timeout: float = 0.5) -> bool:
    """True when something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


class EmbeddedBroker:
    """amqtt, anonymous, MQTT 3.1.1 only, on its own thread and event loop.

    Its own loop because amqtt forwards one message per loop cycle: sharing the server's loop
    with a flood of HTTP requests starved it until workers gave up waiting for confirmations.
    """

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._broker: Any = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="mqtt-broker", daemon=True)

    def _in_broker_loop(self, coro: Any) -> asyncio.Future[Any]:
        return asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self._loop))

    async def start(self) -> None:
        # amqtt logs every packet at INFO; keep it quiet unless debugging.
        for name in ("amqtt", "transitions"):
            logging.getLogger(name).setLevel(max(logging.WARNING, log.getEffectiveLevel()))
        # The broker thread wakes for every packet; with the default 5 ms GIL switch interval
        # each wake-up can wait that long behind the HTTP loop, which caps forwarding.
        sys.setswitchinterval(GIL_SWITCH_INTERVAL)
        self._thread.start()
        await self._in_broker_loop(self._start())
        log.info("embedded MQTT broker (amqtt) listening on %s:%s", self.host, self.port)

    async def _start(self) -> None:
        from amqtt.broker import Broker  # only the embedded mode needs it

        config = {
            "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}"}},
            "plugins": {
                "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True},
            },
        }
        self._broker = Broker(config)
        await self._broker.start()

    async def stop(self) -> None:
        if self._broker is not None:
            try:
                await asyncio.wait_for(self._in_broker_loop(self._broker.shutdown()), 5.0)
            except Exception:  # shutting down anyway
                log.debug("embedded broker shutdown", exc_info=True)
            self._broker = None
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)


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
