"""face_detection through the real server and worker: route -> worker -> result, files, failures."""

from __future__ import annotations

import io
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from compute.jobs import result_bytes
from compute.plugins.face_detection.algorithm import ARCFACE_TEMPLATE, LANDMARK_NAMES, TOP_K
from compute.plugins.face_detection.task import MODEL, TRUNCATED_FIELD, FaceDetectionTask
from compute.plugins.registry import UnavailableTasks, load_tasks
from compute_bench.yunet_model import build, expected, mark
from tests.support.images import png_header_only
from tests.support.inprocess import Server, WorkerFactory
from tests.support.jobs import download, run_job

#: BGR colours of the dots drawn at the landmarks, in LANDMARK_NAMES order.
DOT_COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255)]
WIDTH, HEIGHT = 640, 480


def install_model(models_dir: Path) -> None:
    (models_dir / MODEL.filename).write_bytes(build())


def job_folders(server: Server) -> list[Path]:
    jobs = server.settings.storage_dir / "jobs"
    return list(jobs.iterdir()) if jobs.exists() else []


def face_picture() -> bytes:
    """One face of the tiny model at stride-32 cell (1, 1), a coloured dot on each landmark."""
    image = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    mark(image, 32, row=1, col=1)
    for (x, y), colour in zip(expected(32, 1, 1).landmarks, DOT_COLOURS, strict=True):
        image[round(y) - 2 : round(y) + 3, round(x) - 2 : round(x) + 3] = colour
    ok, png = cv2.imencode(".png", image)
    assert ok
    return png.tobytes()


async def test_route_worker_result_with_boxes_landmarks_and_aligned_crops(
    server: Server, start_worker: WorkerFactory, models_dir: Path
) -> None:
    install_model(models_dir)
    await start_worker(tasks=("face_detection",))

    job = await run_job(
        server,
        "face_detection",
        face_picture(),
        "group.png",
        {"confidence_threshold": "0.5", "nms_threshold": "0.3"},
    )

    params = job["params"]
    assert params["input_path"] == "input/upload.png"
    assert params["output_path"] == "output/face_detection.json"
    assert (params["confidence_threshold"], params["nms_threshold"]) == (0.5, 0.3)
    output = job["task_output"]
    assert (output["num_faces"], output["image_width"], output["image_height"]) == (1, WIDTH, HEIGHT)
    [face] = output["faces"]
    want = expected(32, 1, 1)
    assert face["bbox"] == pytest.approx(
        {
            "x1": want.box[0] / WIDTH,
            "y1": want.box[1] / HEIGHT,
            "x2": want.box[2] / WIDTH,
            "y2": want.box[3] / HEIGHT,
        },
        abs=1e-5,
    )
    assert face["confidence"] == pytest.approx(1.0, abs=1e-5)
    for name, (x, y) in zip(LANDMARK_NAMES, want.landmarks, strict=True):
        assert face["landmarks"][name] == pytest.approx([x / WIDTH, y / HEIGHT], abs=1e-5)
    assert face["file_path"] == "faces/face_0.png"

    crop = Image.open(io.BytesIO(await download(server, job["job_id"], face["file_path"])))
    assert crop.format == "PNG" and crop.size == (112, 112)
    rgb = np.asarray(crop.convert("RGB"))
    for (tx, ty), (b, g, r) in zip(ARCFACE_TEMPLATE, DOT_COLOURS, strict=True):
        np.testing.assert_allclose(rgb[round(ty), round(tx)], (r, g, b), atol=40)

    saved = json.loads(await download(server, job["job_id"], "output/face_detection.json"))
    assert saved == output


async def test_an_image_without_faces_completes_with_none(
    server: Server, start_worker: WorkerFactory, models_dir: Path
) -> None:
    install_model(models_dir)
    await start_worker(tasks=("face_detection",))
    blank = io.BytesIO()
    Image.new("RGB", (200, 120), (0, 0, 0)).save(blank, format="JPEG")

    job = await run_job(server, "face_detection", blank.getvalue(), "empty.jpg")

    assert job["task_output"] == {"faces": [], "num_faces": 0, "image_width": 200, "image_height": 120}


