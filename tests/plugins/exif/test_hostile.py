"""What exif refuses at the door (415, 413, 422, leaving no job folder), what fails as a job, and
what a worker without exiftool says."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from cl_ml_tools import Job

from compute.jobs import DEFAULT_MAX_RESULT_BYTES, result_bytes
from compute.plugins.environment import PluginEnvironment
from compute.plugins.exif.algorithm import TRUNCATED_FIELD
from compute.plugins.exif.task import ExifParams, ExifTask
from tests.support.exif_samples import (
    BROKEN_MPEG,
    needs_exiftool,
    photo,
    png_with_xmp,
    xmp_description,
    xmp_labels,
)
from tests.support.images import png_header_only
from tests.support.inprocess import Server, WorkerFactory
from tests.support.jobs import jobs_left, post_job


async def post(server: Server, content: bytes, data: dict[str, str] | None = None) -> tuple[int, str]:
    return await post_job(server, "exif", content, data)


async def test_unknown_file_is_415(server: Server) -> None:
    status, text = await post(server, b"<html><body>not media</body></html>" * 4)
    assert status == 415 and "unrecognised format" in text and "image/jpeg" in text
    assert jobs_left(server) == []


@pytest.mark.parametrize(
    "tags",
    ["Make,-w", "Make;Model", "if $x", "EXIF:Make", ",".join(["Make"] * 201)],
    ids=["option", "semicolon", "expression", "group", "too-many"],
)
async def test_impossible_tag_names_are_422(server: Server, tags: str) -> None:
    status, text = await post(server, photo(), {"tags": tags})
    assert status == 422, text
    assert jobs_left(server) == []


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
async def test_pixel_bomb_is_413(server: Server) -> None:
    status, text = await post(server, png_header_only(12_000, 12_000))
    assert status == 413 and "MAX_IMAGE_PIXELS" in text
    assert jobs_left(server) == []


@needs_exiftool
async def test_unreadable_file_fails_without_paths(server: Server, start_worker: WorkerFactory) -> None:
    await start_worker(tasks=("exif",))
    status, text = await post(server, BROKEN_MPEG)
    assert status == 200, text  # the magic bytes say MPEG; only exiftool finds the rest is nonsense
    job = await server.wait_status(json.loads(text)["job_id"], "failed", timeout=30)
    message = job["error_message"]
    assert "exiftool could not read the file" in message
    assert str(server.settings.storage_dir) not in message and "/jobs/" not in message


async def test_without_exiftool_the_task_says_why(
    plugin_env: PluginEnvironment, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    task = ExifTask()
    reason = task.unavailable()
    assert reason is not None and "exiftool" in reason

    # A worker that lost exiftool after it started fails the job with that reason (no retry).
    job_id = str(uuid.uuid4())
    upload = plugin_env.job_dir(job_id) / "input" / "upload.jpg"
    upload.parent.mkdir(parents=True)
    upload.write_bytes(photo())
    params = ExifParams(input_path="input/upload.jpg", output_path="output/exif.json")
    result = await task.execute(Job(job_id=job_id, task_type="exif", params=params.model_dump()), params)
    assert result == {"status": "error", "error": reason}


@needs_exiftool
@pytest.mark.parametrize("isolation", ["process", "thread"])
async def test_a_metadata_bomb_gives_a_small_marked_result(
    server: Server, start_worker: WorkerFactory, isolation: str
) -> None:
    """A 1x1 PNG with 20 MB of XMP: the job's result stays small and says what was cut; the
    worker's exiftool serves the next job as usual."""
    await start_worker(tasks=("exif",), plugin_isolation=isolation)
    bomb = png_with_xmp(xmp_description("A" * 20_000_000))
    status, text = await post(server, bomb)
    assert status == 200, text
    job = await server.wait_status(json.loads(text)["job_id"], "completed", timeout=60)
    output = job["task_output"]
    assert len(json.dumps(output)) < 16 * 1024
    assert output["Description"].endswith("…[truncated: 20000002 bytes]")
    assert output[TRUNCATED_FIELD]["cut_values"] == ["Description"]

    status, text = await post(server, photo())
    normal = await server.wait_status(json.loads(text)["job_id"], "completed", timeout=30)
    assert normal["task_output"]["Make"] == "Canon" and TRUNCATED_FIELD not in normal["task_output"]


@needs_exiftool
@pytest.mark.parametrize(
    ("labels", "limit"), [(12_000, None), (3_000, 100_000)], ids=["default", "configured"]
)
async def test_metadata_near_the_result_limit_completes_cut_to_it(
    server: Server, start_worker: WorkerFactory, labels: int, limit: int | None
) -> None:
    """Tags adding up to more than MAX_RESULT_BYTES (the default, or the worker's own): the job
    completes with the tags that fit and says how many were left out; it does not fail with the
    worker's size error."""
    changes = {} if limit is None else {"max_result_bytes": limit}
    await start_worker(tasks=("exif",), **changes)
    status, text = await post(server, png_with_xmp(xmp_labels(labels, 100)))
    assert status == 200, text
    job = await server.wait_status(json.loads(text)["job_id"], "completed", timeout=60)
    output = job["task_output"]
    limit = limit or DEFAULT_MAX_RESULT_BYTES
    assert limit * 0.9 < result_bytes(output) <= limit
    assert output[TRUNCATED_FIELD]["output_limit_bytes"] == limit
    assert 0 < output[TRUNCATED_FIELD]["tags_left_out"] < labels
    assert "Label0" in output and f"Label{labels - 1}" not in output
