"""The `compute` command against a hostile server: a real HTTP server (tests/support/scripted_http)
answering with documents that try to write outside the download folder, drive the terminal, inject
Rich markup, or exhaust memory. The command must confine, show as text, and refuse."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import unicodedata
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from compute.console.api import BadAnswer, ComputeApi
from compute.console.commands import EXIT_BAD_ANSWER, EXIT_CANNOT_SAVE, EXIT_REFUSED, app
from tests.support.scripted_http import Answer, ScriptedServer

JOB = "4f1c2a9e-0000-4000-8000-000000000001"

#: What a hostile field carries: a clipboard write (OSC 52), a window title (OSC 0), a clear
#: screen, an 8-bit CSI, a bidi override, a live hyperlink in Rich markup, a stray closing tag.
CLIPBOARD = "\x1b]52;c;ZWNobyBwd25lZA==\x07"
TITLE = "\x1b]0;pwned\x1b\\"
CLEAR = "\x1b[2J\x1b[H"
C1_CSI = "\x9b31m"
BIDI = "\u202egnp.exe"
LINK = "[link=https://evil.example/]click here[/link]"
STRAY = "[/bold]"
HOSTILE = CLIPBOARD + TITLE + CLEAR + C1_CSI + BIDI + LINK + STRAY


def hostile_job(**fields: Any) -> dict[str, Any]:
    return {
        "job_id": JOB,
        "task_type": "image_conversion" + TITLE,
        "status": "completed",
        "cancelled": False,
        "progress": 100,
        "priority": 5,
        "params": {},
        "task_output": {"note": HOSTILE},
        "error_message": HOSTILE,
        "created_by": None,
        "worker_id": "worker-" + CLIPBOARD + LINK,
        "created_at": 1_700_000_000_000,
        "updated_at": 1_700_000_001_000,
        "started_at": 1_700_000_000_500,
        "completed_at": 1_700_000_001_000,
        **fields,
    }


HOSTILE_WORKER = {
    "worker_id": "worker-" + CLEAR + STRAY,
    "session": "s-" + CLIPBOARD,
    "state": "idle" + BIDI,
    "tasks": ["image_conversion" + LINK, "exif"],
    "running_jobs": [JOB + TITLE],
    "hostname": "host",
    "pid": 1,
    "version": "1",
    "started_at": 1,
    "last_heartbeat": 2,
    "last_announced": 2,
}


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    with ScriptedServer() as scripted:
        yield scripted


def compute(server: ScriptedServer, *args: str, terminal: bool = False, **env: str) -> Result:
    """`compute --server URL ARGS...`; `terminal`: Rich believes it writes to a colour terminal."""
    environment = {"COLUMNS": "100", "TTY_COMPATIBLE": "1" if terminal else "0", **env}
    return CliRunner().invoke(app, ["--server", server.url, *args], env=environment)


#: What Rich itself writes to a terminal: colours (SGR), cursor hide/show, erase line, cursor up.
_RICH_OWN = re.compile(r"\x1b\[[0-9;]*m|\x1b\[\?25[lh]|\x1b\[2K|\x1b\[[0-9]*A|\r")


def unsafe_characters(output: str) -> list[str]:
    """Control and format characters in what the command wrote, other than newlines and Rich's own
    sequences: each one is the server's, reaching the terminal raw."""
    rest = _RICH_OWN.sub("", output)
    return [c for c in rest if c != "\n" and unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp")]


# -- the terminal ------------------------------------------------------------------------------


def _serve_hostile(server: ScriptedServer) -> None:
    server.json(f"/jobs/{JOB}", hostile_job())
    server.json(f"/jobs/{JOB}/cancel", hostile_job())
    server.json("/jobs", {"jobs": [hostile_job()], "next_cursor": "c" + CLIPBOARD + LINK})
    server.json("/workers", {"workers": [HOSTILE_WORKER]})
    server.json("/jobs/image_conversion", {"job_id": "j" + CLEAR + LINK, "status": "queued"})
    server.json("/jobs/missing", {"detail": "no job " + HOSTILE}, status=404)


COMMANDS = [
    ("status", JOB),
    ("wait", JOB),
    ("cancel", JOB),
    ("jobs",),
    ("workers",),
    ("status", "missing"),
    ("--json", "status", JOB),
    ("--json", "jobs"),
    ("--json", "workers"),
]


@pytest.mark.parametrize("terminal", [False, True], ids=["piped", "terminal"])
@pytest.mark.parametrize("args", COMMANDS, ids=[" ".join(c) for c in COMMANDS])
def test_server_text_reaches_the_terminal_as_text(
    server: ScriptedServer, args: tuple[str, ...], terminal: bool
) -> None:
    _serve_hostile(server)
    result = compute(server, *args, terminal=terminal, COLUMNS="1000")  # nothing wraps
    assert result.exit_code in (0, EXIT_REFUSED), result.output
    assert unsafe_characters(result.stdout + result.stderr) == []
    if "--json" not in args:
        shown = result.stdout + result.stderr
        assert "\\x1b" in shown  # the escapes are shown, escaped, for a person to see
        assert "click here" not in shown or "[link=https://evil.example/]" in shown
        assert "\x1b]8;" not in shown  # no hyperlink made of the markup


def test_a_stray_closing_tag_is_printed_not_parsed(server: ScriptedServer) -> None:
    server.json(f"/jobs/{JOB}", hostile_job(status="completed" + STRAY, error_message=LINK))
    result = compute(server, "status", JOB)
    assert result.exit_code == 0, result.output
    assert "completed[/bold]" in result.stdout
    assert LINK in result.stdout


def test_json_output_is_the_document_with_everything_escaped(server: ScriptedServer) -> None:
    server.json(f"/jobs/{JOB}", hostile_job())
    result = compute(server, "--json", "status", JOB)
    assert result.exit_code == 0, result.output
    assert result.stdout.isascii()
    assert json.loads(result.stdout) == hostile_job()


def test_submit_prints_the_servers_job_id_as_text(server: ScriptedServer, tmp_path: Path) -> None:
    _serve_hostile(server)
    photo = tmp_path / "photo.png"
    photo.write_bytes(b"\x89PNG")
    result = compute(server, "submit", "image_conversion", str(photo), terminal=True)
    assert result.exit_code == 0, result.output
    assert unsafe_characters(result.stdout) == []
    assert result.stdout.strip() == "j\\x1b[2J\\x1b[H" + LINK


# -- answers the command cannot use ----------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b"<html>not json</html>",
        json.dumps({"job_id": JOB}).encode(),  # no task_type, no status
        json.dumps(hostile_job(progress="lots")).encode(),
        json.dumps(hostile_job(created_at=[1])).encode(),
        b"[" * 100_000 + b"]" * 100_000,  # nested past Python's recursion limit
        b'{"job_id": ' + b"9" * 5000 + b"}",  # past int()'s digit limit
    ],
    ids=["html", "fields missing", "wrong type", "list for a time", "deep nesting", "huge number"],
)
def test_a_malformed_answer_is_refused_with_a_reason(server: ScriptedServer, body: bytes) -> None:
    server.answers[f"/jobs/{JOB}"] = Answer(200, body, {"Content-Type": "application/json"})
    result = compute(server, "status", JOB)
    assert result.exit_code == EXIT_BAD_ANSWER, result.output
    assert "unusable answer" in result.stderr and f"/jobs/{JOB}" in result.stderr


