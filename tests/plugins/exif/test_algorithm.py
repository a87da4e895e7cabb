"""exif's algorithm with the real exiftool on files whose EXIF Pillow wrote."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from compute.plugins.exif.algorithm import (
    HIDDEN_TAGS,
    SUMMARY,
    MetadataUnreadable,
    bad_tag_names,
    metadata_output,
    read_tags,
    summary,
)
from tests.support.exif_samples import BROKEN_MPEG, needs_exiftool, photo

pytestmark = needs_exiftool

SERVER_DETAILS = {
    "SourceFile",
    "Directory",
    "FileName",
    "FilePermissions",
    "FileModifyDate",
    "FileAccessDate",
    "FileInodeChangeDate",
    "ExifToolVersion",
}


def no_server_details(tags: dict[str, Any], folder: Path) -> None:
    assert not SERVER_DETAILS & set(tags) and not HIDDEN_TAGS & set(tags)
    assert str(folder) not in repr(tags)


async def test_tags_come_back_by_name(tmp_path: Path) -> None:
    (tmp_path / "upload.jpg").write_bytes(photo())
    tags = (await read_tags(tmp_path / "upload.jpg", [tmp_path])).tags
    expected = {
        "Make": "Canon",
        "Model": "EOS 5D",
        "Software": "FirmwareX 1.2",
        "ModifyDate": "2024:01:02 03:04:05",
        "DateTimeOriginal": "2023:05:06 07:08:09",
        "ISO": 200,
        "FNumber": 2.8,
        "ExposureTime": 0.01,
        "FocalLength": 50,
        "Orientation": 1,
        "ImageWidth": 40,
        "ImageHeight": 30,
        "MIMEType": "image/jpeg",
    }
    assert expected.items() <= tags.items()
    # -n: signed decimal degrees (south is negative), no group prefixes.
    assert tags["GPSLatitude"] == pytest.approx(-33.86) and tags["GPSLongitude"] == pytest.approx(151.21)
    assert tags["GPSAltitude"] == pytest.approx(58.5)
    assert not any(":" in name for name in tags)
    no_server_details(tags, tmp_path)


async def test_output_has_the_alias_and_typed_summary(tmp_path: Path) -> None:
    (tmp_path / "upload.jpg").write_bytes(photo())
    output = metadata_output(await read_tags(tmp_path / "upload.jpg", [tmp_path]))
    assert output["DateTime"] == output["ModifyDate"] == "2024:01:02 03:04:05"
    assert {k: output[k] for k in SUMMARY} == {
        "make": "Canon",
        "model": "EOS 5D",
        "date_time_original": "2023:05:06 07:08:09",
        "create_date": None,
        "image_width": 40,
        "image_height": 30,
        "orientation": 1,
        "iso": 200,
        "f_number": 2.8,
        "exposure_time": "1/100",
        "focal_length": 50.0,
        "gps_latitude": pytest.approx(-33.86),
        "gps_longitude": pytest.approx(151.21),
        "gps_altitude": 58.5,
        "software": "FirmwareX 1.2",
    }


async def test_asked_for_tags_only(tmp_path: Path) -> None:
    (tmp_path / "upload.jpg").write_bytes(photo())
    output = metadata_output(
        await read_tags(tmp_path / "upload.jpg", [tmp_path]), ["make", "DateTime", "GPSLatitude", "NoSuchTag"]
    )
    assert set(output) - set(SUMMARY) == {"Make", "DateTime", "GPSLatitude"}
    assert output["make"] == "Canon" and output["gps_latitude"] == pytest.approx(-33.86)
    assert output["model"] is None  # the summary follows the selection


async def test_image_without_exif_is_a_dict(tmp_path: Path) -> None:
    (tmp_path / "upload.jpg").write_bytes(photo(exif=False))
    output = metadata_output(await read_tags(tmp_path / "upload.jpg", [tmp_path]))
    assert output["FileType"] == "JPEG" and output["image_width"] == 40
    assert output["make"] is None and "Make" not in output and "DateTime" not in output
    no_server_details(output, tmp_path)


def test_every_system_tag_is_hidden() -> None:
    # exiftool's own list, so a newer exiftool with more file-system tags fails here, not in production.
    listed = subprocess.run(
        ["exiftool", "-list", "-System:All"], capture_output=True, text=True, check=True, timeout=30
    ).stdout
    names = set(listed.split()) - {"Available", "System", "tags:"}
    assert names and names - {"FileSize"} <= HIDDEN_TAGS


async def test_unreadable_file_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "upload.mpg").write_bytes(BROKEN_MPEG)
    with pytest.raises(MetadataUnreadable, match="exiftool could not read the file") as caught:
        await read_tags(tmp_path / "upload.mpg", [tmp_path])
    assert str(tmp_path) not in str(caught.value)


async def test_missing_file_names_no_server_path(tmp_path: Path) -> None:
    with pytest.raises(MetadataUnreadable) as caught:
        await read_tags(tmp_path / "input" / "gone.jpg", [tmp_path])
    assert str(tmp_path) not in str(caught.value) and "input/gone.jpg" in str(caught.value)


def test_summary_types_are_checked() -> None:
    odd = {
        "ISO": "100, 200",
        "FNumber": "f/2",
        "Make": 300,
        "Orientation": True,
        "ExposureTime": 2.5,
        "ImageWidth": 40.0,
        "ImageHeight": 30.5,
        "GPSLatitude": 12,
        "FocalLength": None,
    }
    typed = summary(odd)
    assert typed["iso"] is None and typed["f_number"] is None and typed["orientation"] is None
    assert typed["make"] == "300" and typed["exposure_time"] == "2.5"
    assert typed["image_width"] == 40 and typed["image_height"] is None
    assert typed["gps_latitude"] == 12.0 and isinstance(typed["gps_latitude"], float)
    assert typed["focal_length"] is None and typed["model"] is None


def test_bad_tag_names() -> None:
    assert bad_tag_names(["Make", "GPS-Latitude", "ISO_2", "-w", "if x", "a;b", "EXIF:Make", "x" * 65]) == [
        "-w",
        "if x",
        "a;b",
        "EXIF:Make",
        "x" * 65,
    ]
