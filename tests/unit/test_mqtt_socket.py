"""What the MQTT client does to its own TCP socket (compute.bus.mqtt)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest

from compute.bus.mqtt import _acknowledge_at_once

pytestmark = pytest.mark.skipif(not hasattr(socket, "TCP_QUICKACK"), reason="Linux only")


@pytest.fixture
def tcp_pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
        try:
            yield client, server
        finally:
            client.close()
            server.close()


class _Transport:
    def __init__(self, sock: socket.socket | None) -> None:
        self.sock = sock

    def get_extra_info(self, name: str) -> Any:
        return self.sock if name == "socket" else None


class _Connection:
    """The two things of gmqtt's MQTTConnection the wrapper uses."""

    def __init__(self, sock: socket.socket | None) -> None:
        self._transport = _Transport(sock)
        self.delivered: list[object] = []

    def put_package(self, package: object) -> None:
        self.delivered.append(package)


def _quickack(sock: socket.socket) -> int:
    # Reads 1 while the socket acknowledges at once, 0 while it delays acknowledgements.
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK)


def test_every_packet_received_puts_the_socket_back_into_quick_ack(
    tcp_pair: tuple[socket.socket, socket.socket],
) -> None:
    client, _ = tcp_pair
    connection = _Connection(client)
    _acknowledge_at_once(connection)
    for package in ("puback", "publish"):
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 0)  # what Linux does by itself
        assert _quickack(client) == 0
        connection.put_package(package)
        assert _quickack(client) == 1
    assert connection.delivered == ["puback", "publish"]


def test_a_connection_without_a_tcp_socket_is_left_alone() -> None:
    connection = _Connection(None)
    before = connection.put_package
    _acknowledge_at_once(connection)
    assert connection.put_package == before


def test_a_closed_socket_still_delivers_the_packet(tcp_pair: tuple[socket.socket, socket.socket]) -> None:
    client, _ = tcp_pair
    connection = _Connection(client)
    _acknowledge_at_once(connection)
    client.close()
    connection.put_package("disconnect")
    assert connection.delivered == ["disconnect"]
