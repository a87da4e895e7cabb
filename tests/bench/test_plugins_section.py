"""The plugins section's parts that need no deployment: its standard inputs, which plugins it
skips and why, and stand-in models that the plugins' own checks accept."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from compute.plugins import environment, models
from compute.plugins.models import MODELS
from compute.plugins.registry import installed_tasks
from compute_bench import inputs, plugins, references, standins

MODEL_TASKS = tuple(MODELS)
TOOL_TASKS = tuple(t for t in plugins.NAMES if t not in MODELS)


@pytest.fixture
def photo_only(tmp_path: Path) -> inputs.Inputs:
    """A photo and no video (as on a machine without ffmpeg)."""
    photo = tmp_path / "photo.jpg"
    Image.new("RGB", (64, 36), (200, 100, 50)).save(photo, exif=inputs.exif_tags())
    return inputs.Inputs(photo, "flat colour", None, 2.0, "ffmpeg not found on PATH")


@pytest.fixture
def plugin_models(tmp_path: Path) -> Iterator[Path]:
    """The plugins read models from this folder, as a worker with COMPUTE_MODELS_DIR would."""
    folder = tmp_path / "bench-models"
    saved = environment.replace_current(environment.PluginEnvironment(tmp_path / "storage", folder))
    models.forget()
    yield folder
    models.forget()
    environment.replace_current(saved)


def test_every_plugin_is_measured() -> None:
    assert set(plugins.NAMES) == set(installed_tasks())
    assert set(MODEL_TASKS) < set(plugins.NAMES)


def test_model_plugins_without_models_are_skipped_with_the_reason(
    photo_only: inputs.Inputs, tmp_path: Path
) -> None:
    empty = tmp_path / "no-models"
    empty.mkdir()
    plans = {p.plugin.row: p for p in plugins.plan(photo_only, empty, None)}
    for task in MODEL_TASKS:
        assert plans[task].skipped == f"{MODELS[task].filename} missing (see compute-models)"
        assert plans[task].model is None
    for row in ("media_thumbnail video", "hls_streaming"):
        assert plans[row].skipped == "no standard video (ffmpeg not found on PATH)"
    assert plans["hash"].skipped == "no large_jpeg input made"
    assert not plans["media_thumbnail 1080p"].skipped
    rows = [plugins.skipped_row(p) for p in plans.values() if p.skipped]
    assert {r["task"] for r in rows} >= set(MODEL_TASKS)


def test_stand_ins_pass_the_plugins_own_checks(
    photo_only: inputs.Inputs, tmp_path: Path, plugin_models: Path
) -> None:
    empty = tmp_path / "no-models"
    empty.mkdir()
    plans = {p.plugin.row: p for p in plugins.plan(photo_only, empty, plugin_models)}
    tasks = installed_tasks()
    for task in MODEL_TASKS:
        assert plans[task].model == "stand-in" and not plans[task].skipped
        assert (plugin_models / MODELS[task].filename).is_file()
        # The worker's own check: the model loads, has the expected input rank and output size.
        assert tasks[task].unavailable() is None, task


def test_real_models_are_used_where_present(photo_only: inputs.Inputs, tmp_path: Path) -> None:
    real = tmp_path / "real-models"
    standins.write("clip_embedding", real)  # any file under the real name counts as the real model
    bench = tmp_path / "bench-models"
    plans = {p.plugin.row: p for p in plugins.plan(photo_only, real, bench)}
    assert plans["clip_embedding"].model == "real"
    assert (bench / MODELS["clip_embedding"].filename).resolve() == (
        real / MODELS["clip_embedding"].filename
    ).resolve()
    assert plans["dino_embedding"].model == "stand-in"


def test_rows_can_be_chosen_by_task_or_name(photo_only: inputs.Inputs, tmp_path: Path) -> None:
    chosen = plugins.plan(photo_only, tmp_path, None, ("image_resize", "media_thumbnail 1080p"))
    assert [p.plugin.row for p in chosen] == ["image_resize", "image_resize 12mp", "media_thumbnail 1080p"]


def test_every_reference_a_row_names_exists() -> None:
    named = {name for p in plugins.PLUGINS for name in p.references}
    assert named <= set(references.REFERENCES)
    assert len({p.row for p in plugins.PLUGINS}) == len(plugins.PLUGINS)


def test_the_large_photo_as_jpeg_and_png(tmp_path: Path) -> None:
    made = inputs.make(tmp_path, 1.0, want_video=False, large=(400, 300))
    assert made.large_jpeg is not None and made.large_png is not None
    with Image.open(made.large_jpeg) as jpeg, Image.open(made.large_png) as png:
        assert (jpeg.format, jpeg.size, png.format, png.size) == ("JPEG", (400, 300), "PNG", (400, 300))
        assert jpeg.getexif()[0x010F] == "Compute Bench"
    assert set(made.describe()) == {"photo", "large_jpeg", "large_png", "video"}


def test_the_standard_photo(tmp_path: Path) -> None:
    path = tmp_path / "photo.jpg"
    inputs.write_photo(path)
    with Image.open(path) as image:
        assert image.format == "JPEG" and image.size == (1920, 1080)
        exif = image.getexif()
        assert exif[0x010F] == "Compute Bench"
        assert exif.get_ifd(0x8825)  # GPS
        pixels = np.asarray(image.convert("L"), dtype=np.float32)
    assert pixels.std() > 20  # content, not a flat frame


@pytest.mark.skipif(
    shutil.which("ffprobe") is None or shutil.which("ffmpeg") is None, reason="ffmpeg not installed"
)
def test_the_standard_video(tmp_path: Path) -> None:
    import json
    import subprocess

    path = tmp_path / "video.mp4"
    assert inputs.write_video(path, 1.0) == ""
    probe = json.loads(
        subprocess.run(
            ["ffprobe", "-v", "error", "-show_streams", "-show_format", "-of", "json", str(path)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    streams = {s["codec_type"]: s for s in probe["streams"]}
    assert streams["video"]["codec_name"] == "h264"
    assert (streams["video"]["width"], streams["video"]["height"]) == (1280, 720)
    assert streams["audio"]["codec_name"] == "aac"
    assert abs(float(probe["format"]["duration"]) - 1.0) < 0.2
