"""Command lines: compute-migrate, compute-server, compute-worker.

Environment is read here, once, into Settings; flags override it (load_settings' overrides).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import functools
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from compute import deathsignal
from compute.config import Settings, load_settings
from compute.errors import ComputeError, ConfigError, NotMigrated, ServerUnavailable
from compute.logs import logging_config, setup_logging
from compute.worker.identity import WorkerSlot, claim_slot

if TYPE_CHECKING:
    from compute.worker.service import WorkerService

log = logging.getLogger("compute")


def _schema_problem(database_url: str) -> str | None:
    """Why the database cannot be used yet (tables missing: run compute-migrate), or None."""
    from compute.db.session import check_migrated, make_engine

    engine = make_engine(database_url)
    try:
        check_migrated(engine)
    except NotMigrated as exc:
        return str(exc)
    finally:
        engine.dispose()
    return None


def _made(cl_server_dir: Path) -> str | None:
    """Why CL_SERVER_DIR cannot be made (with its parents), or None once it is there."""
    try:
        cl_server_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return f"CL_SERVER_DIR {cl_server_dir} cannot be made: {exc.strerror or exc}"
    return None


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def _add_broker_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mqtt-broker", help="MQTT broker host (MQTT_BROKER)")
    parser.add_argument("--mqtt-port", type=int, help="MQTT broker port (MQTT_PORT, default 1883)")
    parser.add_argument("--log-level", help="DEBUG, INFO, WARNING ... (LOG_LEVEL, default INFO)")


def _broker_overrides(args: argparse.Namespace) -> dict[str, str]:
    """The broker and log flags as settings overrides (variable name -> value), for load_settings."""
    return {
        var: str(flag)
        for flag, var in (
            (args.mqtt_broker, "MQTT_BROKER"),
            (args.mqtt_port, "MQTT_PORT"),
            (args.log_level, "LOG_LEVEL"),
        )
        if flag is not None
    }


# -- compute-migrate ----------------------------------------------------------------------


def migrate_main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="compute-migrate",
        description="Create CL_SERVER_DIR and bring the database to the latest schema.",
    )
    parser.parse_args(argv)
    from compute.db.migrate import upgrade_head

    try:
        settings = load_settings()
    except ConfigError as exc:
        return _fail(str(exc))
    if (problem := _made(settings.cl_server_dir)) is not None:
        return _fail(problem)
    try:
        upgrade_head(settings.database_url)
    except Exception as exc:
        return _fail(f"migration failed for {settings.database_url}: {exc}")
    print(f"database ready: {settings.database_url}")
    return 0


# -- compute-models -----------------------------------------------------------------------


def models_main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="compute-models",
        description="List the ML plugins' model files: present, missing or corrupt. "
        "Exit status 0 when every model is present and sound, 1 otherwise.",
    )
    parser.add_argument(
        "--record",
        action="store_true",
        help="record the checksums of the model files present now (SHA256SUMS), "
        "so later runs detect files that changed",
    )
    args = parser.parse_args(argv)
    from compute.plugins import environment, models

    try:
        settings = load_settings()
    except ConfigError as exc:
        return _fail(str(exc))
    environment.configure(settings)
    print(f"models folder: {settings.models_dir} (COMPUTE_MODELS_DIR)")
    if args.record:
        if not settings.models_dir.is_dir():
            return _fail(f"models folder {settings.models_dir} does not exist")
        print(f"recorded checksums in {models.record_checksums()}")
    statuses = models.check_all()
    for st in statuses:
        line = f"{st.state:8} {st.task:16} {st.spec.filename:40} {st.spec.title}"
        print(line + (f": {st.detail}" if st.detail else ""))
        if st.state == "missing":
            print(f"{'':8} {'':16} get it from {st.spec.source} ({st.spec.licence})")
    return 0 if all(st.state == "ok" for st in statuses) else 1


# -- compute-server -----------------------------------------------------------------------


def server_main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="compute-server", description="Run the Compute HTTP server.")
    parser.add_argument("--host", default="0.0.0.0", help="bind address (default 0.0.0.0)")
    parser.add_argument("--port", type=int, default=8002, help="HTTP port (default 8002)")
    parser.add_argument("--reload", action="store_true", help="restart on code changes (development)")
    parser.add_argument("--no-auth", action="store_true", help="disable JWT checks (AUTH_DISABLED)")
    parser.add_argument(
        "--workers",
        type=int,
        default=0,
        metavar="N",
        help="also start N compute-worker processes (default 0)",
    )
    _add_broker_flags(parser)
    args = parser.parse_args(argv)

    overrides = _broker_overrides(args)
    if args.no_auth:
        overrides["AUTH_DISABLED"] = "true"
    try:
        settings = load_settings(overrides=overrides)
    except ConfigError as exc:
        return _fail(str(exc))
    setup_logging(settings.log_level, settings.log_format)
    if (problem := _made(settings.cl_server_dir)) is not None:
        return _fail(problem)

    missing = _schema_problem(settings.database_url)
    if missing:
        return _fail(missing)
    from compute.server.descriptors import raise_open_file_limit

    raise_open_file_limit()  # before anything opens: its children (--reload, workers) inherit it

    import uvicorn

    url = local_url(args.host, args.port)
    workers = _spawn_workers_when_ready(args.workers, url, overrides) if args.workers else None
    # uvicorn shuts down on SIGTERM, then raises the signal again to the handler it found:
    # with the default one the process would die before stopping its workers.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    # Ours, not uvicorn's: the same lines (secrets redacted) from uvicorn, the app and the
    # --reload child, which would otherwise log through uvicorn's handlers or through none.
    log_config = logging_config(settings.log_level, settings.log_format)
    try:
        if args.reload:
            # uvicorn --reload builds the app in a subprocess, from the environment
            # (app_from_env): only here do the flags still pass through os.environ.
            os.environ.update(overrides)
            uvicorn.run(
                "compute.cli:app_from_env",
                factory=True,
                host=args.host,
                port=args.port,
                reload=True,
                log_level=settings.log_level.lower(),
                http="compute.cli:http_protocol_from_env",
                access_log=False,  # docs/http-api.md: no access log (it would hold ?access_token=)
                log_config=log_config,
            )
        else:
            from compute.server.app import create_app
            from compute.server.serving import StreamClosingServer, http_protocol, stated_startup_errors

            failed: list[bool] = []

            def stop_serving() -> None:  # a background task the server needs failed (logged)
                failed.append(True)
                web.should_exit = True

            try:
                app = create_app(settings, on_fatal=stop_serving)
            except ComputeError as exc:
                return _fail(str(exc))
            config = uvicorn.Config(
                stated_startup_errors(app),
                host=args.host,
                port=args.port,
                log_level=settings.log_level.lower(),
                loop="uvloop",
                http=http_protocol(
                    settings.header_read_timeout,
                    send_timeout=settings.http_send_timeout,
                    max_connections=app.state.services.budget.connections,
                ),
                access_log=False,
                log_config=log_config,
            )
            log.info("open files: %s", app.state.services.budget.describe())
            web = StreamClosingServer(config, app.state.services.changes.close)
            try:
                web.run()
            except SystemExit:  # uvicorn's after a failed startup
                if app.state.startup_error is not None:
                    return _fail(str(app.state.startup_error))
                raise
            if failed:
                return 1
    finally:
        if workers is not None:
            workers.stop()
    return 0


def app_from_env():  # type: ignore[no-untyped-def]
    """uvicorn --reload factory: the app built from the environment."""
    from compute.server.app import create_app

    return create_app(load_settings())


def http_protocol_from_env(**kwargs: Any) -> asyncio.Protocol:
    """uvicorn --reload's `http=` (called for each connection): the protocol compute-server
    uses, with the header deadline read from the environment like the app."""
    return _reload_protocol()(**kwargs)


@functools.cache
def _reload_protocol() -> type[asyncio.Protocol]:
    from compute.server.descriptors import DescriptorBudget
    from compute.server.serving import http_protocol

    settings = load_settings()
    return http_protocol(
        settings.header_read_timeout,
        send_timeout=settings.http_send_timeout,
        max_connections=DescriptorBudget.for_process().connections,
    )


def _exit_on_sigterm(_sig: int, _frame: object) -> None:
    sys.exit(0)  # unwinds through server_main's finally, which stops the workers


#: Seconds compute-server's workers have to finish their job when it stops, then to leave.
STOP_GRACE, LEAVE_GRACE = 10.0, 5.0
_STOP_STEPS = ((signal.SIGTERM, STOP_GRACE), (signal.SIGTERM, LEAVE_GRACE), (signal.SIGKILL, 5.0))


class _WorkerProcesses:
    """compute-server --workers N: its workers, stopped with one SIGTERM each.

    A worker exits at once on a second signal, so it must get one: the thread that started the
    workers stays until they are reaped, because their parent-death signal (SIGTERM, for when
    the server dies without stopping them) fires when that thread ends, not the process.
    """

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        #: No more workers are started.
        self.stopping = threading.Event()
        #: Every worker started has exited: the starting thread may end.
        self.reaped = threading.Event()
        self._lock = threading.Lock()

    def start(self, cmd: list[str], env: dict[str, str], preexec: Callable[[], None] | None) -> bool:
        with self._lock:
            if self.stopping.is_set():
                return False
            self.procs.append(subprocess.Popen(cmd, env=env, preexec_fn=preexec))
            return True

    def stop(self) -> None:
        """SIGTERM: each worker finishes its job and says goodbye. One still running after
        STOP_GRACE gets a second SIGTERM (it leaves at once, clearing its CL Server capability,
        which no Will covers), and SIGKILL after LEAVE_GRACE more."""
        with self._lock:
            self.stopping.set()
            procs = list(self.procs)
        for how, grace in (
            (signal.SIGTERM, STOP_GRACE),
            (signal.SIGTERM, LEAVE_GRACE),
            (signal.SIGKILL, 5.0),
        ):
            running = [p for p in procs if p.poll() is None]
            for p in running:
                p.send_signal(how)
            deadline = time.monotonic() + grace
            for p in running:
                try:
                    p.wait(max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    pass
        self.reaped.set()


def local_url(host: str, port: int) -> str:
    """How a process on this machine reaches a server bound to `host`: the loopback address
    for a wildcard bind, else that address (a server bound to one interface does not answer
    on 127.0.0.1)."""
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _spawn_workers_when_ready(count: int, url: str, overrides: dict[str, str]) -> _WorkerProcesses:
    group = _WorkerProcesses()

    def spawn() -> None:
        while not group.stopping.is_set() and not _server_answers(url + "/"):
            group.stopping.wait(0.2)
        die_with_parent = deathsignal.preexec(signal.SIGTERM)
        # No --worker-id: each takes a slot (worker/identity.py), the same after a restart.
        cmd = [sys.executable, "-m", "compute.cli", "worker", "--server-url", url]
        # The server's flags (broker, log level ...) apply to its workers too.
        env = {k: v for k, v in {**os.environ, **overrides}.items() if k != "WORKER_ID"}
        for _ in range(count):
            if not group.start(cmd, env, die_with_parent):
                break
        group.reaped.wait()  # see _WorkerProcesses

    threading.Thread(target=spawn, name="spawn-workers", daemon=True).start()
    return group


# -- compute-worker -----------------------------------------------------------------------


def _server_answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2.0).status_code < 500
    except httpx.HTTPError:
        return False


def worker_main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="compute-worker", description="Run a Compute worker (claims and runs jobs)."
    )
    parser.add_argument(
        "--worker-id", help="unique worker id (WORKER_ID; default worker-<host>-<n>, n the first free slot)"
    )
    parser.add_argument("--tasks", help="comma-separated task types (WORKER_SUPPORTED_TASKS)")
    parser.add_argument(
        "--concurrency",
        help="jobs of a task run at once, e.g. image_resize=4,media_thumbnail=2 (WORKER_CONCURRENCY; "
        "default 1: one job at a time)",
    )
    parser.add_argument(
        "--batch",
        help="queued jobs of a task one plugin process takes together, e.g. clip_embedding=8 "
        "(WORKER_BATCH; tasks whose model takes a batch; default 1: one job per call)",
    )
    parser.add_argument("--port", type=int, help="port of the local compute server (default 8002)")
    parser.add_argument("--server-url", help="URL of the compute server (COMPUTE_SERVER_URL)")
    _add_broker_flags(parser)
    args = parser.parse_args(argv)

    overrides = _broker_overrides(args)
    for flag, var in (
        (args.port, "COMPUTE_PORT"),
        (args.server_url, "COMPUTE_SERVER_URL"),
        (args.worker_id, "WORKER_ID"),
        (args.tasks, "WORKER_SUPPORTED_TASKS"),
        (args.concurrency, "WORKER_CONCURRENCY"),
        (args.batch, "WORKER_BATCH"),
    ):
        if flag is not None:
            overrides[var] = str(flag)
    slot: WorkerSlot | None = None
    try:
        settings = load_settings(overrides=overrides)
        _check_worker_prerequisites(settings)
        if "WORKER_ID" not in overrides and not os.environ.get("WORKER_ID"):
            # Held until the process ends: the same id after a restart, a new one beside it.
            slot = claim_slot(settings.cl_server_dir, socket.gethostname())
            settings = dataclasses.replace(settings, worker_id=slot.ident)
    except (ComputeError, ValueError, OSError) as exc:
        return _fail(str(exc))
    setup_logging(settings.log_level, settings.log_format)
    try:
        return asyncio.run(_run_worker(settings))
    finally:
        if slot is not None:
            slot.release()


def _check_worker_prerequisites(settings: Settings) -> None:
    from compute.db.session import is_sqlite
    from compute.topics import check_segment

    check_segment(settings.worker_id, "worker id")
    if not settings.cl_server_dir.is_dir() and not is_sqlite(settings.database_url):
        # A worker on a host of its own: the folder holds only its slots and scratch folders.
        settings.cl_server_dir.mkdir(parents=True)
    if not settings.cl_server_dir.is_dir():
        raise ConfigError(
            f"CL_SERVER_DIR {settings.cl_server_dir} does not exist: start compute-server "
            "(and run compute-migrate) first, or set CL_SERVER_DIR"
        )
    if not _server_answers(settings.server_url + "/"):
        raise ServerUnavailable(
            f"compute server does not answer at {settings.server_url}: start compute-server "
            "first, or pass --port / --server-url"
        )


async def _run_worker(settings: Settings) -> int:
    from compute.plugins import environment
    from compute.plugins.registry import UnavailableTasks, UnknownTasks, load_tasks
    from compute.worker.service import WorkerService

    environment.configure(settings)
    try:
        tasks = load_tasks(settings.worker_tasks)
    except (UnknownTasks, UnavailableTasks) as exc:
        return _fail(str(exc))
    if not tasks:
        return _fail("no task can run on this machine (see the warnings above and `compute-models`)")
    for var, named in (
        ("WORKER_CONCURRENCY", settings.worker_concurrency),
        ("WORKER_BATCH", settings.worker_batch),
    ):
        strangers = sorted(set(named) - set(tasks))
        if strangers:  # one setting may serve workers of different tasks: not an error
            log.info("%s: %s not run by this worker, ignored", var, ", ".join(strangers))
    missing = _schema_problem(settings.database_url)
    if missing:
        return _fail(missing)
    try:
        service = WorkerService.build(settings, tasks)
    except ConfigError as exc:
        return _fail(str(exc))
    worker = service.worker

    loop = asyncio.get_running_loop()
    signals = 0
    leaving: list[asyncio.Task[None]] = []  # held: the loop keeps only weak references

    def on_signal() -> None:
        nonlocal signals
        signals += 1
        if signals == 1:
            log.info("stopping: handing the running job back to the queue (signal again to exit at once)")
            worker.stop()
        elif signals == 2:
            # At once, but without leaving a CL Server capability that says "idle" behind (a
            # service manager and compute-server may both send SIGTERM): the Wills cover the rest.
            log.info("exiting at once; the current job is left to the server's rescue")
            leaving.append(loop.create_task(_leave_at_once(service), name="leave-at-once"))
        else:
            os._exit(1)

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    await service.connect()
    log.info("worker %s ready for %s", settings.worker_id, ", ".join(tasks))
    try:
        await worker.run()
    finally:
        log.info(
            "worker %s stopped: %d jobs run, %d empty claims",
            settings.worker_id,
            worker.jobs_run,
            worker.empty_claims,
        )
        await service.close()
    return 0


async def _leave_at_once(service: WorkerService) -> None:
    try:
        await service.withdraw()
    finally:
        os._exit(1)


def _dispatch(argv: list[str]) -> int:
    commands = {"migrate": migrate_main, "server": server_main, "worker": worker_main, "models": models_main}
    if not argv or argv[0] not in commands:
        return _fail("usage: python -m compute.cli {migrate|server|worker|models} [options]")
    return commands[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(_dispatch(sys.argv[1:]))
