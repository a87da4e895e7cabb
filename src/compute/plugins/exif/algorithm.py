"""Read metadata with exiftool, drop what describes the server rather than the media, bound it,
summarise it.

exiftool is asked for every tag and the requested ones are picked out here: a client's tag name
never reaches exiftool's arguments, where names like `w`, `o` or `if` are options (`-w` writes
files, `-if` evaluates Perl). One exiftool per process stays open across jobs (stay_open.py).

A file's metadata is the uploader's to fill: a 1x1 PNG can carry 20 MB of XMP. So a value longer
than VALUE_LIMIT_BYTES is cut and marked (TRUNCATED_MARK), tags are left out once the output
would pass MAX_RESULT_BYTES (what the worker sends at most, result_budget.py), and
`task_output.metadata_truncated` names what was cut (see Collector and metadata_output).
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from compute.errors import ComputeError
from compute.plugins import tools
from compute.plugins.exif.stay_open import StayOpenExifTool
from compute.plugins.result_budget import entry_bytes, most_that_fit, result_limit

EXIFTOOL = "exiftool"
#: `-j`: JSON; `-n`: numbers as numbers (GPS in signed decimal degrees, Orientation 1-8);
#: `--struct`: structures flattened, so every tag is one line of the answer.
COMMON_ARGS = ("-j", "-n", "--struct", "-api", "LargeFileSupport=1")
TIMEOUT_SECONDS = 30.0
#: A tag value's JSON text longer than this is cut to it (and marked). Real photos' longest
#: texts (descriptions, XMP history) are well under it.
VALUE_LIMIT_BYTES = 4096
#: The end of a cut value; `size` is the length of the value's JSON text as exiftool gave it.
TRUNCATED_MARK = "…[truncated: {size} bytes]"
#: Room for `  "TagName": ` before the value on a line of the answer.
LINE_LIMIT_BYTES = VALUE_LIMIT_BYTES + 160
#: The task_output field that says what was cut, present only when something was.
TRUNCATED_FIELD = "metadata_truncated"

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


@dataclass(frozen=True)
class Metadata:
    """What exiftool read from a file, bounded (see `Collector`)."""

    #: Tag values by ExifTool name, server-describing tags removed, server paths cut out.
    tags: dict[str, Any]
    #: Names of the tags whose values were cut to VALUE_LIMIT_BYTES.
    cut: list[str] = field(default_factory=list)
    #: How many tags were left out because the ones before them filled the output limit.
    dropped: int = 0


def bad_tag_names(tags: Collection[str]) -> list[str]:
    """The names in `tags` that cannot be ExifTool tag names."""
    return [t for t in tags if not TAG_NAME.match(t)]


_shared: StayOpenExifTool | None = None
_shared_lock = threading.Lock()


def shared_exiftool() -> StayOpenExifTool:
    """This process's persistent exiftool (started at its first request)."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = StayOpenExifTool(EXIFTOOL, COMMON_ARGS, LINE_LIMIT_BYTES)
        return _shared


async def read_tags(
    path: Path,
    hide: Sequence[Path],
    wanted: Collection[str] = (),
    timeout: float = TIMEOUT_SECONDS,
    limit: int | None = None,
) -> Metadata:
    """The tags exiftool finds in the file (those named in `wanted`, and the ones their aliases
    stand for; all when empty), by name without group (exiftool's own choice among duplicates),
    server-describing tags removed and server paths cut out of the values; those whose lines fit
    in `limit` bytes (MAX_RESULT_BYTES by default)."""
    if not path.is_absolute():  # a relative name starting with `-` would be an option
        raise ValueError("exiftool is given absolute paths only")
    collector = Collector(wanted, hide, result_limit() if limit is None else limit)
    try:
        answer = await shared_exiftool().read([str(path)], collector, timeout)
    except TimeoutError:
        raise MetadataUnreadable(f"exiftool took longer than {timeout:g} s") from None
    except tools.ToolFailed as exc:  # exiftool ended while reading (killed, crashed, out of memory)
        raise MetadataUnreadable(f"exiftool could not read the file: {_scrubbed(str(exc), hide)}") from None
    metadata, error = collector.metadata()
    if error is not None:
        raise MetadataUnreadable(f"exiftool could not read the file: {error}")
    if metadata is None:  # no JSON at all: exiftool said why on stderr ("File not found - ...")
        reason = answer.stderr.splitlines()[-1] if answer.stderr else "no output"
        reason = _scrubbed(reason.removeprefix("Error: "), hide)
        raise MetadataUnreadable(f"exiftool could not read the file: {reason}")
    return metadata


