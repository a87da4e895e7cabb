"""What plugins need from the deployment: where models live, how big an image may be, which
folders `input_absolute_path`/`output_absolute_path` may name, how large a result may be.

Plugins are built by the registry with no arguments, so the server and the worker set this
once per process (`configure`) before they load any plugin.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from compute.config import DEFAULT_MAX_VIDEO_PIXELS, DEFAULT_MAX_VIDEO_SECONDS, DEFAULT_MAX_VIDEO_STREAMS
from compute.jobs import DEFAULT_MAX_RESULT_BYTES

if TYPE_CHECKING:
    from compute.config import Settings

DEFAULT_MAX_IMAGE_PIXELS = 100_000_000


@dataclass(frozen=True)
class PluginEnvironment:
    #: Job folders live in `<storage_dir>/jobs/<job_id>` (COMPUTE_STORAGE_DIR).
    storage_dir: Path
    #: Folder of model files (COMPUTE_MODELS_DIR).
    models_dir: Path
    #: Largest image, in pixels, accepted as input or asked for as output (MAX_IMAGE_PIXELS).
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    #: Folders that absolute media paths may point into (COMPUTE_MEDIA_ROOTS); empty = none.
    media_roots: tuple[Path, ...] = ()
    #: Largest video frame, in pixels, a task that decodes videos takes (MAX_VIDEO_PIXELS).
    max_video_pixels: int = DEFAULT_MAX_VIDEO_PIXELS
    #: Longest video, in seconds, such a task takes (MAX_VIDEO_SECONDS).
    max_video_seconds: int = DEFAULT_MAX_VIDEO_SECONDS
    #: Most streams (video, audio, subtitles, data) in such a video (MAX_VIDEO_STREAMS).
    max_video_streams: int = DEFAULT_MAX_VIDEO_STREAMS
    #: Largest task_output (compact JSON) the worker sends (MAX_RESULT_BYTES): a plugin whose
    #: output grows with its input keeps within it (result_budget.py) rather than fail the job.
    max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES
    #: False on a worker that does not see the server's disk: its job folders are scratch copies,
    #: and a path the client named on the server's machine exists here only under a media root
    #: this worker mounts (COMPUTE_MEDIA_ROOTS).
    shares_server_disk: bool = True

    def job_dir(self, job_id: str) -> Path:
        """The job's folder; `params` paths such as `input/upload.jpg` are relative to it."""
        return self.storage_dir / "jobs" / job_id


_current = PluginEnvironment(
    storage_dir=Path.home() / ".cl_server" / "compute", models_dir=Path.home() / ".cl_server" / "models"
)


def configure(settings: Settings) -> None:
    """Set the environment for this process; also bounds every Pillow decode in it."""
    from PIL import Image

    global _current
    # Pillow warns past this and refuses past twice this; our own check (media.check_pixels)
    # refuses past it, and this covers third-party plugins that call Pillow directly.
    Image.MAX_IMAGE_PIXELS = settings.max_image_pixels
    _current = PluginEnvironment(
        settings.storage_dir.resolve(),
        settings.models_dir,
        settings.max_image_pixels,
        tuple(p.resolve() for p in settings.media_roots),
        settings.max_video_pixels,
        settings.max_video_seconds,
        settings.max_video_streams,
        settings.max_result_bytes,
        shares_server_disk=settings.worker_files != "remote",
    )


def current() -> PluginEnvironment:
    return _current


def replace_current(environment: PluginEnvironment) -> PluginEnvironment:
    """Make `environment` this process's, as it is (configure() builds it from Settings); returns
    the one it replaces. For tests and tools that run plugins without Settings."""
    global _current
    previous, _current = _current, environment
    return previous