def test_a_compressed_answer_is_refused(server: ScriptedServer) -> None:
    import gzip

    bomb = gzip.compress(b'{"job_id": "' + b"a" * 50_000_000 + b'"}')
    server.answers[f"/jobs/{JOB}"] = Answer(200, bomb, {"Content-Encoding": "gzip"})
    result = compute(server, "status", JOB)
    assert result.exit_code == EXIT_BAD_ANSWER, result.output
    assert "compressed" in result.stderr
    assert ("GET", f"/jobs/{JOB}") in server.requests


def test_a_timestamp_no_calendar_holds_is_shown_as_it_came(server: ScriptedServer) -> None:
    server.json(f"/jobs/{JOB}", hostile_job(created_at=10**30, completed_at=-(10**30)))
    result = compute(server, "status", JOB)
    assert result.exit_code == 0, result.output
    assert str(10**30) in result.stdout


# -- memory ------------------------------------------------------------------------------------


def _huge_job(megabytes: int) -> list[bytes]:
    """A valid job document of `megabytes` MB: its task_output holds one long string."""
    plain_job = hostile_job(task_type="exif", error_message=None, worker_id=None, task_output={"x": ""})
    head, tail = json.dumps(plain_job).split('"x": ""')
    return [(head + '"x": "').encode(), *[b"a" * (1024 * 1024)] * megabytes, ('"' + tail).encode()]


