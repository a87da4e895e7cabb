"""Workers that do not share the server's disk (issue 18 item 1): they find out by themselves,
fetch each job's inputs over HTTP into a scratch folder, run the plugin there and send the
outputs back, which the server shows only once the completion is persisted.

A real uvicorn serves the app (the worker reaches it over TCP, as from another host), on every
broker and database; the worker's storage folder is another folder than the server's.
"""

from __future__ import annotations

import io
import json
import secrets
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from PIL import Image

from compute.config import Settings
from compute.plugins.face_detection.task import MODEL, FaceDetectionTask
from compute.storage import MARKER_NAME
from compute.worker.job_folder import RemoteFolders, SharedFolders
from compute_bench.yunet_model import build as build_yunet
from compute_bench.yunet_model import mark
from tests.support.images import png_bytes
from tests.support.inprocess import RunningWorker, Server, WorkerFactory, running_server, uvicorn_serving
from tests.support.proxy import CutRule, CuttingProxy
from tests.support.videos import make_video
from tests.support.waits import wait_for


@dataclass
class RemoteSetup:
    server: Server
    web: uvicorn.Server
    #: The worker host's own folder (its CL_SERVER_DIR): storage, scratch, models.
    host: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.web.config.port}"

    def worker_changes(self, **changes: Any) -> dict[str, Any]:
        """Settings of a worker on another host: its own storage folder, the server's URL."""
        return {
            "storage_dir": self.host / "storage",
            "worker_scratch_dir": self.host / "scratch",
            "server_url": self.url,
            **changes,
        }


@pytest.fixture
async def remote(settings: Settings, tmp_path: Path) -> AsyncIterator[RemoteSetup]:
    async with running_server(settings) as srv, uvicorn_serving(srv.app) as web:
        host = tmp_path / "worker-host"
        host.mkdir()
        yield RemoteSetup(srv, web, host)


async def start_remote(remote: RemoteSetup, start_worker: WorkerFactory, **changes: Any) -> RunningWorker:
    tasks = changes.pop("tasks", ("image_conversion",))
    worker: RunningWorker = await start_worker(tasks=tasks, **remote.worker_changes(**changes))
    assert isinstance(worker.service.folders, RemoteFolders), "the worker should have found no shared disk"
    return worker


def scratch_jobs(remote: RemoteSetup, worker: RunningWorker) -> list[str]:
    root = remote.host / "scratch" / worker.settings.worker_id / "jobs"
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


async def files_of(server: Server, job_id: str) -> dict[str, int]:
    reply = await server.client.get(f"/jobs/{job_id}/files")
    assert reply.status_code == 200, reply.text
    return {f["path"]: f["size"] for f in reply.json()["files"]}


async def download(server: Server, job_id: str, path: str) -> bytes:
    reply = await server.client.get(f"/jobs/{job_id}/files/{path}")
    assert reply.status_code == 200, (path, reply.text)
    return reply.content


# -- finding out ---------------------------------------------------------------------------------


async def test_a_worker_with_the_servers_storage_folder_shares_its_disk(
    remote: RemoteSetup, start_worker: WorkerFactory
) -> None:
    """The server left its marker in its storage folder; a worker that sees it works in place."""
    assert (remote.server.settings.storage_dir / MARKER_NAME).is_file()
    worker = await start_worker(tasks=("image_conversion",))
    assert isinstance(worker.service.folders, SharedFolders)


async def test_a_worker_elsewhere_goes_remote_unless_told_it_shares(
    remote: RemoteSetup, start_worker: WorkerFactory
) -> None:
    await start_remote(remote, start_worker)
    told = await start_worker(tasks=("image_conversion",), **remote.worker_changes(worker_files="shared"))
    assert isinstance(told.service.folders, SharedFolders)


async def test_a_copied_marker_of_another_deployment_does_not_count(
    remote: RemoteSetup, start_worker: WorkerFactory
) -> None:
    storage = remote.host / "storage"
    storage.mkdir()
    (storage / MARKER_NAME).write_text("0" * 32 + "\n")
    await start_remote(remote, start_worker)


# -- jobs through a remote worker ----------------------------------------------------------------


