"""Absolute media paths: walked from the root's descriptor, symlinks followed only while they
stay inside the media roots, outputs placed through the checked folder's descriptor."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from compute.plugins import media_paths
from compute.plugins.environment import PluginEnvironment, replace_current
from compute.plugins.media_paths import MediaPathError, check_folder, open_file, open_folder, place


@pytest.fixture
def roots(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """Two media roots, and a private folder beside them with a secret in it."""
    media, other = tmp_path / "media", tmp_path / "other"
    for folder in (media, other, tmp_path / "private"):
        folder.mkdir()
    (tmp_path / "private" / "secret.mp4").write_bytes(b"secret")
    previous = replace_current(
        PluginEnvironment(tmp_path / "storage", tmp_path / "models", media_roots=(media, other))
    )
    yield media, other
    replace_current(previous)


def read(raw: str) -> bytes:
    with open_file(raw, "input_absolute_path") as found:
        return os.read(found.fd, 100)


def refused(raw: str, status: int, *, folder: bool = False) -> str:
    with pytest.raises(MediaPathError) as caught:
        if folder:
            open_folder(raw, "output_absolute_path", create=True)
        else:
            open_file(raw, "input_absolute_path")
    assert caught.value.status == status, str(caught.value)
    return str(caught.value)


def test_files_and_links_that_stay_inside(roots: tuple[Path, Path]) -> None:
    media, other = roots
    (media / "a" / "b").mkdir(parents=True)
    (media / "a" / "b" / "clip.mp4").write_bytes(b"clip")
    (other / "far.mp4").write_bytes(b"far")
    (media / "short").symlink_to("a/b")  # relative, inside
    (media / "a" / "up.mp4").symlink_to("../a/b/clip.mp4")
    (media / "to-other").symlink_to(other)  # absolute, into the other root
    assert read(str(media / "a" / "b" / "clip.mp4")) == b"clip"
    assert read(str(media / "short" / "clip.mp4")) == b"clip"
    assert read(str(media / "a" / "up.mp4")) == b"clip"
    assert read(f"{media}/a/./b/../b/clip.mp4") == b"clip"
    assert read(str(media / "to-other" / "far.mp4")) == b"far"
    with open_file(str(media / "short" / "clip.mp4"), "input_absolute_path") as found:
        assert found.path == media / "a" / "b" / "clip.mp4"  # where it really is


def test_everything_that_leads_out_is_403(roots: tuple[Path, Path], tmp_path: Path) -> None:
    media, _ = roots
    secret = tmp_path / "private" / "secret.mp4"
    (media / "link.mp4").symlink_to(secret)
    (media / "dir").symlink_to(tmp_path / "private")
    (media / "rel").symlink_to("../private")
    (media / "loop").symlink_to("loop")
    for raw in (
        str(secret),
        str(media / "link.mp4"),
        str(media / "dir" / "secret.mp4"),
        str(media / "rel" / "secret.mp4"),
        f"{media}/../private/secret.mp4",
    ):
        reason = refused(raw, 403)
        assert "COMPUTE_MEDIA_ROOTS" in reason and str(tmp_path) not in reason
    assert "too many symlinks" in refused(str(media / "loop"), 400)


def test_what_is_not_a_file(roots: tuple[Path, Path]) -> None:
    media, _ = roots
    os.mkfifo(media / "fifo.mp4")  # opening it must not wait for a writer
    (media / "folder.mp4").mkdir()
    (media / "file.mp4").write_bytes(b"x")
    assert "not a regular file" in refused(str(media / "fifo.mp4"), 400)
    assert "not a regular file" in refused(str(media / "folder.mp4"), 400)
    assert "not a regular file" in refused(str(media), 400)
    assert "no file" in refused(str(media / "nothing.mp4"), 404)
    assert "a part of it is a file" in refused(str(media / "file.mp4" / "x.mp4"), 400)
    assert "absolute" in refused("media/file.mp4", 400)
    assert "NUL" in refused(f"{media}/a\x00.mp4", 400)


def test_a_root_named_another_way(roots: tuple[Path, Path], tmp_path: Path) -> None:
    """A path spelled through a link above a root (as the roots' own path may be) still works."""
    media, _ = roots
    (media / "clip.mp4").write_bytes(b"clip")
    (tmp_path / "alias").symlink_to(media)
    assert read(str(tmp_path / "alias" / "clip.mp4")) == b"clip"


def test_output_folders_are_made_inside_only(roots: tuple[Path, Path], tmp_path: Path) -> None:
    media, _ = roots
    with open_folder(str(media / "streams" / "clip"), "output_absolute_path", create=True) as made:
        assert made.path == media / "streams" / "clip" and (media / "streams" / "clip").is_dir()
    (media / "out").symlink_to(tmp_path / "private")
    refused(str(media / "out" / "new"), 403, folder=True)
    assert sorted(p.name for p in (tmp_path / "private").iterdir()) == ["secret.mp4"]
    (media / "file").write_bytes(b"x")
    assert "is a file, not a folder" in refused(str(media / "file"), 400, folder=True)


def test_check_folder_says_where_without_making_it(roots: tuple[Path, Path], tmp_path: Path) -> None:
    media, _ = roots
    (media / "a").mkdir()
    (media / "b").symlink_to("a")
    assert (
        check_folder(str(media / "b" / "new" / "deeper"), "output_absolute_path")
        == media / "a" / "new" / "deeper"
    )
    assert not (media / "a" / "new").exists()
    with pytest.raises(MediaPathError) as caught:
        check_folder(f"{media}/new/../../private", "output_absolute_path")
    assert caught.value.status == 403


@pytest.mark.parametrize("same_disk", [True, False], ids=["rename", "copy"])
def test_place_replaces_links_and_never_writes_through_them(
    roots: tuple[Path, Path], tmp_path: Path, same_disk: bool
) -> None:
    media, _ = roots
    staging = Path(tempfile.mkdtemp(dir=tmp_path if same_disk else "/dev/shm"))
    try:
        (staging / "a.ts").write_bytes(b"segment")
        (staging / "a.m3u8").write_text("#EXTM3U\n")
        (media / "out").mkdir()
        victim = tmp_path / "private" / "victim.txt"
        victim.write_text("keep me")
        (media / "out" / "a.ts").symlink_to(victim)  # left there by someone who can write in the root
        with open_folder(str(media / "out"), "output_absolute_path", create=False) as folder:
            place(staging, ["a.ts", "a.m3u8"], folder.fd)
        assert victim.read_text() == "keep me"
        assert (
            not (media / "out" / "a.ts").is_symlink() and (media / "out" / "a.ts").read_bytes() == b"segment"
        )
        assert sorted(p.name for p in (media / "out").iterdir()) == ["a.m3u8", "a.ts"]  # no partial file left
    finally:
        shutil.rmtree(staging)


def test_fd_path_is_what_a_child_opens() -> None:
    assert media_paths.fd_path(7) == "/dev/fd/7"