class Collector:
    """Turns exiftool's `-j` answer, line by line, into tag values within bounds.

    `-j --struct` prints one tag per line (`  "Name": value,`; strings escape their line breaks),
    between `[{` and `}]`. A line longer than LINE_LIMIT_BYTES arrives cut (stay_open keeps no
    more): its value becomes a string, the value's first VALUE_LIMIT_BYTES (a string value's
    text, any other value's JSON) followed by TRUNCATED_MARK. Once the lines kept so far fill
    `limit` bytes, later tags are counted and left out (what is held stays bounded; the exact
    fit to MAX_RESULT_BYTES is metadata_output's). Either way `metadata_output` says so.

    The usual answer (every tag, nothing too long) is parsed whole, in one `json.loads`; lines
    are looked at one by one only when tags are selected or something had to be cut.
    """

    def __init__(self, wanted: Collection[str], hide: Sequence[Path], limit: int) -> None:
        self.limit = limit
        names = {w.lower() for w in wanted}
        names |= {ALIASES[alias].lower() for alias in ALIASES if alias.lower() in names}
        self.names = names
        self.hide = hide
        #: The lines kept whole.
        self.lines: list[bytes] = []
        self.kept_bytes = 0
        #: The lines must be parsed one by one: some were left out or cut.
        self.per_line = bool(names)
        #: Tags whose line arrived cut: (its first bytes, the length of the line without a comma).
        self.cut_lines: dict[str, tuple[bytes, int]] = {}
        self.comma_pending: str | None = None
        self.dropped = 0

    def __call__(self, lines: list[bytes], lengths: list[int]) -> None:
        total = sum(lengths)
        whole = sum(map(len, lines)) == total  # no line arrived cut
        if not self.per_line and whole and self.kept_bytes + total <= self.limit:
            self.kept_bytes += total
            self.lines += lines
            return
        self.per_line = True
        for line, length in zip(lines, lengths, strict=True):
            self._one(line, length)

    def _one(self, line: bytes, length: int) -> None:
        frame = line.strip() in _FRAME
        if self.comma_pending is not None and not frame:  # another tag: the cut one ended in ","
            kept, cut_length = self.cut_lines[self.comma_pending]
            self.cut_lines[self.comma_pending] = (kept, cut_length - 1)
        self.comma_pending = None
        if frame:
            self.lines.append(line)
            return
        name = _name(line)
        if name != "Error" and (name in HIDDEN_TAGS or (self.names and name.lower() not in self.names)):
            return
        if self.kept_bytes + len(line) > self.limit:
            self.dropped += 1
        elif length > len(line):
            self.kept_bytes += len(line)
            self.cut_lines[name] = (line, length)
            self.comma_pending = name
        else:
            self.kept_bytes += len(line)
            self.lines.append(line)

    def metadata(self) -> tuple[Metadata | None, str | None]:
        """(what was read, exiftool's Error); (None, None) when its answer held no JSON object."""
        found: dict[str, Any] = {}
        if self.per_line:
            if not any(line.strip() == b"[{" for line in self.lines):
                return None, None
            for line in self.lines:
                if line.strip() not in _FRAME:
                    found.update(_parse(b"{" + line.strip().removesuffix(b",") + b"}", dict))
        else:
            answer = _parse(b"\n".join(self.lines), list) if self.lines else []
            if not answer:
                return None, None
            found = answer[0] if isinstance(answer[0], dict) else {}
        found.update({name: _cut_value(line, length) for name, (line, length) in self.cut_lines.items()})
        error = found.pop("Error", None)
        tags = {name: value for name, value in found.items() if name not in HIDDEN_TAGS}
        text = json.dumps(tags)  # one look for server paths, instead of one per value
        if any(str(folder) in text or json.dumps(str(folder))[1:-1] in text for folder in self.hide):
            tags = {name: _scrubbed(value, self.hide) for name, value in tags.items()}
        reason = None if error is None else str(_scrubbed(error, self.hide))
        return Metadata(tags, list(self.cut_lines), self.dropped), reason


