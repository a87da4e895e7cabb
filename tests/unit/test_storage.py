"""Job folders: uploads are size-limited, lookups never leave the job's folder."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import pytest
from starlette.datastructures import UploadFile

from compute.storage import JobStorage, PathOutsideJob, UploadTooLarge


@pytest.fixture
def storage(tmp_path: Path) -> JobStorage:
    s = JobStorage(tmp_path / "store", max_upload_bytes=1000)
    s.create_job_directory("job1")
    (s.get_output_path("job1") / "out.png").write_bytes(b"png")
    return s


def test_creates_input_and_output_folders(storage: JobStorage) -> None:
    assert storage.get_input_path("job1").is_dir()
    assert storage.get_output_path("job1").is_dir()
    assert storage.job_dir("job1") == storage.root / "jobs" / "job1"


def test_resolve_inside_the_job(storage: JobStorage) -> None:
    expected = storage.get_output_path("job1").resolve() / "out.png"
    assert storage.resolve("job1", "output/out.png") == expected
    assert storage.resolve("job1", "input/../output/out.png") == expected
    assert storage.resolve("job1", str(expected)) == expected


@pytest.mark.parametrize(
    "path",
    ["../job2/output/out.png", "output/../../job2", "../../../etc/passwd", "/etc/passwd", "..",
     "output/../../job1x/secret"],
)
def test_resolve_refuses_escapes(storage: JobStorage, path: str) -> None:
    storage.create_job_directory("job2")
    with pytest.raises(PathOutsideJob):
        storage.resolve("job1", path)


def test_resolve_refuses_absolute_paths_of_another_job(storage: JobStorage) -> None:
    storage.create_job_directory("job2")
    other = storage.get_output_path("job2").resolve()
    with pytest.raises(PathOutsideJob):
        storage.resolve("job1", str(other))


def test_resolve_refuses_symlink_out_of_the_job(storage: JobStorage, tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("s")
    (storage.get_output_path("job1") / "link").symlink_to(secret)
    with pytest.raises(PathOutsideJob):
        storage.resolve("job1", "output/link")


@pytest.mark.parametrize("job_id", ["", ".", "..", "a/b", "a\\b"])
def test_invalid_job_ids(storage: JobStorage, job_id: str) -> None:
    with pytest.raises(PathOutsideJob):
        storage.job_dir(job_id)


async def test_upload_within_limit_is_saved_with_hash(storage: JobStorage) -> None:
    data = b"x" * 1000
    info = await storage.save_input_file("job1", "../../evil.png", UploadFile(io.BytesIO(data)))
    saved = storage.get_input_path("job1") / "evil.png"
    assert info == {"filename": "evil.png", "path": str(saved), "size": 1000,
                    "hash": hashlib.sha256(data).hexdigest()}
    assert saved.read_bytes() == data


async def test_upload_over_limit_raises_and_removes_the_job_folder(storage: JobStorage) -> None:
    with pytest.raises(UploadTooLarge):
        await storage.save_input_file("job1", "big.bin", UploadFile(io.BytesIO(b"x" * 1001)))
    assert not storage.job_dir("job1").exists()


async def test_upload_without_filename(storage: JobStorage) -> None:
    info = await storage.save_input_file("job1", None, UploadFile(io.BytesIO(b"abc")))
    assert info["filename"] == "upload" and info["size"] == 3


def test_cleanup_and_size(storage: JobStorage) -> None:
    assert storage.size_bytes() == 3
    assert storage.cleanup_job("job1") is True
    assert storage.cleanup_job("job1") is False
    assert storage.size_bytes() == 0