async def test_image_conversion_through_a_remote_worker(
    remote: RemoteSetup, start_worker: WorkerFactory
) -> None:
    worker = await start_remote(remote, start_worker)
    picture = png_bytes((64, 48), (10, 200, 30))
    created = await remote.server.submit("image_conversion", {"format": "jpg", "quality": "90"}, picture)

    job = await remote.server.wait_status(created["job_id"], "completed", timeout=60)

    assert job["params"]["output_path"] == "output/converted.jpg"
    assert job["task_output"]["output_path"] == "output/converted.jpg"
    files = await files_of(remote.server, job["job_id"])
    assert set(files) == {"input/upload.png", "output/converted.jpg"}
    converted = Image.open(io.BytesIO(await download(remote.server, job["job_id"], "output/converted.jpg")))
    assert converted.format == "JPEG" and converted.size == (64, 48)
    # The worker's scratch folder went with the job; nothing waits in the server's staging.
    await wait_for(lambda: scratch_jobs(remote, worker) == [], what="scratch folder removed")
    assert not remote.server.services.staging.staged()


async def test_hls_streaming_sends_every_segment_and_playlist(
    remote: RemoteSetup, start_worker: WorkerFactory, tmp_path: Path
) -> None:
    """Many files (a playlist per rendition, a segment every 2 s) in one request."""
    video = make_video(tmp_path / "clip.mp4", (160, 120), 12.0, keyframe_every=30)
    await start_remote(remote, start_worker, tasks=("hls_streaming",))
    variants = json.dumps([{"resolution": 96, "bitrate": 200}, {"resolution": 64, "bitrate": 100}])
    reply = await remote.server.client.post(
        "/jobs/hls_streaming",
        data={"variants": variants, "include_original": "true"},
        files={"file": ("clip.mp4", video.read_bytes(), "video/mp4")},
    )
    assert reply.status_code == 200, reply.text

    job = await remote.server.wait_status(reply.json()["job_id"], "completed", timeout=120)

    output = job["task_output"]
    files = await files_of(remote.server, job["job_id"])
    assert output["master_playlist"] == "output/adaptive.m3u8" and output["master_playlist"] in files
    segments = [p for p in files if p.endswith(".ts")]
    assert len(segments) >= output["total_segments"] >= 12  # plus the original's, when kept
    for variant in output["variants"]:
        playlist = (await download(remote.server, job["job_id"], variant["playlist"])).decode()
        for line in playlist.splitlines():
            if line and not line.startswith("#"):
                assert f"output/{line}" in files, line


async def test_face_detection_with_a_stand_in_model_sends_crops_outside_output(
    remote: RemoteSetup, start_worker: WorkerFactory
) -> None:
    """An ML task on the worker's own model folder; its crops go to `faces/`, not `output/`."""
    models = remote.host / "models"
    models.mkdir()
    (models / MODEL.filename).write_bytes(build_yunet())
    plugins = {"face_detection": FaceDetectionTask()}  # its model is on the worker's host only
    await start_remote(remote, start_worker, tasks=("face_detection",), plugins=plugins, models_dir=models)
    import cv2
    import numpy as np

    image = np.zeros((480, 640, 3), np.uint8)
    mark(image, 32, row=1, col=1)
    ok, png = cv2.imencode(".png", image)
    assert ok
    created = await remote.server.submit("face_detection", {}, png.tobytes(), "group.png")

    job = await remote.server.wait_status(created["job_id"], "completed", timeout=60)

    [face] = job["task_output"]["faces"]
    assert face["file_path"] == "faces/face_0.png"
    crop = Image.open(io.BytesIO(await download(remote.server, job["job_id"], "faces/face_0.png")))
    assert crop.size == (112, 112)
    saved = json.loads(await download(remote.server, job["job_id"], "output/face_detection.json"))
    assert saved == job["task_output"]


# -- broken links --------------------------------------------------------------------------------


@pytest.fixture
async def proxy(remote: RemoteSetup) -> AsyncIterator[CuttingProxy]:
    """Between the remote worker and the server: a link that breaks when a test says so."""
    link = await CuttingProxy(remote.web.config.port).start()
    yield link
    await link.stop()


def noise_png(size: tuple[int, int]) -> bytes:
    out = io.BytesIO()
    Image.frombytes("RGB", size, secrets.token_bytes(size[0] * size[1] * 3)).save(out, format="PNG")
    return out.getvalue()


