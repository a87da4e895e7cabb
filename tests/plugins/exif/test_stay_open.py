"""The persistent exiftool: a hostile file (huge metadata, too slow) or a stuck, killed or
cancelled exiftool costs that file only; the next read works."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path

import pytest

from compute.jobs import DEFAULT_MAX_RESULT_BYTES, result_bytes
from compute.plugins.exif.algorithm import (
    SUMMARY,
    TRUNCATED_FIELD,
    VALUE_LIMIT_BYTES,
    Metadata,
    MetadataUnreadable,
    metadata_output,
    read_tags,
    shared_exiftool,
)
from tests.support.exif_samples import needs_exiftool, photo, png_with_xmp, xmp_description, xmp_labels
from tests.support.waits import wait_for

pytestmark = needs_exiftool


def state(pid: int) -> str:
    """The process's state letter (R, S, T, Z ...), or "gone"."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return "gone"


async def a_normal_read_works(folder: Path) -> None:
    (folder / "normal.jpg").write_bytes(photo())
    metadata = await read_tags(folder / "normal.jpg", [folder])
    assert metadata.tags["Make"] == "Canon" and metadata.cut == [] and metadata.dropped == 0


async def running_exiftool(folder: Path) -> int:
    """The shared exiftool's pid, started by a read if it was not running."""
    await a_normal_read_works(folder)
    pid = shared_exiftool().pid
    assert pid is not None
    return pid


async def test_one_exiftool_serves_every_read(tmp_path: Path) -> None:
    pid = await running_exiftool(tmp_path)
    started = shared_exiftool().started
    for _ in range(3):
        await a_normal_read_works(tmp_path)
    assert shared_exiftool().pid == pid and shared_exiftool().started == started


async def test_20_mb_of_xmp_is_cut_to_the_value_limit(tmp_path: Path) -> None:
    """A 1x1 PNG with a 20 MB XMP description: the value is cut and marked, the output stays small."""
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_with_xmp(xmp_description("é" + "A" * 20_000_000)))
    metadata = await read_tags(bomb, [tmp_path])
    description = metadata.tags["Description"]
    assert description.startswith("éAAAA") and description.endswith("…[truncated: 20000004 bytes]")
    assert len(description.encode()) <= VALUE_LIMIT_BYTES + 40
    assert metadata.cut == ["Description"] and metadata.dropped == 0

    output = metadata_output(metadata)
    assert output[TRUNCATED_FIELD] == {
        "cut_values": ["Description"],
        "value_limit_bytes": VALUE_LIMIT_BYTES,
        "tags_left_out": 0,
        "output_limit_bytes": DEFAULT_MAX_RESULT_BYTES,
    }
    assert len(json.dumps(output)) < 16 * 1024
    assert output["ImageWidth"] == 1  # the rest of the file's tags are still there
    await a_normal_read_works(tmp_path)


async def test_tags_past_the_output_limit_are_left_out(tmp_path: Path) -> None:
    """The output fills MAX_RESULT_BYTES (the default here) without passing it: the worker would
    fail a larger result instead of sending it."""
    many = tmp_path / "many.png"
    many.write_bytes(png_with_xmp(xmp_labels(12_000, 100)))  # ~1.4 MB of JSON
    metadata = await read_tags(many, [tmp_path])
    output = metadata_output(metadata)
    assert 0 < output[TRUNCATED_FIELD]["tags_left_out"] < 12_000
    assert output[TRUNCATED_FIELD]["output_limit_bytes"] == DEFAULT_MAX_RESULT_BYTES
    assert "Label0" in output and "Label11999" not in output
    assert DEFAULT_MAX_RESULT_BYTES * 0.9 < result_bytes(output) <= DEFAULT_MAX_RESULT_BYTES

    # Asked-for tags are picked before the limit applies: the last one is there.
    chosen = await read_tags(many, [tmp_path], ["Label11999", "ImageWidth"])
    assert metadata_output(chosen, ["Label11999", "ImageWidth"]) == {
        "Label11999": "v" * 100,
        "ImageWidth": 1,
        **{k: v for k, v in metadata_output(chosen, ["ImageWidth"]).items() if k != "Label11999"},
    }
    assert TRUNCATED_FIELD not in metadata_output(chosen, ["Label11999"])
    await a_normal_read_works(tmp_path)


