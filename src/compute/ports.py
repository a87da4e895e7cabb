"""Whether something listens on a TCP port: how the server finds a broker already running, and
how it waits for the Mosquitto it started."""

from __future__ import annotations

import socket


def port_answers(host: str, port: int, timeout: float = 0.5) -> bool:
    """True when something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False