async def test_a_link_cut_mid_download_resumes_where_it_broke(
    remote: RemoteSetup, start_worker: WorkerFactory, proxy: CuttingProxy
) -> None:
    picture = noise_png((600, 500))  # about 900 KB
    await start_remote(remote, start_worker, server_url=proxy.url)
    proxy.down = CutRule(after=len(picture) // 2)

    created = await remote.server.submit("image_conversion", {"format": "png"}, picture)
    job = await remote.server.wait_status(created["job_id"], "completed", timeout=60)

    assert proxy.cuts == 1
    # The second try fetched the rest, not the whole file again (and then the small answers).
    assert proxy.sent_down < len(picture) * 1.3
    converted = await download(remote.server, job["job_id"], "output/converted.png")
    pixels = Image.open(io.BytesIO(converted)).convert("RGB").tobytes()
    assert pixels == Image.open(io.BytesIO(picture)).convert("RGB").tobytes()


def noisy_video(path: Path, seconds: int) -> Path:
    """320x240 of noise, H.264 at the bitrate it is asked for: outputs of a predictable size."""
    subprocess.run(
        [
            *("ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "error", "-y", "-f", "lavfi"),
            *("-i", "testsrc=size=320x240:rate=30,noise=alls=80:allf=t", "-t", str(seconds)),
            *("-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-g", "30"),
            *("-b:v", "2000k", str(path)),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return path


async def test_a_link_cut_mid_upload_sends_only_what_is_missing(
    remote: RemoteSetup, start_worker: WorkerFactory, proxy: CuttingProxy, tmp_path: Path
) -> None:
    """HLS: many files in one request; the link breaks half way; the files that arrived whole
    stay staged, the retry asks which are missing and sends those; nothing showed meanwhile."""
    video = noisy_video(tmp_path / "clip.mp4", 12)
    await start_remote(remote, start_worker, tasks=("hls_streaming",), server_url=proxy.url)
    variants = json.dumps([{"resolution": 240, "bitrate": 1500}])
    reply = await remote.server.client.post(
        "/jobs/hls_streaming",
        data={"variants": variants, "include_original": "false"},
        files={"file": ("clip.mp4", video.read_bytes(), "video/mp4")},
    )
    job_id = reply.json()["job_id"]
    # Cut once the upload (the only large request) is about half through: the outputs of a
    # 12 s clip at 1.5 Mb/s are about 2 MB.
    proxy.up = CutRule(after=1_000_000)

    job = await remote.server.wait_status(job_id, "completed", timeout=120)

    assert proxy.cuts == 1
    files = await files_of(remote.server, job_id)
    outputs = sum(size for path, size in files.items() if path.startswith("output/"))
    assert outputs > 1_200_000, "the test needs outputs larger than the cut"
    assert proxy.sent_up < outputs * 1.4  # what arrived whole was not sent again
    segments = [p for p in files if p.endswith(".ts")]
    assert len(segments) == job["task_output"]["total_segments"] >= 6


# -- scratch folders and absolute paths ----------------------------------------------------------


async def test_scratch_left_by_a_crash_is_swept_at_start(
    remote: RemoteSetup, start_worker: WorkerFactory, settings: Settings
) -> None:
    worker_id = f"{settings.worker_id}1"  # the id start_worker gives its first worker
    left = remote.host / "scratch" / worker_id / "jobs" / "0b6c0000-dead-4000-8000-000000000000"
    (left / "input").mkdir(parents=True)
    (left / "input" / "upload.png").write_bytes(b"half")

    worker = await start_remote(remote, start_worker)

    assert worker.settings.worker_id == worker_id
    assert scratch_jobs(remote, worker) == []


async def test_an_absolute_input_path_the_worker_cannot_see_fails_with_the_reason(
    settings: Settings, tmp_path: Path, start_worker: WorkerFactory
) -> None:
    media = tmp_path / "server-media"
    media.mkdir()
    video = make_video(media / "movie.mp4", (160, 120), 2.0)
    async with (
        running_server(replace(settings, media_roots=(media,))) as srv,
        uvicorn_serving(srv.app) as web,
    ):
        reply = await srv.client.post("/jobs/hls_streaming", data={"input_absolute_path": str(video)})
        assert reply.status_code == 200, reply.text
        host = tmp_path / "worker-host"
        await start_worker(
            tasks=("hls_streaming",),
            storage_dir=host / "storage",
            worker_scratch_dir=host / "scratch",
            server_url=f"http://127.0.0.1:{web.config.port}",
            media_roots=(),
            wait_idle=False,
        )

        job = await srv.wait_status(reply.json()["job_id"], "failed", timeout=60)

    assert "does not share its disk" in job["error_message"]
    assert "COMPUTE_MEDIA_ROOTS" in job["error_message"]