#: The command as a process of its own that reports its peak memory (kB) as it exits.
_MEASURED = """
import atexit, re, sys
def peak():  # VmHWM: this process's own peak (ru_maxrss would count the forked test runner's)
    status = open("/proc/self/status").read()
    print("peak_kb=" + re.search(r"VmHWM:\\s*(\\d+)", status).group(1), file=sys.stderr)
atexit.register(peak)
from compute.console.commands import main
sys.argv[0] = "compute"
main()
"""


@pytest.mark.parametrize("declared", [False, True], ids=["length unsaid", "length declared"])
def test_a_100_mb_document_is_refused_without_reading_it(server: ScriptedServer, declared: bool) -> None:
    """A real process, so its peak memory is its own (the command used to take 450 MB here)."""
    document = _huge_job(100)
    headers = {"Content-Length": str(sum(map(len, document)))} if declared else {}
    server.answers[f"/jobs/{JOB}"] = Answer(200, lambda: iter(document), headers)
    done = subprocess.run(
        [sys.executable, "-c", _MEASURED, "--server", server.url, "status", JOB],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == EXIT_BAD_ANSWER, done.stderr
    assert "larger than 8 MB" in done.stderr and "--max-document-mb" in done.stderr
    assert server.sent.get(f"/jobs/{JOB}", 0) < 40 * 1024 * 1024  # it stopped reading
    peak_kb = int(done.stderr.rsplit("peak_kb=", 1)[1])
    assert peak_kb < 100 * 1024, f"peak memory {peak_kb / 1024:.0f} MB"


def test_the_document_limit_is_a_setting(server: ScriptedServer) -> None:
    server.answers[f"/jobs/{JOB}"] = Answer(200, lambda: _huge_job(2))
    assert compute(server, "status", JOB).exit_code == 0
    small = compute(server, "status", JOB, COMPUTE_MAX_DOCUMENT_MB="1", COLUMNS="1000")
    assert small.exit_code == EXIT_BAD_ANSWER and "larger than 1 MB" in small.stderr


# -- downloads ---------------------------------------------------------------------------------


def _serve_files(server: ScriptedServer, *names: str) -> None:
    server.json(f"/jobs/{JOB}/files", {"job_id": JOB, "files": [{"path": n, "size": 5} for n in names]})
    server.otherwise = Answer(200, b"pwned")  # every file, however its name resolves in a URL


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A folder beside the download folder, that nothing may be written into."""
    folder = tmp_path / "outside"
    folder.mkdir()
    return folder


def _everything_in(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.mark.parametrize(
    ("name", "everything"),
    [
        ("output/../../outside/x", False),
        ("output/../../../outside/x", False),
        ("ABSOLUTE/abs", True),
        ("output/\x1b]52;c;cHduZWQ=\x07.txt", False),
        ("output/./x", False),
        ("output//x", False),
        ("output/\u202etxt.exe", False),
    ],
    ids=["dot-dot", "dot-dot-dot-dot", "absolute", "control", "dot", "empty part", "bidi"],
)
def test_download_refuses_names_that_would_leave_the_folder(
    server: ScriptedServer, tmp_path: Path, outside: Path, name: str, everything: bool
) -> None:
    name = name.replace("ABSOLUTE", str(outside))
    _serve_files(server, "output/good.txt", name)
    target = tmp_path / "results" / "job"
    result = compute(server, "download", JOB, "--to", str(target), *(["--all"] if everything else []))
    assert result.exit_code == EXIT_BAD_ANSWER, result.output
    assert "nothing was saved" in result.stderr
    assert unsafe_characters(result.stderr) == []
    assert _everything_in(outside) == []
    assert _everything_in(tmp_path / "results") in ([], ["job"])
    assert [p for _m, p in server.requests if "/files/" in p] == []  # no file was even fetched


def test_download_does_not_follow_a_link_in_the_folder(
    server: ScriptedServer, tmp_path: Path, outside: Path
) -> None:
    """Someone with write access to the folder (a shared one) placed a link where a folder goes."""
    _serve_files(server, "output/result.txt")
    target = tmp_path / "shared"
    target.mkdir()
    (target / "output").symlink_to(outside)
    result = compute(server, "download", JOB, "--to", str(target))
    assert result.exit_code == EXIT_CANNOT_SAVE, result.output
    assert "output is a symbolic link" in result.stderr
    assert _everything_in(outside) == []


def test_download_writes_through_no_link_at_the_file(
    server: ScriptedServer, tmp_path: Path, outside: Path
) -> None:
    """Links placed at the file's name and at the name the old command wrote it under first."""
    _serve_files(server, "output/result.txt")
    (outside / "victim").write_bytes(b"mine")
    folder = tmp_path / "shared" / "output"
    folder.mkdir(parents=True)
    (folder / "result.txt").symlink_to(outside / "victim")
    (folder / "result.txt.part").symlink_to(outside / "victim")
    result = compute(server, "download", JOB, "--to", str(tmp_path / "shared"))
    assert result.exit_code == 0, result.output
    assert (outside / "victim").read_bytes() == b"mine"
    saved = folder / "result.txt"
    assert not saved.is_symlink() and saved.read_bytes() == b"pwned"


def test_a_folder_swapped_for_a_link_mid_download_is_not_followed(
    server: ScriptedServer, tmp_path: Path, outside: Path
) -> None:
    """The race made deterministic: `output` becomes a link to another folder between the first
    file and the second, as the second is requested."""
    target = tmp_path / "shared"
    _serve_files(server, "output/a.txt", "output/b.txt")

    def swap() -> None:
        (target / "output").rename(target / "moved")
        (target / "output").symlink_to(outside)

    server.answers[f"/jobs/{JOB}/files/output/b.txt"] = Answer(200, b"second", on_request=swap)
    result = compute(server, "download", JOB, "--to", str(target))
    assert _everything_in(outside) == []
    assert result.exit_code == 0, result.output
    assert (target / "moved" / "b.txt").read_bytes() == b"second"  # where the folder it opened went


def test_a_lone_surrogate_is_shown_escaped(server: ScriptedServer) -> None:
    """Valid JSON (`\\ud800` as ASCII) that no terminal encoding can print raw."""
    body = json.dumps(hostile_job(status="completed\ud800", error_message=None, task_output=None))
    server.answers[f"/jobs/{JOB}"] = Answer(200, body.encode("ascii"))
    result = compute(server, "status", JOB)
    assert result.exit_code == 0, result.output
    assert "completed\\ud800" in result.stdout


def test_a_redirect_is_not_followed(server: ScriptedServer) -> None:
    """The token would go with it, to wherever the server points."""
    server.answers[f"/jobs/{JOB}"] = Answer(302, b"", {"Location": "http://127.0.0.1:9/steal"})
    result = compute(server, "--token", "secret", "status", JOB)
    assert result.exit_code == EXIT_BAD_ANSWER, result.output
    assert "redirects to 'http://127.0.0.1:9/steal'" in result.stderr


def test_an_answer_dripped_slowly_is_refused_at_the_timeout(server: ScriptedServer) -> None:
    """A byte every 20 ms keeps each read within its timeout; the whole answer has one too."""

    def drip() -> Iterator[bytes]:
        while True:
            time.sleep(0.02)  # the server's pace, not a wait for the client
            yield b" "

    server.answers[f"/jobs/{JOB}"] = Answer(200, drip)
    with ComputeApi(server.url, timeout=0.5) as api, pytest.raises(BadAnswer, match=r"more than 0\.5 s"):
        api.job(JOB)
