"""Hosts on one machine: Linux network namespaces on a private LAN, and the faults a LAN has.

Every host is a network namespace with one interface, `eth0`, whose veth peer is a port of a
bridge that lives in a namespace of its own (the LAN). Nothing is created in, routed through or
read from the root namespace: the veth pairs are made inside the namespaces, the addresses are in
198.18.0.0/15 (RFC 2544's benchmarking range), which exists only inside the run's namespaces, and
the test process reaches a host by running code on a thread that joined its namespace
(`Host.call`). So no address outside the run is ever a target, and runs never see each other.

Names: every namespace is `clhost-<pid>-<start>-<n>-<role>`, the pid and start time (clock ticks
since boot, /proc/<pid>/stat) of the process that made it. `sweep_stale()` removes the namespaces
and folders of runs whose process is gone (a crashed or killed pytest): it kills what still runs
in them, deletes them, and removes their folders. A live run is never touched, so several runs
(other engineers' sessions) go side by side.

Faults, each undone by its twin: `cut` / `restore` a host's link (its bridge port down: a pulled
cable, nothing arrives or leaves); `block` / `unblock` one address both ways (its packets silently
dropped into a dummy interface, on this host and on the host that owns the address), leaving
the host's other traffic alone; `kill_all`, every process of the host with SIGKILL (a host that dies);
`throttle`, a bandwidth cap both ways (tc's token bucket), so a transfer lasts long enough to be
interrupted mid-way.

Needs root and iproute2 (`ip`, `tc`); `unavailable()` says why a machine cannot run it.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import ctypes
import functools
import itertools
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

__all__ = ["PREFIX", "Host", "Lan", "sweep_stale", "unavailable"]

T = TypeVar("T")

PREFIX = "clhost"
NETNS_DIR = Path("/run/netns")
CLONE_NEWNET = 0x40000000
#: The routing table that sends everything into a host's `sink` (Host.block).
SINK_TABLE = "99"
_counter = itertools.count(1)


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=False)
    if check and result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")
    return result


def _tc(*args: str) -> None:
    result = subprocess.run(["tc", *args], capture_output=True, text=True, timeout=30, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"tc {' '.join(args)}: {result.stderr.strip()}")


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot, or None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22 of stat, counted after the name


@functools.cache
def unavailable() -> str | None:
    """Why this machine cannot run hosts in network namespaces, or None when it can."""
    if os.geteuid() != 0:
        return "needs root (network namespaces: ip netns, veth pairs)"
    for tool, package in (("ip", "iproute2"), ("tc", "iproute2")):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed (Debian package {package})"
    probe = f"{PREFIX}-{os.getpid()}-{_start_time(os.getpid())}-probe"
    made = _ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"`ip netns add` fails here: {made.stderr.strip()}"
    try:
        veth = _ip("-n", probe, "link", "add", "eth0", "type", "veth", "peer", "name", "eth1", check=False)
        if veth.returncode != 0:
            return f"cannot make a veth pair in a network namespace: {veth.stderr.strip()}"
    finally:
        _ip("netns", "del", probe, check=False)
    return None


# -- joining a namespace from a thread -----------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)


def _join(netns: str) -> None:
    """Move the calling thread (only it: a network namespace is per thread) into `netns`."""
    fd = os.open(NETNS_DIR / netns, os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"setns into {netns}: {os.strerror(errno)}")
    finally:
        os.close(fd)


# -- stale runs ----------------------------------------------------------------------------------


def _owner_alive(name: str) -> bool:
    """Whether the process that made `clhost-<pid>-<start>-...` still runs."""
    parts = name.split("-")
    if len(parts) < 3 or not parts[1].isdigit():
        return False
    return _start_time(int(parts[1])) == parts[2]


def _namespaces() -> list[str]:
    listed = _ip("netns", "list", check=False).stdout
    return [line.split()[0] for line in listed.splitlines() if line.strip()]


def _kill_netns_processes(netns: str, deadline: float = 10.0) -> None:
    """SIGKILL every process in `netns` until none is left (a dying parent may fork meanwhile)."""
    end = time.monotonic() + deadline
    while True:
        pids = [int(p) for p in _ip("netns", "pids", netns, check=False).stdout.split()]
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if time.monotonic() > end:
            raise RuntimeError(f"processes {pids} in {netns} survive SIGKILL")
        time.sleep(0.05)


def _delete_netns(netns: str) -> None:
    _kill_netns_processes(netns)
    _ip("netns", "del", netns, check=False)


def sweep_stale() -> list[str]:
    """Remove the namespaces and folders of runs whose process is gone; returns what went."""
    gone: list[str] = []
    for netns in _namespaces():
        if netns.startswith(PREFIX + "-") and not _owner_alive(netns):
            _delete_netns(netns)
            gone.append(netns)
    for folder in Path(tempfile.gettempdir()).glob(PREFIX + "-*"):
        if folder.is_dir() and not _owner_alive(folder.name):
            shutil.rmtree(folder, ignore_errors=True)
            gone.append(str(folder))
    return gone


# -- the LAN and its hosts -----------------------------------------------------------------------


@dataclass
class Host:
    """One machine: a network namespace with `eth0` on the LAN, its addresses, its processes."""

    lan: Lan
    role: str
    netns: str
    #: The bridge port (in the LAN's namespace) that is this host's cable.
    port: str
    addresses: tuple[str, ...]
    #: Folders no process of this host may see: each is covered by an empty tmpfs in the
    #: process's own mount namespace (`ip netns exec` gives every process one).
    hidden: tuple[Path, ...] = ()
    #: What spawn() started, reaped by stop_all() / Lan.close().
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    _threads: concurrent.futures.ThreadPoolExecutor | None = None
    _blocked: list[tuple[Host, str]] = field(default_factory=list)

    @property
    def address(self) -> str:
        return self.addresses[0]

    # -- processes -----------------------------------------------------------------------------

    def command(self, cmd: Sequence[str]) -> list[str]:
        """`cmd` as run on this host: in its network namespace, under its own host name (a UTS
        namespace: worker ids and logs name the host, as on separate machines), with the hidden
        folders covered. Every step execs the next, so the process started is `cmd` itself."""
        script = (
            'hostname "$1"; shift; '
            'while [ "$1" != -- ]; do mount -t tmpfs -o ro,size=4k,mode=0 hidden "$1"; shift; done; '
            'shift; exec "$@"'
        )
        wrapped = ["ip", "netns", "exec", self.netns, "unshare", "--uts", "sh", "-ec", script, "sh"]
        return [*wrapped, self.role, *map(str, self.hidden), "--", *cmd]

    def spawn(
        self, cmd: Sequence[str], *, log: Path, env: Mapping[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """Start `cmd` on this host, its output appended to `log`."""
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                self.command(cmd),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=None if env is None else dict(env),
            )
        self.processes.append(proc)
        return proc

    def run(
        self, cmd: Sequence[str], *, env: Mapping[str, str] | None = None, timeout: float = 120.0
    ) -> subprocess.CompletedProcess[str]:
        """Run `cmd` on this host to its end; its output is returned, not checked."""
        return subprocess.run(
            self.command(cmd),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            stdin=subprocess.DEVNULL,
            env=None if env is None else dict(env),
        )

    def pids(self) -> list[int]:
        return [int(p) for p in _ip("netns", "pids", self.netns, check=False).stdout.split()]

    def commands(self) -> dict[int, str]:
        """What runs on this host: pid -> command name (/proc/<pid>/comm)."""
        found = {}
        for pid in self.pids():
            with contextlib.suppress(OSError):
                found[pid] = Path(f"/proc/{pid}/comm").read_text().strip()
        return found

    def kill_all(self) -> None:
        """The host dies: SIGKILL to every process in it (reaped, so none lingers as a zombie)."""
        _kill_netns_processes(self.netns)
        self._reap(0.0)

    def _reap(self, grace: float) -> None:
        end = time.monotonic() + grace
        for proc in self.processes:
            try:
                proc.wait(max(0.0, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def stop_all(self, grace: float = 10.0) -> None:
        """SIGTERM to the processes this host started (after SIGCONT), then kill what is left."""
        for proc in self.processes:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGCONT)
                    proc.send_signal(signal.SIGTERM)
        self._reap(grace)
        _kill_netns_processes(self.netns)
        self.processes.clear()

    # -- the test's own code on this host ------------------------------------------------------

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run `fn` on a thread inside this host's network namespace and return its result.

        Sockets belong to the namespace of the thread that opens them, so a client opened in
        `fn` (httpx, psycopg, an asyncio loop run there) talks from this host. A pool of a few
        threads, so a long call (a burst of uploads) does not block a short one (a count).
        """
        return self.start(fn, *args, **kwargs).result()

    def start(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> concurrent.futures.Future[T]:
        """call() in the background: `fn`'s future."""
        if self._threads is None:
            self._threads = concurrent.futures.ThreadPoolExecutor(
                max_workers=4, thread_name_prefix=self.role, initializer=_join, initargs=(self.netns,)
            )
        return self._threads.submit(fn, *args, **kwargs)

    # -- faults --------------------------------------------------------------------------------

    def cut(self) -> None:
        """Pull the cable: the host's bridge port goes down, nothing reaches it or leaves it."""
        _ip("-n", self.lan.netns, "link", "set", self.port, "down")

    def restore(self) -> None:
        _ip("-n", self.lan.netns, "link", "set", self.port, "up")

    def block(self, owner: Host, address: str) -> None:
        """Nothing passes between this host and `address` (one of `owner`'s), either way.

        Packets are dropped silently, as by a firewall or a dead switch port: they are routed
        into `sink`, an interface that discards what it is given (a blackhole route would answer
        the sender at once with EINVAL, which no real network does). Outgoing: a route
        for `address` into this host's sink. Incoming: a rule on `owner` that sends what
        `address` addresses to this host through a table whose only route is the owner's sink;
        the owner's other addresses still reach us.
        """
        assert address in owner.addresses, f"{address} is not an address of {owner.role}"
        self._sink()
        owner._sink()
        _ip("-n", self.netns, "route", "add", f"{address}/32", "dev", "sink")
        for mine in self.addresses:
            _ip("-n", owner.netns, "rule", "add", "from", address, "to", mine, "lookup", SINK_TABLE)
        self._blocked.append((owner, address))

    def unblock(self, owner: Host, address: str) -> None:
        _ip("-n", self.netns, "route", "del", f"{address}/32", "dev", "sink", check=False)
        for mine in self.addresses:
            _ip(
                "-n",
                owner.netns,
                "rule",
                "del",
                "from",
                address,
                "to",
                mine,
                "lookup",
                SINK_TABLE,
                check=False,
            )
        with contextlib.suppress(ValueError):
            self._blocked.remove((owner, address))

    def _sink(self) -> None:
        """The interface `sink` and routing table SINK_TABLE (everything into it), once.

        `sink` is one end of a veth pair whose other end stays down: what is sent into it is
        dropped without a word to the sender, and with ARP off nothing waits on (or fails) a
        neighbour look-up first. (A dummy interface would do, but its kernel module is not
        everywhere.)
        """
        if _ip("-n", self.netns, "link", "show", "sink", check=False).returncode == 0:
            return
        _ip("-n", self.netns, "link", "add", "sink", "type", "veth", "peer", "name", "sink-peer")
        _ip("-n", self.netns, "link", "set", "sink", "arp", "off")
        _ip("-n", self.netns, "link", "set", "sink", "up")
        _ip("-n", self.netns, "route", "add", "default", "dev", "sink", "table", SINK_TABLE)

    def throttle(self, rate: str | None) -> None:
        """Cap the link at `rate` (tc syntax, e.g. "16mbit") each way; None lifts the cap."""
        for netns, dev in ((self.netns, "eth0"), (self.lan.netns, self.port)):
            if rate is None:
                subprocess.run(
                    ["tc", "-n", netns, "qdisc", "del", "dev", dev, "root"], capture_output=True, check=False
                )
            else:
                _tc("-n", netns, "qdisc", "replace", "dev", dev, "root", "tbf", "rate", rate,
                    "burst", "64kb", "latency", "2s")  # fmt: skip

    def heal(self) -> None:
        """Undo every fault on the link: plugged in, nothing blocked, no cap."""
        self.restore()
        for owner, address in list(self._blocked):
            self.unblock(owner, address)
        self.throttle(None)

    def traffic(self) -> tuple[int, int]:
        """Bytes received and sent on eth0 so far."""
        shown = json.loads(_ip("-n", self.netns, "-s", "-j", "link", "show", "eth0").stdout)
        stats = shown[0]["stats64"]
        return int(stats["rx"]["bytes"]), int(stats["tx"]["bytes"])

    def close_threads(self) -> None:
        if self._threads is not None:
            self._threads.shutdown(wait=True, cancel_futures=True)
            self._threads = None


class Lan:
    """A bridge in a namespace of its own, and hosts plugged into it.

    Also owns the run's folder, `/tmp/clhost-<pid>-<start>-<n>` (0755, so a service that drops
    root, PostgreSQL, can reach its part), removed by close() or by the next sweep.
    """

    SUBNET_BITS = 24

    def __init__(self) -> None:
        self.run_id = f"{PREFIX}-{os.getpid()}-{_start_time(os.getpid())}-{next(_counter)}"
        self.netns = f"{self.run_id}-lan"
        self.hosts: dict[str, Host] = {}
        self.folder = Path(tempfile.gettempdir()) / self.run_id
        self.folder.mkdir(mode=0o755)
        self.folder.chmod(0o755)
        try:
            _ip("netns", "add", self.netns)
            _ip("-n", self.netns, "link", "add", "br0", "type", "bridge")
            _ip("-n", self.netns, "link", "set", "br0", "up")
        except BaseException:
            self.close()
            raise

    def host(self, role: str, *addresses: str) -> Host:
        """A new host named `role` with `addresses` on its eth0 (the first is its own)."""
        assert role not in self.hosts and role.replace("-", "").isalnum(), role
        netns = f"{self.run_id}-{role}"
        port = f"p{len(self.hosts) + 1}"
        host = Host(self, role, netns, port, tuple(addresses))
        self.hosts[role] = host
        _ip("netns", "add", netns)
        _ip("-n", netns, "link", "set", "lo", "up")
        # Made inside the host's namespace, the peer moved straight into the LAN's: never in ours.
        _ip("-n", netns, "link", "add", "eth0", "type", "veth", "peer", "name", port, "netns", self.netns)
        _ip("-n", self.netns, "link", "set", port, "master", "br0")
        _ip("-n", self.netns, "link", "set", port, "up")
        for address in addresses:
            _ip("-n", netns, "addr", "add", f"{address}/{self.SUBNET_BITS}", "dev", "eth0")
        _ip("-n", netns, "link", "set", "eth0", "up")
        return host

    def folder_of(self, host: Host) -> Path:
        """The host's own folder in the run's folder (made on first use)."""
        path = self.folder / host.role
        path.mkdir(exist_ok=True)
        return path

    def close(self) -> None:
        """Kill every host's processes, delete the namespaces and the run's folder."""
        for host in self.hosts.values():
            host.close_threads()
            with contextlib.suppress(Exception):
                host.stop_all(grace=5.0)
            _delete_netns(host.netns)
        if NETNS_DIR.joinpath(self.netns).exists():
            _delete_netns(self.netns)
        shutil.rmtree(self.folder, ignore_errors=True)

    @contextlib.contextmanager
    def opened(self) -> Iterator[Lan]:
        try:
            yield self
        finally:
            self.close()
