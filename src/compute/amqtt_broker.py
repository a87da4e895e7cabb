"""amqtt's Broker, closing every connection it accepted when it is done with it.

amqtt 0.12 leaves the socket of a client that sends no valid CONNECT (a port probe, a scanner,
a client that gives up mid-handshake) open: its connection handler returns without closing the
writer, and the descriptor stays taken until the garbage collector finds the cycle around it.
A hostile client opening and dropping connections would run the server out of descriptors.
Only the embedded broker (broker.py) and the tests' amqtt import this module, and only amqtt
users need amqtt installed at import time.
"""

from __future__ import annotations

import asyncio

from amqtt.broker import Broker


class ClosingBroker(Broker):  # type: ignore[misc]  # amqtt ships no type information here
    async def stream_connected(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, listener_name: str
    ) -> None:
        try:
            await super().stream_connected(reader, writer, listener_name)
        finally:
            writer.close()  # idempotent; amqtt may have closed it already
