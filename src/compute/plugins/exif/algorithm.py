"""Read metadata with exiftool, drop what describes the server rather than the media, summarise it.

exiftool is run without tag arguments and the requested tags are picked out here: a client's
tag name never reaches exiftool's command line, where names like `w`, `o` or `if` are options
(`-w` writes files, `-if` evaluates Perl).
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

from compute.errors import ComputeError
from compute.plugins import tools

EXIFTOOL = "exiftool"
TIMEOUT_SECONDS = 30.0

#: Tags about the server's copy of the file, not the media: exiftool's System group (all but
#: FileSize) and its ExifTool group (all but Warning). `exiftool -list -System:All` lists them.
HIDDEN_TAGS = frozenset(
    {
        "SourceFile",
        # ExifTool group
        "ExifToolVersion",
        "Now",
        "NewGUID",
        "FileSequence",
        "ProcessingTime",
        # System group
        "BaseName",
        "Directory",
        "FileAccessDate",
        "FileAttributes",
        "FileBlockCount",
        "FileBlockSize",
        "FileCreateDate",
        "FileDeviceID",
        "FileDeviceNumber",
        "FileGroupID",
        "FileHardLinks",
        "FileInodeChangeDate",
        "FileInodeNumber",
        "FileModifyDate",
        "FileName",
        "FilePath",
        "FilePermissions",
        "FileUserID",
        "ResourceForkSize",
        "ZoneIdentifier",
    }
)

#: What a tag name may look like: ExifTool names are letters, digits, `_` and `-`, never a leading `-`.
TAG_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
#: The name CL Server's SDK docs read for EXIF's 0x0132, which ExifTool calls ModifyDate.
ALIASES = {"DateTime": "ModifyDate"}

_STR, _INT, _FLOAT, _EXPOSURE = "str", "int", "float", "exposure"
#: Typed summary fields (as cl_ml_tools' ExifMetadataOutput): key -> (ExifTool tag, type).
SUMMARY: dict[str, tuple[str, str]] = {
    "make": ("Make", _STR),
    "model": ("Model", _STR),
    "date_time_original": ("DateTimeOriginal", _STR),
    "create_date": ("CreateDate", _STR),
    "image_width": ("ImageWidth", _INT),
    "image_height": ("ImageHeight", _INT),
    "orientation": ("Orientation", _INT),
    "iso": ("ISO", _INT),
    "f_number": ("FNumber", _FLOAT),
    "exposure_time": ("ExposureTime", _EXPOSURE),
    "focal_length": ("FocalLength", _FLOAT),
    "gps_latitude": ("GPSLatitude", _FLOAT),
    "gps_longitude": ("GPSLongitude", _FLOAT),
    "gps_altitude": ("GPSAltitude", _FLOAT),
    "software": ("Software", _STR),
}


class MetadataUnreadable(ComputeError):
    """exiftool could not read the file."""


def bad_tag_names(tags: Collection[str]) -> list[str]:
    """The names in `tags` that cannot be ExifTool tag names."""
    return [t for t in tags if not TAG_NAME.match(t)]


def command(path: Path) -> list[str]:
    """`-j`: JSON; `-n`: numbers as numbers (GPS in signed decimal degrees, Orientation 1-8)."""
    return [EXIFTOOL, "-j", "-n", "-api", "LargeFileSupport=1", str(path)]


def _error_in(output: bytes) -> str | None:
    """The `Error` exiftool -j reports in its JSON (where it says why it failed), if any."""
    try:
        error = json.loads(output)[0].get("Error")
    except (ValueError, IndexError, AttributeError, TypeError):
        return None
    return error if isinstance(error, str) else None


async def read_tags(path: Path, hide: Sequence[Path]) -> dict[str, Any]:
    """Every tag exiftool finds in the file, by its name without group (exiftool's own choice
    among duplicates), server-describing tags removed and server paths cut out of the values."""
    try:
        out = await tools.run(command(path), timeout=TIMEOUT_SECONDS, hide=hide)
    except TimeoutError:
        raise MetadataUnreadable(f"exiftool took longer than {TIMEOUT_SECONDS:g} s") from None
    except tools.ToolFailed as exc:  # exit code 1: the file could not be read at all
        reason = _error_in(exc.output) or str(exc).removeprefix(f"{EXIFTOOL} failed: ")
        raise MetadataUnreadable(f"exiftool could not read the file: {_scrubbed(reason, hide)}") from None
    try:
        found = json.loads(out)[0]
    except (ValueError, IndexError, KeyError, TypeError):
        raise MetadataUnreadable("exiftool gave no readable metadata") from None
    if not isinstance(found, dict):
        raise MetadataUnreadable("exiftool gave no readable metadata")
    if "Error" in found:
        raise MetadataUnreadable(f"exiftool could not read the file: {_scrubbed(found['Error'], hide)}")
    return {name: _scrubbed(value, hide) for name, value in found.items() if name not in HIDDEN_TAGS}


def with_aliases(tags: dict[str, Any]) -> dict[str, Any]:
    """`tags` plus the names clients read for tags ExifTool names otherwise (a real tag wins)."""
    extra = {alias: tags[source] for alias, source in ALIASES.items() if source in tags and alias not in tags}
    return {**tags, **extra}


def selected(tags: dict[str, Any], wanted: Collection[str]) -> dict[str, Any]:
    """The tags named in `wanted` (case-insensitive, as exiftool matches names); all when empty."""
    if not wanted:
        return dict(tags)
    names = {w.lower() for w in wanted}
    return {name: value for name, value in tags.items() if name.lower() in names}


def summary(tags: dict[str, Any]) -> dict[str, Any]:
    """The typed snake_case fields; None where the tag is absent or not of a usable type."""
    return {key: _typed(tags.get(tag), kind) for key, (tag, kind) in SUMMARY.items()}


def metadata_output(tags: dict[str, Any], wanted: Collection[str] = ()) -> dict[str, Any]:
    """task_output: the (selected) tags by ExifTool name, with aliases, and the summary of those."""
    chosen = selected(with_aliases(tags), wanted)
    return {**chosen, **summary(chosen)}


def _typed(value: Any, kind: str) -> Any:
    if value is None or isinstance(value, bool):
        return None
    number = isinstance(value, int | float)
    if kind == _STR:
        return str(value) if isinstance(value, str) or number else None
    if kind == _INT:
        if isinstance(value, int):
            return value
        return int(value) if isinstance(value, float) and value.is_integer() else None
    if kind == _FLOAT:
        return float(value) if number else None
    # Exposure time: `-n` gives seconds as a number; shown as photographers write it ("1/100").
    if isinstance(value, str):
        return value
    if not number or value <= 0:
        return None
    if value < 1 and abs(1 / value - round(1 / value)) < 0.01:
        return f"1/{round(1 / value)}"
    return f"{value:g}"


def _scrubbed(value: Any, hide: Sequence[Path]) -> Any:
    if isinstance(value, str):
        return tools.scrub(value, hide)
    if isinstance(value, list):
        return [_scrubbed(v, hide) for v in value]
    if isinstance(value, dict):
        return {k: _scrubbed(v, hide) for k, v in value.items()}
    return value
