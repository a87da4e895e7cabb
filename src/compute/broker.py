"""The embedded MQTT broker that `compute-server` runs when none is configured, and its credentials.

EMBEDDED_BROKER picks it: `auto` (default) runs Mosquitto as a child process when a `mosquitto`
executable is installed (mosquitto.py says why) and amqtt on a thread of this process otherwise;
`mosquitto` or `amqtt` insist on one.

Embedded mode (no MQTT_BROKER) refuses anonymous clients too. The one user is MQTT_USERNAME
(default `compute`) with MQTT_PASSWORD, or, when no password is set, a random one that the
first server start writes to CL_SERVER_DIR/mqtt_password (mode 0600). The server's own workers,
and any `compute-worker` sharing that CL_SERVER_DIR, read it from there (config.load_settings).
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import stat
import sys
import tempfile
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

from compute.config import EMBEDDED_PASSWORD_FILE, EMBEDDED_USERNAME, Settings, read_secret
from compute.errors import ConfigError
from compute.loop_thread import loop_thread
from compute.mosquitto import MosquittoBroker, find_mosquitto
from compute.ports import port_answers

log = logging.getLogger(__name__)

GIL_SWITCH_INTERVAL = 0.0005  # seconds


# -- credentials ------------------------------------------------------------------------------


def embedded_credentials(settings: Settings) -> Settings:
    """In embedded mode, settings that carry the broker's user and password; else unchanged.

    A server that finds another broker already on localhost:port sends these credentials too:
    Mosquitto without a password file accepts them, and a second compute-server's amqtt on the
    same CL_SERVER_DIR shares the password file.
    """
    if settings.mqtt_broker is not None:
        return settings
    password = settings.mqtt_password or ensure_password_file(settings.cl_server_dir)
    return replace(
        settings, mqtt_username=settings.mqtt_username or EMBEDDED_USERNAME, mqtt_password=password
    )


def ensure_password_file(directory: Path) -> str:
    """The password kept in directory/mqtt_password, created at random (mode 0600) on first use."""
    path = directory / EMBEDDED_PASSWORD_FILE
    directory.mkdir(parents=True, exist_ok=True)
    password = secrets.token_urlsafe(32)  # 256 random bits
    try:
        # O_EXCL: two servers starting at once cannot both write it; the loser reads the winner's.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        existing = read_secret(path)
        if not existing:
            raise ConfigError(
                f"{path} is empty or unreadable: delete it to generate a new MQTT password "
                "(then restart the workers too), or set MQTT_PASSWORD"
            ) from None
        _keep_private(path)
        return existing
    with os.fdopen(fd, "w") as out:
        out.write(password + "\n")
    log.info("embedded MQTT broker: generated a password in %s", path)
    return password


def _keep_private(path: Path) -> None:
    """Take group and other permissions off the password file if someone added them."""
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        log.warning("%s was readable by others (mode %o): setting it to 0600", path, mode)
        try:
            path.chmod(0o600)
        except OSError as exc:
            log.warning("cannot change the mode of %s: %s", path, exc)


def _password_line(username: str, password: str) -> str:
    """`user:hash` for amqtt's FileAuthPlugin (argon2id; it also reads sha512_crypt, which needs
    the `crypt` module that Python 3.13 removed).

    Cheap parameters on purpose: verification runs on the broker's loop for every connect, the
    hash file lives only in a private temporary folder while the broker loads it, and the
    generated password has 256 random bits, which no stretching could make stronger.
    """
    from pwdlib.hashers.argon2 import Argon2Hasher  # amqtt's own dependency (pwdlib[argon2])

    hasher = Argon2Hasher(time_cost=1, memory_cost=8 * 1024, parallelism=1)
    return f"{username}:{hasher.hash(password)}\n"


# -- the broker -------------------------------------------------------------------------------


class EmbeddedBroker:
    """amqtt with one user and no anonymous access, MQTT 3.1.1 only, on its own thread and event loop.

    Its own loop because amqtt forwards one message per loop cycle: sharing the server's loop
    with a flood of HTTP requests starved it until workers gave up waiting for confirmations.
    """

    def __init__(self, host: str, port: int, username: str, password: str) -> None:
        """`username` without ':' (embedded_broker checks it: password files are `user:hash`)."""
        self.host = host
        self.port = port
        self._username = username
        self._password = password
        self._broker: Any = None
        #: Made at start, not here: a loop made for a broker never started would stay open.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def _in_broker_loop(self, coro: Any) -> asyncio.Future[Any]:
        assert self._loop is not None, "start() makes the broker's loop"
        return asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self._loop))

    async def start(self) -> None:
        # amqtt logs every packet at INFO; keep it quiet unless debugging.
        for name in ("amqtt", "transitions"):
            logging.getLogger(name).setLevel(max(logging.WARNING, log.getEffectiveLevel()))
        # The broker thread wakes for every packet; with the default 5 ms GIL switch interval
        # each wake-up can wait that long behind the HTTP loop, which caps forwarding.
        sys.setswitchinterval(GIL_SWITCH_INTERVAL)
        self._loop, self._thread = loop_thread("mqtt-broker")
        self._thread.start()
        await self._in_broker_loop(self._start())
        log.info(
            "embedded MQTT broker (amqtt) listening on %s:%s, user %s, no anonymous access",
            self.host,
            self.port,
            self._username,
        )

    async def _start(self) -> None:
        from amqtt.errors import BrokerError  # only the embedded mode needs amqtt

        from compute.amqtt_broker import ClosingBroker

        # amqtt reads the password file while it builds its plugins: it need not outlive that.
        with tempfile.TemporaryDirectory(prefix="compute-mqtt-") as private:  # mode 0700
            passwd = Path(private) / "passwd"
            passwd.write_text(_password_line(self._username, self._password))
            self._broker = ClosingBroker(broker_config(self.host, self.port, passwd))
        # A listener that cannot be opened is reported by start_embedded_if_needed in one line;
        # amqtt would log its traceback first.
        quiet = logging.getLogger("amqtt.broker")
        level, quiet.level = quiet.level, logging.CRITICAL
        try:
            await self._broker.start()
        except BrokerError as exc:  # it wraps the OSError
            raise OSError(str(exc.__cause__ or exc)) from None
        finally:
            quiet.setLevel(level)

    async def stop(self) -> None:
        if self._broker is not None:
            try:
                await asyncio.wait_for(self._in_broker_loop(self._broker.shutdown()), 5.0)
            except Exception:  # shutting down anyway
                log.debug("embedded broker shutdown", exc_info=True)
            self._broker = None
        if self._loop is None or self._thread is None:
            return  # never started
        # The thread closes its loop once run_forever returns (loop_thread).
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)


def broker_config(host: str, port: int, password_file: Path) -> dict[str, Any]:
    """amqtt's configuration: one TCP listener, users from the file only.

    FileAuthPlugin alone: a client without a username gets no verdict from it, which amqtt
    counts as a refusal (no AnonymousAuthPlugin to say yes).
    """
    return {
        "listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}"}},
        "plugins": {
            "amqtt.plugins.authentication.FileAuthPlugin": {"password_file": str(password_file)},
        },
    }


class Broker(Protocol):
    """What the server holds of its embedded broker."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


