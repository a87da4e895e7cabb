"""Jobs submitted on the client host, stored by the server host, run by workers on other hosts."""

from __future__ import annotations

import pytest

from compute.plugins.registry import installed_tasks
from compute_bench.harness import wait_until
from compute_bench.inputs import Inputs
from compute_bench.plugins import PLUGINS, Source
from tests.support.hosted import FILE_PLANE, HostedCompute, Site

pytestmark = [pytest.mark.hosts, pytest.mark.timeout(600)]


def uploads(inputs: Inputs) -> list[tuple[str, dict[str, str], str, bytes, str]]:
    """One job of each task type, as the benchmark's plugins section submits it."""
    made = []
    for plugin in PLUGINS:
        source = Source(plugin, inputs)
        made.append((source.task, source.form, source.name, source.content, source.mime))
    return made


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
    if FILE_PLANE:  # the worker hosts did it all without seeing a file of the server host
        for host in site.workers:
            seen = host.run(["ls", "-A", str(compute.server_dir.parent)])
            assert seen.returncode != 0 and "No such file" in seen.stderr, seen
