"""Jobs submitted on the client host, stored by the server host, run by workers on other hosts."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from compute.plugins.registry import installed_tasks
from compute_bench.harness import wait_until
from compute_bench.hosts.hosted import BIN, SERVER, HostedCompute, Site, Worker, clean_environ
from compute_bench.inputs import Inputs
from compute_bench.plugins import PLUGINS
from tests.support.uploads import uploads

pytestmark = [pytest.mark.hosts, pytest.mark.timeout(600)]


def test_every_task_type_runs_on_worker_hosts(site: Site, compute: HostedCompute, inputs: Inputs) -> None:
    assert {p.task for p in PLUGINS} == set(installed_tasks()), "a task type is missing from the list"
    for host, worker_id in zip(site.workers, ("host-a-1", "host-b-1"), strict=True):
        compute.start_worker(host, worker_id)
    compute.wait_workers("host-a-1", "host-b-1")
    job_ids = compute.submit(uploads(inputs))
    wait_until(
        lambda: compute.count("status IN ('completed', 'failed')") == len(job_ids), 300, "every job finished"
    )
    rows = {r["job_id"]: r for r in compute.rows()}
    failed = {r["task_type"]: r["error_message"] for r in rows.values() if r["status"] != "completed"}
    assert not failed, failed
    for job_id in job_ids:
        assert rows[job_id]["worker_id"] in {"host-a-1", "host-b-1"} and rows[job_id]["attempt"] == 1
        compute.outputs(job_id)
    # The worker hosts did it all without seeing a file of the server host.
    for host in site.workers:
        seen = host.run(["ls", "-A", str(compute.server_dir.parent)])
        assert seen.returncode != 0 and "No such file" in seen.stderr, seen


def test_a_worker_host_set_up_as_the_readme_says(
    site: Site, database: tuple[str, str], inputs: Inputs, tmp_path: Path
) -> None:
    """docs/operations.md, "Workers on other machines", word for word where it can be: the server with its
    embedded broker listening beyond 127.0.0.1, the worker given the database, the broker's
    generated password and the server's URL; each machine its own home folder. Only the
    addresses and the database's password differ, and auth is off as in every test here."""
    tag, url = database
    server_home, worker_home = (site.lan.folder_of(h) / tag / "home" for h in (site.server, site.workers[0]))
    view = site.deployment(tag, url, tmp_path)
    try:
        server_env = {
            **clean_environ(os.environ),
            "HOME": str(server_home),
            "DATABASE_URL": url,
            "MQTT_EMBEDDED_BIND": "0.0.0.0",
            "AUTH_DISABLED": "true",
        }
        server_home.mkdir(parents=True)
        done = site.server.run([str(BIN / "compute-migrate")], env=server_env)
        assert done.returncode == 0, done.stderr
        view.servers["server"] = site.server.spawn(
            [str(BIN / "compute-server"), "--port", "8002"], env=server_env, log=tmp_path / "server.log"
        )
        view.wait_ready(view.servers["server"], "server")
        password = (server_home / ".cl_server" / "mqtt_password").read_text().strip()

        view.prepare_worker_host(site.workers[0], worker_home / ".cl_server")
        worker_env = {
            **clean_environ(os.environ),
            "HOME": str(worker_home),
            "DATABASE_URL": url,
            "MQTT_BROKER": SERVER,
            "MQTT_USERNAME": "compute",
            "MQTT_PASSWORD": password,
            "COMPUTE_SERVER_URL": f"http://{SERVER}:8002",
        }
        tasks = "clip_embedding,dino_embedding,face_detection,face_embedding"
        proc = site.workers[0].spawn(
            [str(BIN / "compute-worker"), "--tasks", tasks], env=worker_env, log=tmp_path / "worker.log"
        )
        view.workers["worker"] = Worker(site.workers[0], "worker", proc)
        ml = [u for u in uploads(inputs) if u[0] in tasks.split(",")]
        job_ids = view.submit(ml)
        wait_until(lambda: view.count("status = 'completed'") == len(ml), 300, "the ML jobs completed")
        # The worker took a slot id under its own host's name, not the server's.
        assert {r["worker_id"] for r in view.rows()} == {"worker-worker-a-1"}
        for job_id in job_ids:
            view.outputs(job_id)
    finally:
        view.stop()