async def test_every_candidate_asked_for_is_cut_to_the_result_limit(
    server: Server, start_worker: WorkerFactory, models_dir: Path
) -> None:
    """Threshold 0 and no suppression: every grid cell is a face (TOP_K of them, ~2.5 MB of
    task_output). The job completes with the best that fit in MAX_RESULT_BYTES, a crop for each
    and none for the others, and says how many it left out."""
    install_model(models_dir)
    limit = 60_000
    await start_worker(tasks=("face_detection",), max_result_bytes=limit)
    blank = io.BytesIO()
    Image.new("RGB", (WIDTH, HEIGHT), (0, 0, 0)).save(blank, format="PNG")

    job = await run_job(
        server,
        "face_detection",
        blank.getvalue(),
        "crowd.png",
        {"confidence_threshold": "0", "nms_threshold": "1"},
    )

    output = job["task_output"]
    assert limit - 1_000 < result_bytes(output) <= limit
    kept = output["num_faces"]
    assert 0 < kept == len(output["faces"]) < TOP_K
    assert output[TRUNCATED_FIELD] == {
        "faces_found": TOP_K,
        "faces_left_out": TOP_K - kept,
        "output_limit_bytes": limit,
    }
    assert [face["file_path"] for face in output["faces"]] == [f"faces/face_{i}.png" for i in range(kept)]
    crops = sorted(p.name for p in (server.settings.storage_dir / "jobs" / job["job_id"] / "faces").iterdir())
    assert crops == sorted(f"face_{i}.png" for i in range(kept))


async def test_a_missing_model_fails_the_job_at_once_naming_the_file(
    server: Server, start_worker: WorkerFactory, models_dir: Path
) -> None:
    task = FaceDetectionTask()
    reason = task.unavailable()
    assert reason is not None and MODEL.filename in reason and str(models_dir) not in reason
    with pytest.raises(UnavailableTasks, match=MODEL.filename):
        load_tasks(("face_detection",))
    # A worker told to run it anyway (as one whose model file went away would).
    await start_worker(tasks=("face_detection",), plugins={"face_detection": task})

    created = await server.submit("face_detection", data={}, content=face_picture())
    job = await server.wait_status(created["job_id"], "failed", timeout=15)

    assert MODEL.filename in job["error_message"]
    assert str(server.settings.cl_server_dir) not in job["error_message"]


async def test_a_corrupt_image_fails_with_a_reason_and_no_server_path(
    server: Server, start_worker: WorkerFactory, models_dir: Path
) -> None:
    install_model(models_dir)
    await start_worker(tasks=("face_detection",))
    whole = io.BytesIO()
    Image.effect_noise((256, 256), 64).convert("RGB").save(whole, format="JPEG")
    truncated = whole.getvalue()[: len(whole.getvalue()) // 3]  # the header passes, the pixels do not

    created = await server.submit("face_detection", data={}, content=truncated, filename="cut.jpg")
    job = await server.wait_status(created["job_id"], "failed", timeout=15)

    assert "corrupt image" in job["error_message"]
    assert str(server.settings.cl_server_dir) not in job["error_message"]
    assert "/" not in job["error_message"].replace("image/", "")


async def test_a_file_that_is_not_an_image_is_refused_with_415(server: Server) -> None:
    response = await server.client.post(
        "/jobs/face_detection",
        data={"priority": "5"},
        files={"file": ("faces.jpg", b"just some text, named like a photo", "image/jpeg")},
    )

    assert response.status_code == 415
    assert "image/jpeg" in response.json()["detail"]
    assert job_folders(server) == []


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
async def test_a_pixel_bomb_is_refused_with_413(server: Server) -> None:
    # 144 Mpx: over MAX_IMAGE_PIXELS (100 Mpx), which intake checks from the header alone.
    response = await server.client.post(
        "/jobs/face_detection",
        data={"priority": "5"},
        files={"file": ("bomb.png", png_header_only(12000, 12000), "image/png")},
    )

    assert response.status_code == 413
    assert "12000x12000" in response.json()["detail"]
    assert job_folders(server) == []


async def test_a_giant_pixel_bomb_is_refused(server: Server) -> None:
    # 400 Mpx: over twice the limit, where Pillow itself refuses to open it (DecompressionBombError);
    # still a 413 that names the limit.
    response = await server.client.post(
        "/jobs/face_detection",
        data={"priority": "5"},
        files={"file": ("bomb.png", png_header_only(20000, 20000), "image/png")},
    )

    assert response.status_code == 413
    assert "400000000 pixels" in response.json()["detail"]
    assert "MAX_IMAGE_PIXELS" in response.json()["detail"]
    assert job_folders(server) == []


@pytest.mark.parametrize(
    "field, value",
    [("confidence_threshold", "1.5"), ("nms_threshold", "-0.1"), ("confidence_threshold", "high")],
)
async def test_thresholds_out_of_range_are_refused_with_422(server: Server, field: str, value: str) -> None:
    response = await server.client.post(
        "/jobs/face_detection",
        data={"priority": "5", field: value},
        files={"file": ("face.png", face_picture(), "image/png")},
    )

    assert response.status_code == 422
    assert field in response.text
    assert job_folders(server) == []
