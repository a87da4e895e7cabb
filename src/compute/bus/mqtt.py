"""gmqtt implementation of the Bus, speaking MQTT 3.1.1 (amqtt, Mosquitto, EMQX ...).

One supervisor task owns the connection: it connects, restores subscriptions, runs the
connect hooks, waits for the link to drop, and reconnects with exponential backoff. gmqtt's
own fixed-delay reconnect is switched off by the `_Client.reconnect` override.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import socket
import ssl
from collections.abc import Callable
from typing import Any

import gmqtt
from gmqtt.mqtt.constants import MQTTv50, MQTTv311

from compute.bus.interface import ConnectHook, MessageHandler, topic_matches
from compute.config import Settings
from compute.logs import LogLimiter

log = logging.getLogger(__name__)
limited = LogLimiter(log)

CONNECT_TIMEOUT = 10.0  # seconds
BACKOFF_FIRST, BACKOFF_MAX = 0.1, 5.0  # seconds


class _Client(gmqtt.Client):  # type: ignore[misc]
    """A gmqtt client that reports a lost link instead of reconnecting by itself, and
    acknowledges what it receives at once (see `_acknowledge_at_once`)."""

    lost: Callable[[], None] = staticmethod(lambda: None)

    async def reconnect(self, delay: bool = False) -> None:
        self.lost()

    async def _create_connection(self, *args: Any, **kwargs: Any) -> Any:
        connection = await super()._create_connection(*args, **kwargs)
        _acknowledge_at_once(connection)
        return connection


def _drop_link(client: Any) -> None:
    """Close `client`'s socket at once, without a DISCONNECT (so the broker publishes its Will).

    gmqtt has no public way to drop a link unannounced; its transport is closed under it. A link
    given up on any other way would stay open until the garbage collector finds the transport.
    """
    transport = getattr(getattr(client, "_connection", None), "_transport", None)
    if transport is not None:
        transport.abort()


def _acknowledge_at_once(connection: Any) -> None:
    """TCP_QUICKACK after every packet received on this connection.

    A broker without `set_tcp_nodelay` (Mosquitto's default) holds a small write back while an
    earlier one to the same client is unacknowledged (Nagle), and Linux delays a client's
    acknowledgement up to 40 ms hoping to piggyback it on data (delayed ACK). Between them a
    job's result could wait 40 ms on its way to the server: the broker's PUBACK for the server's
    last publish was still unacknowledged when the result came. Linux leaves quick-ack mode by
    itself, so it is set again after each packet; when an acknowledgement is pending, setting it
    sends that acknowledgement at once. One system call per packet received.
    """
    quickack = getattr(socket, "TCP_QUICKACK", None)
    transport = getattr(connection, "_transport", None)
    sock = transport.get_extra_info("socket") if transport is not None else None
    if quickack is None or sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    deliver = connection.put_package

    def put_package(package: Any) -> None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, quickack, 1)
        except OSError:  # the connection is closing under us; the packet still counts
            pass
        deliver(package)

    connection.put_package = put_package


class MqttBus:
    def __init__(
        self,
        settings: Settings,
        client_id: str,
        *,
        will: tuple[str, bytes | str, bool] | None = None,
        clean_session: bool = True,
        name: str = "mqtt",
    ) -> None:
        self._settings = settings
        #: Read at each connect: may be set until then (the server reads its id from the database).
        self.client_id = client_id
        self._will = will
        self._clean_session = clean_session
        self._name = name
        self._subs: list[tuple[str, int, MessageHandler]] = []
        self._hooks: list[ConnectHook] = []
        self._client: _Client | None = None
        self._connected = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        #: Counts of connects and dropped incoming messages, for tests and logs.
        self.connects = 0
        self.handler_errors = 0

    @property
    def settings(self) -> Settings:
        """The settings it connects with (its deployment's topic names among them)."""
        return self._settings

    # -- Bus protocol ----------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._supervise(), name=f"{self._name}-supervisor")

    async def wait_connected(self, timeout: float | None = None) -> bool:
        try:
            await asyncio.wait_for(self._connected.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def close(self) -> None:
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        client, self._client = self._client, None
        self._connected.clear()
        if client is not None:
            try:
                await asyncio.wait_for(client.disconnect(), 2.0)
            except Exception:  # already gone, or not answering: nothing left to tell the broker
                _drop_link(client)

    async def drain(self, timeout: float) -> bool:
        """Wait until the broker acknowledged every QoS 1 message published so far: True, or
        False after `timeout` or when not connected (what a goodbye waits for before it
        disconnects, so that it is known delivered, not only written)."""
        client = self._client
        if client is None or not self._connected.is_set():
            return False
        try:
            await asyncio.wait_for(client._persistent_storage.wait_empty(), timeout)
        except TimeoutError:
            return False
        return True

    def publish(self, topic: str, payload: bytes | str, qos: int = 0, retain: bool = False) -> bool:
        client = self._client
        if client is None or not self._connected.is_set():
            return False
        try:
            client.publish(topic, payload, qos=qos, retain=retain)
        except Exception as exc:  # transport closing under us: the caller treats it as offline
            log.debug("%s: publish to %s failed: %s", self._name, topic, exc)
            return False
        return True

    def subscribe(self, topic_filter: str, handler: MessageHandler, qos: int = 1) -> None:
        self._subs.append((topic_filter, qos, handler))
        if self._client is not None and self._connected.is_set():
            self._client.subscribe(topic_filter, qos=qos)

    def on_connect(self, hook: ConnectHook) -> None:
        self._hooks.append(hook)

    @property
    def subscriptions(self) -> tuple[str, ...]:
        """The topic filters this bus subscribes to (again at each connect), in order."""
        return tuple(topic_filter for topic_filter, _, _ in self._subs)

    def abort(self) -> None:
        """Drop the connection without a DISCONNECT and stop for good: what a crash looks like to
        the broker, which then publishes the Last Will. For tests and tools that play a crash;
        the process itself keeps running."""
        self._closing = True
        if self._task is not None:
            self._task.cancel()
        client, self._client = self._client, None
        self._connected.clear()
        _drop_link(client)

    # -- connection ------------------------------------------------------------------------

    def _new_client(self, lost: asyncio.Event) -> _Client:
        will = None
        if self._will is not None:
            topic, payload, retain = self._will
            will = gmqtt.Message(topic, payload, qos=1, retain=retain)
        client = _Client(self.client_id, clean_session=self._clean_session, will_message=will)
        client.lost = lost.set
        client.on_message = self._on_message
        client.on_disconnect = lambda *_: lost.set()
        if self._settings.mqtt_username:
            client.set_auth_credentials(self._settings.mqtt_username, self._settings.mqtt_password)
        return client

    async def _connect_once(self, lost: asyncio.Event) -> _Client:
        s = self._settings
        client = self._new_client(lost)
        tls: bool | ssl.SSLContext = False
        if s.mqtt_tls:
            tls = ssl.create_default_context(cafile=s.mqtt_tls_ca_file)
        try:
            await asyncio.wait_for(
                client.connect(
                    s.broker_host,
                    s.mqtt_port,
                    ssl=tls,
                    keepalive=s.mqtt_keepalive,
                    version=MQTTv50 if s.mqtt_version == 5 else MQTTv311,
                ),
                CONNECT_TIMEOUT,
            )
        except BaseException:
            # Refused, timed out waiting for the CONNACK, or cancelled by close(): the socket
            # may be open already, and nothing else holds this client to close it.
            _drop_link(client)
            raise
        return client

    async def _supervise(self) -> None:
        s = self._settings
        backoff = BACKOFF_FIRST
        failures = 0
        while not self._closing:
            lost = asyncio.Event()
            try:
                client = await self._connect_once(lost)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures += 1
                if failures == 1:
                    log.error(
                        "%s: cannot reach the MQTT broker at %s:%s (%s); retrying with backoff. "
                        "Set MQTT_BROKER/MQTT_PORT to a running broker.",
                        self._name,
                        s.broker_host,
                        s.mqtt_port,
                        exc or type(exc).__name__,
                    )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
                continue
            if failures or self.connects:
                log.info("%s: connected to MQTT broker %s:%s", self._name, s.broker_host, s.mqtt_port)
            failures, backoff = 0, BACKOFF_FIRST
            self.connects += 1
            self._client = client
            if self._closing:
                # close() came while connecting. Python 3.11's wait_for can swallow the cancel
                # it sent when the connect completes at the same moment; without this check
                # the supervisor would wait on the new link forever and close() with it.
                return
            for topic_filter, qos, _ in self._subs:
                client.subscribe(topic_filter, qos=qos)
            self._connected.set()
            await self._run_hooks()
            await lost.wait()
            self._connected.clear()
            self._client = None
            if self._closing:
                _drop_link(client)
                return
            log.warning("%s: lost the MQTT broker; reconnecting", self._name)
            try:
                await asyncio.wait_for(client.disconnect(), 1.0)
            except asyncio.CancelledError:  # close() came meanwhile
                _drop_link(client)
                raise
            except Exception:  # the link is already down
                _drop_link(client)

    async def _run_hooks(self) -> None:
        for hook in self._hooks:
            try:
                result = hook()
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("%s: connect hook failed", self._name)

    def _on_message(self, _client: Any, topic: str, payload: bytes, qos: int, props: Any) -> int:
        retained = bool(props.get("retain")) if isinstance(props, dict) else False
        for topic_filter, _, handler in self._subs:
            if topic_matches(topic_filter, topic):
                try:
                    handler(topic, payload, retained)
                except Exception:
                    self.handler_errors += 1
                    limited.exception(
                        f"{self._name} handler",
                        "%s: handler for %s failed; message dropped",
                        self._name,
                        topic[:200],
                    )
        return 0