async def test_the_output_fits_the_limit_as_the_worker_measures_it(tmp_path: Path) -> None:
    """Emoji are 4 bytes in exiftool's answer and 12 in the result (JSON escapes them), and the
    summary repeats values: the tags left out are counted from the result as it is sent."""
    limit = 50_000
    marks = tmp_path / "marks.png"
    marks.write_bytes(png_with_xmp(xmp_labels(150, 1).replace(">v<", ">" + "\U0001f600" * 50 + "<")))
    metadata = await read_tags(marks, [tmp_path], limit=limit)
    assert metadata.dropped == 0  # exiftool's lines fit: only the result's measure is over
    output = metadata_output(metadata, limit=limit)
    assert limit - 700 < result_bytes(output) <= limit
    note = output[TRUNCATED_FIELD]
    assert note["output_limit_bytes"] == limit and note["cut_values"] == []
    assert note["tags_left_out"] == len(metadata.tags) - len(set(metadata.tags) & set(output)) > 0
    assert output["Label0"] == "\U0001f600" * 50 and "Label149" not in output
    assert output["image_width"] == 1  # what the summary reads is left out last


def test_a_tiny_limit_leaves_every_tag_out_but_the_summary_keeps_its_shape() -> None:
    metadata = Metadata({"Make": "m" * 3000, "Model": "x" * 3000, "Note": "y" * 3000}, cut=["Note"])
    output = metadata_output(metadata, limit=1024)
    assert result_bytes(output) <= 1024
    assert "Make" not in output and output["make"] is None and set(SUMMARY) <= set(output)
    assert output[TRUNCATED_FIELD]["tags_left_out"] == 3 and output[TRUNCATED_FIELD]["cut_values"] == []


async def test_a_file_that_takes_too_long_does_not_hold_up_the_next(tmp_path: Path) -> None:
    slow = tmp_path / "slow.png"
    slow.write_bytes(png_with_xmp(xmp_labels(100_000, 10)))  # seconds of exiftool's CPU
    pid = await running_exiftool(tmp_path)
    with pytest.raises(MetadataUnreadable, match=r"exiftool took longer than 0\.3 s"):
        await read_tags(slow, [tmp_path], timeout=0.3)
    assert state(pid) == "gone"
    await a_normal_read_works(tmp_path)


async def test_a_stuck_exiftool_is_replaced(tmp_path: Path) -> None:
    pid = await running_exiftool(tmp_path)
    os.kill(pid, signal.SIGSTOP)  # it takes the request and never answers
    await wait_for(lambda: state(pid) == "T", what="exiftool stopped")
    (tmp_path / "any.jpg").write_bytes(photo())
    with pytest.raises(MetadataUnreadable, match=r"took longer than 0\.5 s"):
        await read_tags(tmp_path / "any.jpg", [tmp_path], timeout=0.5)
    assert state(pid) == "gone"
    await a_normal_read_works(tmp_path)


async def test_an_exiftool_that_dies_fails_that_file_only(tmp_path: Path) -> None:
    pid = await running_exiftool(tmp_path)
    os.kill(pid, signal.SIGSTOP)
    (tmp_path / "any.jpg").write_bytes(photo())
    reading = asyncio.create_task(read_tags(tmp_path / "any.jpg", [tmp_path]))
    await wait_for(lambda: shared_exiftool().busy, what="the read under way")
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(MetadataUnreadable, match="exiftool could not read the file: exiftool ended"):
        await reading
    await a_normal_read_works(tmp_path)
    assert shared_exiftool().pid != pid


async def test_a_cancelled_read_kills_exiftool(tmp_path: Path) -> None:
    """Its answer, still to come, must not be taken for the next file's."""
    pid = await running_exiftool(tmp_path)
    os.kill(pid, signal.SIGSTOP)
    await wait_for(lambda: state(pid) == "T", what="exiftool stopped")
    (tmp_path / "any.jpg").write_bytes(photo())
    reading = asyncio.create_task(read_tags(tmp_path / "any.jpg", [tmp_path]))
    await wait_for(lambda: shared_exiftool().busy, what="the read under way")
    reading.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reading
    await wait_for(lambda: state(pid) == "gone", what="exiftool killed")
    await a_normal_read_works(tmp_path)


async def test_arguments_cannot_smuggle_commands(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="line break"):
        await shared_exiftool().read(["a.jpg\n-w\n%d.txt"], lambda lines, lengths: None, 5)
    with pytest.raises(ValueError, match="absolute"):
        await read_tags(Path("-w"), [tmp_path])
