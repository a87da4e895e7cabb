"""Model files: where each one lives, whether it is there and sound, and one ONNX Runtime
session per file per process.

Model hubs are not reachable from every deployment, so models are plain files in the models
folder (COMPUTE_MODELS_DIR, default `$CL_SERVER_DIR/models`). `compute-models` lists which are
present, missing or corrupt. A file is corrupt when ONNX Runtime cannot load it, when its
inputs do not have the expected layout, or when it no longer matches the checksum recorded
with `compute-models --record` (kept in `SHA256SUMS` beside the models).
"""

from __future__ import annotations

import hashlib
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compute import observers
from compute.errors import ComputeError
from compute.plugins.environment import current

log = logging.getLogger(__name__)

CHECKSUMS = "SHA256SUMS"


class ModelUnavailable(ComputeError):
    """A model file is missing or cannot be loaded."""


@dataclass(frozen=True)
class ModelSpec:
    #: File name inside the models folder.
    filename: str
    #: What it is, for people.
    title: str
    #: Where to get it (documented; nothing downloads it).
    source: str
    licence: str
    #: Rank of the first input (4 for images), checked when the file loads.
    input_rank: int = 4

    def path(self) -> Path:
        return current().models_dir / self.filename


#: Every model a plugin of this project uses, by task type.
MODELS: dict[str, ModelSpec] = {
    "clip_embedding": ModelSpec(
        "mobileclip_s2_image_encoder.onnx",
        "MobileCLIP-S2 image encoder (512-d)",
        "huggingface.co/apple/MobileCLIP-S2-onnx, file image_encoder.onnx",
        "Apple AMLR licence; read the model card",
    ),
    "dino_embedding": ModelSpec(
        "dinov2_vits14.onnx",
        "DINOv2 ViT-S/14 (384-d CLS token)",
        "huggingface.co/sefaburak/dinov2-small-onnx, file dinov2_vits14.onnx",
        "Apache-2.0",
    ),
    "face_detection": ModelSpec(
        "face_detection_yunet_2023mar.onnx",
        "YuNet face detector (boxes and 5 landmarks)",
        "github.com/opencv/opencv_zoo, models/face_detection_yunet/face_detection_yunet_2023mar.onnx",
        "MIT",
    ),
    "face_embedding": ModelSpec(
        "arcface.onnx",
        "ArcFace face embedder (512-d from 112x112 crops)",
        "huggingface.co/onnx-community/arcface-onnx, file arcface.onnx (or InsightFace w600k_r50.onnx "
        "renamed)",
        "read the model card; InsightFace's own weights are for non-commercial research",
    ),
}


def execution_providers() -> list[str]:
    """CUDA when ONNX Runtime has it, else the CPU."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    wanted = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return [p for p in wanted if p in available] or ["CPUExecutionProvider"]


def session_options() -> Any:
    """How every model's session is made: ONNX Runtime's intra-op threads do not spin.

    By default each thread of its pool spins for a while after every parallel section, waiting
    for more work. On a worker host the plugin process shares its cores (with the worker, other
    plugin processes, the decode of the next image), and the spinning took them: on the 2-core
    development machine (load ~16), one tiny clip_embedding job cost 34 ms of CPU with spinning
    and 19 ms without, and a ViT-B/32-shaped network 21-23 ms of CPU per image per 2 layers
    against 12-13 ms, the wall time falling with it (compute-bench --sections ml_batch).
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


_sessions: dict[Path, Any] = {}
_lock = threading.Lock()


def session(spec: ModelSpec) -> Any:
    """The ONNX Runtime session for `spec`, loaded once per process; ModelUnavailable if it cannot be."""
    path = spec.path()
    with _lock:
        cached = _sessions.get(path)
        if cached is not None:
            return cached
        with observers.around(observers.model_loads, spec.filename):
            loaded = _load(spec, path)
        _sessions[path] = loaded
        return loaded


def takes_batches(session: Any) -> bool:
    """True when the model's first input takes any number of images at once: its batch dimension
    is a symbol (`batch_size`, as exports with dynamic axes declare it) rather than a fixed 1."""
    batch = session.get_inputs()[0].shape[0]
    return not (isinstance(batch, int) and batch > 0)


def problem(spec: ModelSpec) -> str | None:
    """Why `spec`'s model cannot be used here, or None (then its session is loaded and cached)."""
    try:
        session(spec)
    except ModelUnavailable as exc:
        return str(exc)
    return None


def _load(spec: ModelSpec, path: Path) -> Any:
    if not path.is_file():
        raise ModelUnavailable(
            f"model file {spec.filename} is missing from the models folder "
            f"(COMPUTE_MODELS_DIR); see `compute-models`"
        )
    import onnxruntime as ort

    try:
        sess = ort.InferenceSession(str(path), session_options(), providers=execution_providers())
    except Exception as exc:
        raise ModelUnavailable(f"model file {spec.filename} cannot be loaded: {type(exc).__name__}") from None
    shape = sess.get_inputs()[0].shape
    if len(shape) != spec.input_rank:
        raise ModelUnavailable(
            f"model file {spec.filename} has an input of rank {len(shape)}, expected {spec.input_rank}"
        )
    log.info("loaded model %s (%s)", spec.filename, ", ".join(sess.get_providers()))
    return sess


def forget() -> None:
    """Drop loaded sessions (tests that swap model files)."""
    with _lock:
        _sessions.clear()


# -- compute-models ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelStatus:
    task: str
    spec: ModelSpec
    #: "ok", "missing" or "corrupt"
    state: str
    detail: str = ""


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def recorded_checksums() -> dict[str, str]:
    path = current().models_dir / CHECKSUMS
    if not path.is_file():
        return {}
    sums: dict[str, str] = {}
    for line in path.read_text().splitlines():
        digest, _, name = line.strip().partition("  ")
        if digest and name:
            sums[name] = digest
    return sums


def record_checksums() -> Path:
    """Write SHA256SUMS for the model files present now (run after installing them)."""
    folder = current().models_dir
    lines = [f"{sha256(spec.path())}  {spec.filename}" for spec in MODELS.values() if spec.path().is_file()]
    target = folder / CHECKSUMS
    target.write_text("".join(line + "\n" for line in lines))
    return target


def check(task: str, spec: ModelSpec) -> ModelStatus:
    path = spec.path()
    if not path.is_file():
        return ModelStatus(task, spec, "missing")
    expected = recorded_checksums().get(spec.filename)
    if expected is not None and sha256(path) != expected:
        return ModelStatus(task, spec, "corrupt", f"checksum differs from {CHECKSUMS}")
    try:
        _load(spec, path)
    except ModelUnavailable as exc:
        return ModelStatus(task, spec, "corrupt", str(exc))
    return ModelStatus(task, spec, "ok")


def check_all() -> list[ModelStatus]:
    return [check(task, spec) for task, spec in MODELS.items()]
