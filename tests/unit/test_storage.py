"""Job folders: uploads are size-limited and stored under generated names, lookups never leave the
job's folder, and what the file system refuses for a client's path is the client's fault."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import time
from pathlib import Path

import pytest
from starlette.datastructures import UploadFile

from compute.storage import BadPath, JobStorage, NotAJobFile, PathOutsideJob, UploadTooLarge, valid_job_id


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


def read(storage: JobStorage, path: str, job_id: str = "job1") -> tuple[bytes, str]:
    """The content and name of the file open_file opens (its descriptor closed)."""
    fd, name = storage.open_file(job_id, path)
    with os.fdopen(fd, "rb") as file:
        return file.read(), name


def test_open_file_inside_the_job(storage: JobStorage) -> None:
    full = storage.get_output_path("job1") / "out.png"
    for path in ("output/out.png", "input/../output/out.png", "./output//out.png", str(full)):
        assert read(storage, path) == (b"png", "out.png"), path


@pytest.mark.parametrize(
    "path",
    [
        "../job2/output/out.png",
        "output/../../job2",
        "../../../etc/passwd",
        "/etc/passwd",
        "..",
        "output/../../job1x/secret",
    ],
)
def test_open_file_refuses_escapes(storage: JobStorage, path: str) -> None:
    storage.create_job_directory("job2")
    with pytest.raises(PathOutsideJob):
        storage.open_file("job1", path)


def test_open_file_refuses_absolute_paths_of_another_job(storage: JobStorage) -> None:
    storage.create_job_directory("job2")
    other = storage.get_output_path("job2") / "out.png"
    other.write_bytes(b"theirs")
    with pytest.raises(PathOutsideJob):
        storage.open_file("job1", str(other))


def test_no_link_in_a_job_folder_is_followed(storage: JobStorage, tmp_path: Path) -> None:
    """A link to a file outside, to a file inside, or a folder that is a link: none is a file of
    the job (they lead wherever their target is when they are read)."""
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "secret.txt").write_text("s")
    output = storage.get_output_path("job1")
    (output / "out-link").symlink_to(secret / "secret.txt")
    (output / "in-link").symlink_to(output / "out.png")
    (storage.job_dir("job1") / "elsewhere").symlink_to(secret)
    for path in ("output/out-link", "output/in-link", "elsewhere/secret.txt"):
        with pytest.raises(NotAJobFile):
            storage.open_file("job1", path)
    assert storage.job_files("job1") == [("output/out.png", 3)]


def test_a_folder_or_a_fifo_is_not_a_file_and_opening_one_does_not_wait(storage: JobStorage) -> None:
    os.mkfifo(storage.get_output_path("job1") / "pipe")
    for path in ("output/pipe", "output", "", "output/none.png", "output/out.png/x"):
        with pytest.raises(NotAJobFile):
            storage.open_file("job1", path)


def test_removing_a_job_never_follows_its_links(storage: JobStorage, tmp_path: Path) -> None:
    """Retention, DELETE /jobs/{id} and the orphan sweep remove job folders with cleanup_job:
    a link in one, to a file or a folder, goes; what it points to stays."""
    assert shutil.rmtree.avoids_symlink_attacks  # rmtree by descriptor (Linux)
    keep = tmp_path / "keep"
    keep.mkdir()
    (keep / "precious.txt").write_text("p")
    (storage.get_output_path("job1") / "folder").symlink_to(keep)
    (storage.get_output_path("job1") / "file").symlink_to(keep / "precious.txt")
    assert storage.cleanup_job("job1") is True
    assert not storage.job_dir("job1").exists()
    assert (keep / "precious.txt").read_text() == "p"


@pytest.mark.parametrize(
    "job_id", ["", ".", "..", "a/b", "a\\b", "a\x00b", "x" * 129, "a b", "-rf", "\u00e9t\u00e9"]
)
def test_invalid_job_ids(storage: JobStorage, job_id: str) -> None:
    assert not valid_job_id(job_id)
    with pytest.raises(PathOutsideJob):
        storage.job_dir(job_id)


def test_valid_job_ids() -> None:
    for job_id in ("0b6c5d9e-5b1f-4a52-9d0e-2f4f1c1a3e7b", "job-1", "a", "x" * 128, "w1:2@host.x_y"):
        assert valid_job_id(job_id), job_id


async def test_upload_is_stored_under_a_generated_name_with_hash(storage: JobStorage) -> None:
    data = b"x" * 1000
    info = await storage.save_input_file("job1", "../../evil.PNG", UploadFile(io.BytesIO(data)))
    saved = storage.get_input_path("job1") / "upload.png"
    assert info == {
        "filename": "upload.png",
        "original_filename": "../../evil.PNG",
        "path": str(saved),
        "size": 1000,
        "hash": hashlib.sha256(data).hexdigest(),
    }
    assert saved.read_bytes() == data
    second = await storage.save_input_file("job1", "other.png", UploadFile(io.BytesIO(b"2")))
    assert second["filename"] == "upload-2.png"  # never over the first


async def test_an_upload_never_writes_through_a_link_of_its_name(storage: JobStorage, tmp_path: Path) -> None:
    """The stored name is checked and made in one call: a link there (to a file that does not
    exist yet) is a taken name, never followed."""
    elsewhere = tmp_path / "elsewhere.png"
    (storage.get_input_path("job1") / "upload.png").symlink_to(elsewhere)
    info = await storage.save_input_file("job1", "photo.png", UploadFile(io.BytesIO(b"data")))
    assert info["filename"] == "upload-2.png"
    assert not elsewhere.exists()
    assert (storage.get_input_path("job1") / "upload-2.png").read_bytes() == b"data"


@pytest.mark.parametrize(
    "name",
    ["a\x00.png", "n" * 300 + ".png", "x." + "e" * 300, "photo.p\x00g", "../../../etc/passwd", "\udcff.png"],
)
async def test_names_the_file_system_would_refuse_are_only_data(storage: JobStorage, name: str) -> None:
    """A NUL or a 300-character name used to reach open(): 500. Now it is never a file name."""
    info = await storage.save_input_file("job1", name, UploadFile(io.BytesIO(b"abc")))
    assert Path(info["path"]).parent == storage.get_input_path("job1")
    assert info["filename"].startswith("upload") and len(info["filename"]) <= len("upload.") + 10
    assert info["original_filename"] == name


async def test_a_failed_upload_leaves_no_folder(storage: JobStorage) -> None:
    class Broken(io.BytesIO):
        def read(self, *_args: object) -> bytes:
            raise ConnectionResetError("client went away")

    with pytest.raises(ConnectionResetError):
        await storage.save_input_file("job1", "a.png", UploadFile(Broken()))
    assert not storage.job_dir("job1").exists()


def test_paths_no_file_can_have(storage: JobStorage) -> None:
    for path in ("input/\x00", "input/" + "a" * 5000):
        with pytest.raises(BadPath):
            storage.open_file("job1", path)
    with pytest.raises(NotAJobFile):
        storage.open_file("job1", "input/" + "d/" * 3000 + "x")  # inside the folder, but no file


def test_job_folders_report_their_age(storage: JobStorage) -> None:
    storage.create_job_directory("old")
    then = time.time() - 3600
    for path in (storage.get_input_path("old"), storage.get_output_path("old"), storage.job_dir("old")):
        os.utime(path, (then, then))
    (storage.jobs_root / "not a job").mkdir()  # no job can have that id: left alone
    ages = dict(storage.job_folders())
    assert set(ages) == {"job1", "old"}
    assert ages["job1"] < 60 and 3500 < ages["old"] < 3700


async def test_upload_over_limit_raises_and_removes_the_job_folder(storage: JobStorage) -> None:
    with pytest.raises(UploadTooLarge):
        await storage.save_input_file("job1", "big.bin", UploadFile(io.BytesIO(b"x" * 1001)))
    assert not storage.job_dir("job1").exists()


async def test_upload_without_filename(storage: JobStorage) -> None:
    info = await storage.save_input_file("job1", None, UploadFile(io.BytesIO(b"abc")))
    assert info["filename"] == "upload" and info["size"] == 3 and info["original_filename"] is None


def test_cleanup_and_size(storage: JobStorage) -> None:
    assert storage.size_bytes() == 3
    assert storage.cleanup_job("job1") is True
    assert storage.cleanup_job("job1") is False
    assert storage.size_bytes() == 0
