"""POST /jobs/image_resize through a real worker: the result is the size asked for, in the upload's format."""

from __future__ import annotations

import io

from PIL import Image

from tests.support.inprocess import Server, WorkerFactory
from tests.support.jobs import download, run_job


def image_bytes(size: tuple[int, int], fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (30, 160, 90)).save(buf, format=fmt)
    return buf.getvalue()


async def test_fit_and_exact_through_a_worker(server: Server, start_worker: WorkerFactory) -> None:
    await start_worker(tasks=("image_resize",))

    # A JPEG named like a PNG with a path in it: the output is named after what the bytes are.
    fit = await run_job(
        server,
        "image_resize",
        image_bytes((300, 200), "JPEG"),
        "../holiday.png",
        {"width": "60", "height": "60", "maintain_aspect_ratio": "true"},
    )
    assert fit["params"]["output_path"] == "output/resized.jpg"
    assert fit["params"]["input_path"] == "input/upload.jpg"
    assert fit["params"]["maintain_aspect_ratio"] is True
    assert fit["params"]["original_filename"] == "../holiday.png"
    assert fit["task_output"] == {"output_path": "output/resized.jpg", "width": 60, "height": 40}
    with Image.open(io.BytesIO(await download(server, fit["job_id"], "output/resized.jpg"))) as out:
        assert (out.format, out.size) == ("JPEG", (60, 40))

    exact = await run_job(
        server, "image_resize", image_bytes((300, 200), "PNG"), "a.png", {"width": "50", "height": "70"}
    )  # exact by default, as in cl_ml_tools
    assert exact["task_output"] == {"output_path": "output/resized.png", "width": 50, "height": 70}
    with Image.open(io.BytesIO(await download(server, exact["job_id"], "output/resized.png"))) as out:
        assert (out.format, out.size) == ("PNG", (50, 70))
