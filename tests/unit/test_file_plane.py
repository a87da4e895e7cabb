"""The file plane's parts without a server: the wire format, paths beneath a folder, staging and
promotion, scratch folders, what counts as an output, and how a worker decides it shares the disk."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy import Engine

from compute.beneath import BadRelativePath, open_file, opened_folder, parts_of
from compute.config import Settings
from compute.db.storage_id import recorded_storage_id, server_storage_id
from compute.errors import ConfigError
from compute.files.outputs import batches, collect_outputs, fingerprints
from compute.files.staging import OutputStaging
from compute.files.wire import (
    BadTransfer,
    ChunkReader,
    FileEntry,
    StreamEnded,
    encode_header,
    outputs_manifest,
    parse_files,
    parse_have,
)
from compute.storage import MARKER_NAME, JobStorage, read_storage_marker, write_storage_marker
from compute.worker.disk_sharing import decide
from compute.worker.scratch import Scratch

JOB = "0b6c0000-0000-4000-8000-000000000001"


def entry(path: str, data: bytes) -> FileEntry:
    return FileEntry(path, len(data), hashlib.sha256(data).hexdigest())


async def chunks(data: bytes, size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


# -- paths ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["output/a.jpg", "faces/face_0.png", "a", "output/adaptive.m3u8", "é/ü"])
def test_plain_relative_paths_pass(path: str) -> None:
    assert "/".join(parts_of(path)) == path


@pytest.mark.parametrize(
    "path", ["", "/abs", "../x", "a/../b", "a/./b", "a//b", "a/", ".", "a\\b", "a\x00b", "a\tb", None, 3]
)
def test_paths_that_could_leave_the_folder_are_refused(path: object) -> None:
    with pytest.raises(BadRelativePath):
        parts_of(path)


def test_a_link_on_the_way_is_not_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("no")
    root = tmp_path / "job"
    root.mkdir()
    (root / "output").symlink_to(outside)
    (root / "file").symlink_to(outside / "secret")
    with opened_folder(root) as fd:
        with pytest.raises(OSError):
            open_file(fd, ("output", "secret"), os.O_RDONLY)
        with pytest.raises(OSError):
            open_file(fd, ("file",), os.O_RDONLY)
        with pytest.raises(OSError):  # nor written through
            open_file(fd, ("output", "new"), os.O_WRONLY | os.O_CREAT, create_dirs=True)
    assert not (outside / "new").exists()


# -- the wire format -----------------------------------------------------------------------------


def test_a_manifest_round_trips() -> None:
    entries = [entry("output/a.jpg", b"a"), entry("faces/face_0.png", b"bb")]
    assert parse_files(outputs_manifest(entries), with_sha=True, with_offset=False) == entries


@pytest.mark.parametrize(
    "raw",
    [
        b"{",
        b'{"files": [1]}',
        b'{"files": [{"path": "a", "size": true, "sha256": "' + b"0" * 64 + b'"}]}',
        b'{"files": [{"path": "a", "size": 1.5, "sha256": "' + b"0" * 64 + b'"}]}',
        b'{"files": [{"path": "a", "size": 1}]}',
    ],
)
def test_malformed_manifests_are_refused(raw: bytes) -> None:
    with pytest.raises(BadTransfer):
        parse_files(raw, with_sha=True, with_offset=False)


def test_an_offset_past_the_end_is_refused() -> None:
    with pytest.raises(BadTransfer):
        parse_files(b'{"files": [{"path": "a", "size": 1, "offset": 2}]}', with_sha=False, with_offset=True)


def test_have_maps_paths_to_byte_counts() -> None:
    assert parse_have(b'{"have": {"input/a": 3}}') == {"input/a": 3}
    with pytest.raises(BadTransfer):
        parse_have(b'{"have": {"input/a": -3}}')


async def test_the_reader_takes_exact_pieces_across_chunks_of_any_size() -> None:
    manifest = b'{"files": []}'
    data = encode_header(manifest) + b"0123456789"
    for size in (1, 3, 1000):
        reader = ChunkReader(chunks(data, size))
        assert await reader.header() == manifest
        assert await reader.exactly(4) == b"0123"
        piece = await reader.read(100)  # what has arrived, at most 100 bytes
        assert piece and b"456789".startswith(piece)
        with pytest.raises(StreamEnded):
            await reader.exactly(100)


async def test_a_stream_that_is_not_ours_or_too_big_is_refused() -> None:
    with pytest.raises(BadTransfer):
        await ChunkReader(chunks(b"GIF89a\x00\x00\x00\x00", 4)).header()
    with pytest.raises(BadTransfer):
        await ChunkReader(chunks(b"CFP1\xff\xff\xff\xff", 4)).header()


def test_batches_keep_requests_under_the_limit() -> None:
    entries = [FileEntry(f"f{i}", size, "0" * 64) for i, size in enumerate([40, 40, 40, 100, 10])]
    assert [[e.path for e in b] for b in batches(entries, 100)] == [["f0", "f1"], ["f2"], ["f3"], ["f4"]]


# -- staging and promotion -----------------------------------------------------------------------


@pytest.fixture
def storage(tmp_path: Path) -> JobStorage:
    store = JobStorage(tmp_path / "storage", 10_000)
    store.create_job_directory(JOB)
    return store


async def stage(staging: OutputStaging, attempt: int, files: dict[str, bytes]) -> None:
    entries = [entry(p, d) for p, d in files.items()]
    staging.prepare(JOB, attempt)
    data = b"".join(files.values())
    await staging.receive(JOB, attempt, ChunkReader(chunks(data, 7)), entries)


async def test_promotion_moves_every_staged_file_into_the_job_folder(storage: JobStorage) -> None:
    staging = OutputStaging(storage)
    files = {"output/a.txt": b"a", "output/sub/b.txt": b"bb", "faces/face_0.png": b"png"}
    await stage(staging, 2, files)
    assert storage.job_files(JOB) == []

    assert staging.promote(JOB, 2) == 3

    assert dict(storage.job_files(JOB)) == {p: len(d) for p, d in files.items()}
    assert not storage.staging_dir(JOB).exists()
    assert staging.promote(JOB, 2) == 0  # again: nothing left to do


async def test_promotion_takes_the_completing_attempt_only(storage: JobStorage) -> None:
    staging = OutputStaging(storage)
    await stage(staging, 1, {"output/old.txt": b"old"})
    (storage.staging_dir(JOB) / "2" / "files").mkdir(parents=True)  # a later attempt, empty
    staging.promote(JOB, 2)
    assert storage.job_files(JOB) == []


async def test_preparing_an_attempt_drops_the_earlier_ones(storage: JobStorage) -> None:
    staging = OutputStaging(storage)
    await stage(staging, 1, {"output/old.txt": b"old"})
    staging.prepare(JOB, 2)
    assert staging.staged() == {JOB: [2]}


async def test_a_promotion_racing_another_ends_with_every_file_in_place(storage: JobStorage) -> None:
    staging = OutputStaging(storage)
    files = {f"output/s{i:03d}.ts": bytes([i]) * 100 for i in range(200)}
    await stage(staging, 1, files)
    other = OutputStaging(storage)  # another server process: its own lock

    await asyncio.gather(asyncio.to_thread(staging.promote, JOB, 1), asyncio.to_thread(other.promote, JOB, 1))

    assert dict(storage.job_files(JOB)) == {p: 100 for p in files}


def test_deleting_a_job_removes_its_staging(storage: JobStorage) -> None:
    (storage.staging_dir(JOB) / "1" / "files").mkdir(parents=True)
    storage.cleanup_job(JOB)
    assert not storage.staging_dir(JOB).exists()


# -- what a worker sends -------------------------------------------------------------------------


def test_outputs_are_new_or_changed_files_links_left_out(tmp_path: Path) -> None:
    (tmp_path / "input").mkdir()
    (tmp_path / "input" / "upload.png").write_bytes(b"in")
    (tmp_path / "input" / "edited.png").write_bytes(b"in")
    inputs = fingerprints(tmp_path)
    (tmp_path / "output").mkdir()
    (tmp_path / "output" / "a.jpg").write_bytes(b"out")
    (tmp_path / "input" / "edited.png").write_bytes(b"changed")
    (tmp_path / "output" / "link").symlink_to("/etc/passwd")

    found = {e.path: e for e in collect_outputs(tmp_path, inputs)}

    assert set(found) == {"output/a.jpg", "input/edited.png"}
    assert found["output/a.jpg"].sha256 == hashlib.sha256(b"out").hexdigest()


# -- scratch folders ----------------------------------------------------------------------------


def test_a_scratch_folder_is_held_by_one_worker_and_emptied_at_start(tmp_path: Path) -> None:
    first = Scratch(tmp_path, "w1")
    first.open()
    (first.job_dir(JOB) / "input").mkdir(parents=True)
    with pytest.raises(ConfigError, match="another running worker"):
        Scratch(tmp_path, "w1").open()
    first.close()  # a crash, as far as the folder knows

    again = Scratch(tmp_path, "w1")
    assert again.open() == 1
    assert list(again.jobs_root.iterdir()) == []
    again.close()


# -- finding out ---------------------------------------------------------------------------------


def test_the_marker_is_written_once_and_read_back(tmp_path: Path) -> None:
    write_storage_marker(tmp_path / "s", "abc")
    assert read_storage_marker(tmp_path / "s") == "abc"
    assert read_storage_marker(tmp_path / "elsewhere") is None


def test_a_worker_decides_from_the_databases_id_and_its_own_marker(engine: Engine, tmp_path: Path) -> None:
    settings = Settings(cl_server_dir=tmp_path, database_url="", storage_dir=tmp_path / "storage")
    assert recorded_storage_id(engine) is None
    assert decide(settings, engine).shared  # no server recorded one: the old, shared layout

    storage_id = server_storage_id(engine)
    assert server_storage_id(engine) == storage_id  # drawn once
    assert not decide(settings, engine).shared
    write_storage_marker(settings.storage_dir, storage_id)
    assert decide(settings, engine).shared
    assert not decide(replace(settings, worker_files="remote"), engine).shared
    (settings.storage_dir / MARKER_NAME).write_text("another deployment\n")
    assert not decide(settings, engine).shared
    assert decide(replace(settings, worker_files="shared"), engine).shared
