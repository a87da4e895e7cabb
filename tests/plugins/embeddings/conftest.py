"""Fixtures for the embedding plugins: real photos, and a plugin environment without a server
(algorithm tests need no broker)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from skimage import data

from compute.plugins import environment, models
from tests.support.embedding_images import jpeg_bytes


@pytest.fixture(scope="session")
def astronaut_jpeg() -> bytes:
    """scikit-image's astronaut (512x512 RGB photo), as JPEG."""
    return jpeg_bytes(data.astronaut())  # type: ignore[no-untyped-call]


@pytest.fixture(scope="session")
def wide_jpeg() -> bytes:
    """A non-square crop of the astronaut (512 wide, 384 high): the resize must neither keep the
    aspect ratio nor crop, as the upstream embedders do."""
    return jpeg_bytes(data.astronaut()[64:448])  # type: ignore[no-untyped-call]


@pytest.fixture(scope="session")
def coffee_jpeg() -> bytes:
    """Another real photo (scikit-image's coffee, 600x400)."""
    return jpeg_bytes(data.coffee())  # type: ignore[no-untyped-call]


@pytest.fixture
def local_env(models_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The plugin environment pointing at `models_dir`, no model loaded; yields models_dir."""
    saved = environment.replace_current(
        environment.PluginEnvironment(storage_dir=tmp_path / "storage", models_dir=models_dir)
    )
    models.forget()
    yield models_dir
    models.forget()
    environment.replace_current(saved)
