"""A job submitted on the client host, stored by the server host, run by a worker on another host."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from compute_bench.harness import wait_until
from tests.support.hosted import HostedCompute, Site
from tests.support.images import png_bytes

pytestmark = [pytest.mark.hosts, pytest.mark.timeout(600)]


def test_image_conversion_runs_on_a_worker_host(site: Site, compute: HostedCompute) -> None:
    compute.start_worker(site.workers[0], "host-a-1", tasks="image_conversion")
    compute.wait_workers("host-a-1")
    [job_id] = compute.submit(
        [
            (
                "image_conversion",
                {"format": "webp", "quality": "80"},
                "photo.png",
                png_bytes((64, 48)),
                "image/png",
            )
        ]
    )
    wait_until(lambda: compute.count(f"job_id='{job_id}' AND status='completed'"), 120, "the job completed")
    [row] = compute.rows(f"job_id='{job_id}'")
    assert row["worker_id"] == "host-a-1" and row["attempt"] == 1
    job = compute.get(f"/jobs/{job_id}")
    output = compute.download(job_id, job["task_output"]["output_path"])
    with Image.open(io.BytesIO(output)) as image:
        assert (image.format, image.size) == ("WEBP", (64, 48))