def embedded_broker(settings: Settings) -> Broker:
    """The broker EMBEDDED_BROKER asks for: Mosquitto (a child process) when it is `mosquitto`, or
    `auto` and a `mosquitto` executable is installed; amqtt (in this process) otherwise."""
    assert settings.mqtt_username and settings.mqtt_password
    if ":" in settings.mqtt_username:
        raise ConfigError(
            f"MQTT_USERNAME {settings.mqtt_username!r} cannot contain ':' for the embedded broker"
        )
    args = (settings.mqtt_embedded_bind, settings.mqtt_port, settings.mqtt_username, settings.mqtt_password)
    if settings.embedded_broker != "amqtt":
        executable = find_mosquitto()
        if executable is not None:
            return MosquittoBroker(executable, *args)
        if settings.embedded_broker == "mosquitto":
            raise ConfigError(
                "EMBEDDED_BROKER=mosquitto, but no `mosquitto` executable is installed "
                "(Debian: apt install mosquitto; or EMBEDDED_BROKER=amqtt)"
            )
    return EmbeddedBroker(*args)


async def start_embedded_if_needed(settings: Settings) -> Broker | None:
    """Embedded mode (no MQTT_BROKER): reuse a broker on localhost:port, else start one.

    `settings` must carry the credentials (embedded_credentials).
    """
    if settings.mqtt_broker is not None:
        return None
    if port_answers("127.0.0.1", settings.mqtt_port):
        log.info(
            "MQTT_BROKER not set and a broker already answers on 127.0.0.1:%s: using it", settings.mqtt_port
        )
        return None
    if not settings.mqtt_username or not settings.mqtt_password:
        raise ConfigError("the embedded MQTT broker needs credentials (embedded_credentials)")
    broker = embedded_broker(settings)
    try:
        await broker.start()
    except OSError as exc:  # an address that does not resolve or is not this machine's
        raise ConfigError(
            f"the embedded MQTT broker cannot listen on {settings.mqtt_embedded_bind}:{settings.mqtt_port} "
            f"(MQTT_EMBEDDED_BIND, MQTT_PORT): {exc}"
        ) from None
    return broker
