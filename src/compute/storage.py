"""Job folders on local disk: cl_ml_tools' FileStorage protocol, plus safe path lookup."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from typing import Any

from compute.errors import ComputeError

CHUNK = 1024 * 1024


class UploadTooLarge(ComputeError):
    """The uploaded file is larger than MAX_UPLOAD_BYTES."""


class PathOutsideJob(ComputeError):
    """That path is not inside the job's folder."""


class JobStorage:
    """`<root>/jobs/<job_id>/{input,output}` for every job."""

    def __init__(self, root: Path, max_upload_bytes: int) -> None:
        self.root = Path(root).resolve()
        self.jobs_root = self.root / "jobs"
        self.max_upload_bytes = max_upload_bytes

    def job_dir(self, job_id: str) -> Path:
        if not job_id or "/" in job_id or "\\" in job_id or job_id in {".", ".."}:
            raise PathOutsideJob(f"invalid job id {job_id!r}")
        return self.jobs_root / job_id

    # -- cl_ml_tools FileStorage protocol --------------------------------------------------

    def create_job_directory(self, job_id: str) -> Path:
        job_dir = self.job_dir(job_id)
        os.makedirs(job_dir / "input", exist_ok=True)
        os.makedirs(job_dir / "output", exist_ok=True)
        return job_dir

    def get_input_path(self, job_id: str) -> Path:
        return self.job_dir(job_id) / "input"

    def get_output_path(self, job_id: str) -> Path:
        return self.job_dir(job_id) / "output"

    async def save_input_file(self, job_id: str, filename: str | None, file: Any) -> dict[str, Any]:
        """Stream an upload into the job's input folder, refusing it past the size limit."""
        name = Path(filename or "upload").name or "upload"
        target = self.get_input_path(job_id) / name
        digest = hashlib.sha256()
        size = 0
        try:
            # Plain writes on the event loop: local disk, small files; a thread hop costs more.
            with open(target, "wb") as out:  # noqa: ASYNC230
                while chunk := await file.read(CHUNK):
                    size += len(chunk)
                    if size > self.max_upload_bytes:
                        raise UploadTooLarge(
                            f"upload exceeds the limit of {self.max_upload_bytes} bytes"
                        )
                    digest.update(chunk)
                    out.write(chunk)
        except UploadTooLarge:
            self.cleanup_job(job_id)
            raise
        return {"filename": name, "path": str(target), "size": size, "hash": digest.hexdigest()}

    def cleanup_job(self, job_id: str) -> bool:
        job_dir = self.job_dir(job_id)
        if not job_dir.exists():
            return False
        shutil.rmtree(job_dir, ignore_errors=True)
        return True

    # -- lookups ----------------------------------------------------------------------------

    def resolve(self, job_id: str, path: str) -> Path:
        """The file `path` (relative to the job folder, or absolute inside it), never outside."""
        job_dir = self.job_dir(job_id).resolve()
        candidate = Path(path)
        full = (candidate if candidate.is_absolute() else job_dir / candidate).resolve()
        if full != job_dir and job_dir not in full.parents:
            raise PathOutsideJob()
        return full

    def size_bytes(self) -> int:
        total = 0
        for dirpath, _dirs, files in os.walk(self.jobs_root):
            for name in files:
                try:
                    total += os.lstat(os.path.join(dirpath, name)).st_size
                except OSError:  # removed while walking
                    pass
        return total
