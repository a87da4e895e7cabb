"""POST /jobs/hash through a real worker: digests of the uploaded bytes, perceptual hashes for images."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from tests.support.hash_samples import blocks, encoded
from tests.support.inprocess import Server, WorkerFactory
from tests.support.jobs import download, run_job
from tests.support.videos import tiny_mp4


async def test_image_and_video_through_a_worker(
    server: Server, start_worker: WorkerFactory, tmp_path: Path
) -> None:
    await start_worker(tasks=("hash",))

    png = encoded(blocks(5), "PNG")
    job = await run_job(server, "hash", png, "photo.png")
    output = job["task_output"]
    assert job["params"]["algorithm"] == "sha512" and job["params"]["output_path"] == "output/hash.json"
    assert output["media_type"] == "image" and output["algorithm"] == "sha512"
    assert output["hash_value"] == output["sha512"] == hashlib.sha512(png).hexdigest()
    assert {"phash", "dhash", "ahash", "whash"} <= set(output)
    assert json.loads(await download(server, job["job_id"], "output/hash.json")) == output

    md5 = await run_job(server, "hash", png, "photo.png", {"algorithm": "md5"})
    assert md5["task_output"]["algorithm"] == "md5"
    assert md5["task_output"]["hash_value"] == hashlib.md5(png).hexdigest()
    assert md5["task_output"]["sha512"] == output["sha512"] and md5["task_output"]["phash"] == output["phash"]

    mp4 = tiny_mp4(tmp_path)
    video = (await run_job(server, "hash", mp4, "clip.mp4"))["task_output"]
    assert video == {
        "media_type": "video",
        "algorithm": "sha512",
        "hash_value": hashlib.sha512(mp4).hexdigest(),
        "sha512": hashlib.sha512(mp4).hexdigest(),
    }