#: The lines of exiftool's -j answer around the tags.
_FRAME = frozenset({b"[{", b"}]", b"{", b"}", b"[", b"]", b""})
#: `  "Name": ` at the start of a line of exiftool's -j answer.
_LINE_HEAD = re.compile(rb'\s*"([A-Za-z0-9_-]{1,128})"\s*:\s*')


def _name(line: bytes) -> str:
    head = _LINE_HEAD.match(line)
    if head is None:
        raise MetadataUnreadable("exiftool's answer could not be read")
    return head.group(1).decode()


def _parse(text: bytes, kind: type) -> Any:
    try:
        parsed = json.loads(text.decode(errors="replace"))
    except ValueError:
        raise MetadataUnreadable("exiftool's answer could not be read") from None
    if not isinstance(parsed, kind):
        raise MetadataUnreadable("exiftool's answer could not be read")
    return parsed


def _cut_value(line: bytes, length: int) -> str:
    """The value of a line of `length` bytes that arrived cut: its start, marked as cut."""
    head = _LINE_HEAD.match(line)
    assert head is not None  # _name() matched it
    length -= head.end()
    start = line[head.end() :][:VALUE_LIMIT_BYTES]
    text = start.decode(errors="ignore")  # a character cut in two is dropped
    if text.startswith('"'):
        text = _string_start(text[1:])
    return text + TRUNCATED_MARK.format(size=length)


def _string_start(escaped: str) -> str:
    """The text of a JSON string cut anywhere, an escape (`\\u00e9`) cut in two dropped."""
    for drop in range(7):
        try:
            decoded = json.loads(f'"{escaped[: len(escaped) - drop]}"')
        except ValueError:
            continue
        return decoded if isinstance(decoded, str) else ""
    return ""


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


def metadata_output(
    metadata: Metadata, wanted: Collection[str] = (), limit: int | None = None
) -> dict[str, Any]:
    """task_output: the (selected) tags by ExifTool name, with aliases, the summary of those,
    and TRUNCATED_FIELD when values were cut or tags left out.

    All of it within `limit` bytes as the worker measures it (MAX_RESULT_BYTES by default), so
    the job completes with less rather than fails: tags are left out from the end, the ones the
    summary reads last. exiftool's lines were bounded already (Collector), but not as JSON is
    measured here: aliases and the summary repeat values, and a non-ASCII character exiftool
    writes in 3 or 4 bytes counts 6 or 12 escaped.
    """
    limit = result_limit() if limit is None else limit
    chosen = selected(with_aliases(metadata.tags), wanted)
    order = sorted(chosen, key=lambda name: name not in _SUMMARY_TAGS)  # stable: exiftool's order
    sizes = [entry_bytes(name, chosen[name]) for name in order]

    def output_with(count: int) -> dict[str, Any]:
        kept = set(order[:count])
        tags = {name: value for name, value in chosen.items() if name in kept}
        return _output(tags, metadata, metadata.dropped + len(order) - count, limit)

    return most_that_fit(sizes, output_with, limit)[1]


#: The tags the summary reads: left out last.
_SUMMARY_TAGS = frozenset(tag for tag, _ in SUMMARY.values())


def _output(tags: dict[str, Any], metadata: Metadata, left_out: int, limit: int) -> dict[str, Any]:
    output = {**tags, **summary(tags)}
    cut = [name for name in metadata.cut if name in tags]
    if cut or left_out:
        output[TRUNCATED_FIELD] = {
            "cut_values": cut,
            "value_limit_bytes": VALUE_LIMIT_BYTES,
            "tags_left_out": left_out,
            "output_limit_bytes": limit,
        }
    return output


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
