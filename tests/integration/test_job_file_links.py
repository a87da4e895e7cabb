"""GET /jobs/{id}/files and downloads never lead outside the job's folder through a link.

Job folders are ours, but their contents come from plugins and remote workers' uploads: a name in
one may be a link, or become one between the server's check and its read. The server opens the
file one name at a time from the job folder without following links and sends what it opened;
the listing walks without following links. The swaps are made at fixed points (when the response
starts, when the listing has read the job folder), not raced.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tests.support.backends import one_backend
from tests.support.inprocess import Server
from tests.support.jobs import add_job


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Files are the subject, not the broker or the database: one backend."""
    one_backend(metafunc)


#: The upload's bytes and the secret's: the same length, so Content-Length cannot tell them apart.
MINE, SECRET = b"my own job output", b"another's secret!"


@pytest.fixture
def job(server: Server, tmp_path: Path) -> tuple[str, Path, Path]:
    """(job id, its folder, a folder outside every job holding secret.txt) with output/result.txt."""
    assert len(MINE) == len(SECRET)
    job_id = add_job(server, "image_conversion")
    job_dir = server.services.storage.create_job_directory(job_id)
    (job_dir / "output" / "result.txt").write_bytes(MINE)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_bytes(SECRET)
    (outside / "result.txt").write_bytes(SECRET)
    return job_id, job_dir, outside


def _swap_for_link(path: Path, target: Path) -> None:
    """Replace `path` (a file or a folder) by a link to `target`, as a hostile writer would."""
    link = path.with_name(path.name + ".link")
    link.symlink_to(target)
    if path.is_dir() and not path.is_symlink():  # moved away, out of the job folder
        path.rename(target.parent / f"{path.name}.gone")
    os.replace(link, path)


def _on_response_start(app: ASGIApp, action: Callable[[], None]) -> ASGIApp:
    """`app`, doing `action` once a response has started and before its body is sent."""

    async def asgi(scope: Scope, receive: Receive, send: Send) -> None:
        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                action()
            await send(message)

        await app(scope, receive, sending)

    return asgi


async def test_a_file_swapped_for_a_link_after_the_check_is_still_the_file_sent(
    server: Server, job: tuple[str, Path, Path]
) -> None:
    """The name becomes a link to a file outside after the server checked it and before the body
    is sent: the body is the file that was checked (the server sends what it opened)."""
    job_id, job_dir, outside = job
    result = job_dir / "output" / "result.txt"
    swapped = _on_response_start(server.app, lambda: _swap_for_link(result, outside / "secret.txt"))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=swapped), base_url="http://c") as client:
        response = await client.get(f"/jobs/{job_id}/files/output/result.txt")
    assert result.is_symlink()  # the swap happened
    assert response.status_code == 200
    assert response.content == MINE


async def test_a_folder_swapped_for_a_link_after_the_check_is_still_the_folder_read(
    server: Server, job: tuple[str, Path, Path]
) -> None:
    job_id, job_dir, outside = job
    swapped = _on_response_start(server.app, lambda: _swap_for_link(job_dir / "output", outside))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=swapped), base_url="http://c") as client:
        response = await client.get(f"/jobs/{job_id}/files/output/result.txt")
    assert (job_dir / "output").is_symlink()
    assert response.status_code == 200 and response.content == MINE


@pytest.mark.parametrize("link", ["output/result.txt", "output"], ids=["file", "folder"])
async def test_a_link_in_a_job_folder_is_no_file_of_the_job(
    server: Server, job: tuple[str, Path, Path], link: str
) -> None:
    job_id, job_dir, outside = job
    _swap_for_link(job_dir / link, outside / "secret.txt" if link.endswith(".txt") else outside)
    response = await server.client.get(f"/jobs/{job_id}/files/output/result.txt")
    assert response.status_code == 404 and SECRET not in response.content
    listing = await server.client.get(f"/jobs/{job_id}/files")
    assert [f["path"] for f in listing.json()["files"]] == []


async def test_a_fifo_is_no_file_and_does_not_hold_the_request(
    server: Server, job: tuple[str, Path, Path]
) -> None:
    job_id, job_dir, _ = job
    os.mkfifo(job_dir / "output" / "pipe")
    response = await server.client.get(f"/jobs/{job_id}/files/output/pipe")
    assert response.status_code == 404


async def test_a_download_from_its_descriptor_keeps_ranges_and_headers(
    server: Server, job: tuple[str, Path, Path]
) -> None:
    job_id, _, _ = job
    url = f"/jobs/{job_id}/files/output/result.txt"
    part = await server.client.get(url, headers={"Range": "bytes=3-5"})
    assert part.status_code == 206 and part.content == MINE[3:6]
    assert part.headers["content-range"] == f"bytes 3-5/{len(MINE)}"
    whole = await server.client.get(url)
    assert whole.headers["content-disposition"] == 'attachment; filename="result.txt"'
    assert whole.headers["x-content-type-options"] == "nosniff" and whole.content == MINE


class _SwapAfterLastLook:
    """os.stat and os.path.islink as they are, but right after a walk's last look at `folder`
    before it enters it (os.walk: islink(path); os.fwalk: lstat of the name by the parent's
    descriptor), `swap` runs, once: the window between a check and the use of a path."""

    def __init__(self, folder: Path, swap: Callable[[], None]) -> None:
        self.folder = folder
        self.parent = os.stat(folder.parent)
        self.swap = swap
        self.done = False
        self.real_stat = os.stat
        self.real_islink = os.path.islink

    def stat(self, target: Any, *, dir_fd: int | None = None, follow_symlinks: bool = True) -> os.stat_result:
        result = self.real_stat(target, dir_fd=dir_fd, follow_symlinks=follow_symlinks)
        if (
            not follow_symlinks
            and dir_fd is not None
            and target == self.folder.name
            and os.path.samestat(os.fstat(dir_fd), self.parent)
        ):
            self._swap_once()
        return result

    def islink(self, target: Any) -> bool:
        result = self.real_islink(target)
        if Path(os.fsdecode(target)) == self.folder:
            self._swap_once()
        return result

    def _swap_once(self) -> None:
        if not self.done:
            self.done = True
            self.swap()


async def test_a_folder_swapped_for_a_link_while_listing_is_not_listed(
    server: Server, job: tuple[str, Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`output` becomes a link to a folder outside after the walk looked at it and before it
    entered it: nothing of the folder outside is listed."""
    job_id, job_dir, outside = job
    hook = _SwapAfterLastLook(job_dir / "output", lambda: _swap_for_link(job_dir / "output", outside))
    monkeypatch.setattr(os, "stat", hook.stat)
    monkeypatch.setattr(os.path, "islink", hook.islink)
    listing = await server.client.get(f"/jobs/{job_id}/files")
    monkeypatch.undo()
    assert hook.done and (job_dir / "output").is_symlink()
    assert listing.status_code == 200
    assert [f["path"] for f in listing.json()["files"]] == []
