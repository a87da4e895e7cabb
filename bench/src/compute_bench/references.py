"""The fastest ways found to do each plugin row's job on this machine (issue 19), run by the
plugins section on the row's own input right after the row's jobs, so a row reads "ours" beside
"the fastest reference" and their ratio.

Two kinds:

* a command-line tool, run as a fresh process per job, as a user would run it: its CPU (the
  process and its children, `wait4`) includes starting it; its peak RSS is the whole process's
  (at least the ~9 MB of the small interpreter that forks it);
* an in-process reference (compute_bench.reference_jobs): the plain library calls, in a process
  of their own, measured as the plugin process measures a job (after one warm-up run); its peak
  RSS is the growth over the RSS before the run.

A tool that is not installed is reported as missing, with the Debian package that has it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compute_bench.stats import summary

NS_PER_MS = 1_000_000
#: Seconds one reference run may take (a 12 MP WebP encode on a loaded machine: a few seconds).
RUN_TIMEOUT = 300.0


@dataclass(frozen=True)
class Command:
    """A tool run once per job. `argv` may hold {input}, {output}, {width} and {height}."""

    label: str
    argv: tuple[str, ...]
    #: The Debian package that installs it (said when it is missing).
    package: str
    #: The output file's extension.
    suffix: str


@dataclass(frozen=True)
class InProcess:
    """A compute_bench.reference_jobs job."""

    label: str
    job: str
    suffix: str


Reference = Command | InProcess

#: Every reference by name; a plugin row names the ones that do its job.
REFERENCES: dict[str, Reference] = {
    "vipsthumbnail": Command(
        "vipsthumbnail",
        ("vipsthumbnail", "{input}", "--size", "{width}x{height}", "-o", "{output}[Q=90]"),
        "libvips-tools",
        "jpg",
    ),
    "pillow_thumbnail": InProcess("Pillow draft + thumbnail(LANCZOS)", "thumbnail", "jpg"),
    "pillow_resize": InProcess("Pillow draft + LANCZOS", "resize", "jpg"),
    "pillow_hashes": InProcess("SHA-512 + imagehash on a 1/8 luma draft", "hashes", "json"),
    "vips_png": Command(
        "vips copy (zlib 6, no filter)", ("vips", "copy", "{input}", "{output}"), "libvips-tools", "png"
    ),
    "pillow_png": InProcess("Pillow, RGB, zlib level 1", "png", "png"),
    "vips_jpeg": Command("vips copy", ("vips", "copy", "{input}", "{output}[Q=85]"), "libvips-tools", "jpg"),
    "pillow_jpeg": InProcess("Pillow decode + encode", "jpeg", "jpg"),
    "cwebp": Command("cwebp", ("cwebp", "-quiet", "-q", "85", "{input}", "-o", "{output}"), "webp", "webp"),
    "vips_webp": Command("vips copy", ("vips", "copy", "{input}", "{output}[Q=85]"), "libvips-tools", "webp"),
    "pillow_webp": InProcess("Pillow decode + encode", "webp", "webp"),
    "exiftool": Command(
        "exiftool, one-shot",
        ("exiftool", "-j", "-n", "--struct", "{input}"),
        "libimage-exiftool-perl",
        "json",
    ),
    "exiftool_stay_open": InProcess("exiftool -stay_open", "exif_stay_open", "json"),
}


def run(name: str, source: Path, folder: Path, repeat: int, size: tuple[int, int]) -> dict[str, Any]:
    """One reference on `source`, `repeat` times: CPU and wall time per run (ms), peak memory,
    output size; or why it could not run."""
    ref = REFERENCES[name]
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{name}.{ref.suffix}"
    out: dict[str, Any] = {"name": name, "label": ref.label, "kind": type(ref).__name__}
    try:
        if isinstance(ref, Command):
            if shutil.which(ref.argv[0]) is None:
                return {**out, "missing": f"{ref.argv[0]} not installed (Debian package {ref.package})"}
            runs = [_command(ref, source, target, size) for _ in range(repeat)]
        else:
            runs = _in_process(ref, source, target, repeat, size)
    except (OSError, subprocess.SubprocessError, ValueError, KeyError) as exc:
        return {**out, "error": f"{type(exc).__name__}: {exc}"[:300]}
    out["cpu_ms"] = summary(r["cpu_ns"] / NS_PER_MS for r in runs)
    out["wall_ms"] = summary(r["wall_ns"] / NS_PER_MS for r in runs)
    if isinstance(ref, Command):
        out["peak_rss_mb"] = round(max(r["maxrss_kb"] for r in runs) / 1024, 1)
    else:
        out["peak_growth_mb"] = round(max(r["peak_growth_kb"] for r in runs) / 1024, 1)
    out["output_bytes"] = target.stat().st_size if target.exists() else None
    return out


#: Runs a tool and reports its rusage. A fork of the benchmark itself would count the benchmark's
#: RSS (hundreds of MB) as the tool's peak: the kernel's maxrss includes the time before exec.
#: This small interpreter (python -I -S: ~9 MB) forks it instead.
_SPAWN = """
import json, os, sys, time
out, argv = sys.argv[1], sys.argv[2:]
start = time.perf_counter_ns()
pid = os.fork()
if pid == 0:
    try:
        null = os.open(os.devnull, os.O_RDWR)
        os.dup2(os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644) if out else null, 1)
        os.dup2(null, 0)
        os.dup2(null, 2)
        os.execvp(argv[0], argv)
    finally:
        os._exit(127)
_, status, usage = os.wait4(pid, 0)
print(json.dumps({"exit": os.waitstatus_to_exitcode(status), "wall_ns": time.perf_counter_ns() - start,
                  "cpu_ns": round((usage.ru_utime + usage.ru_stime) * 1e9), "maxrss_kb": usage.ru_maxrss}))
"""


def _command(ref: Command, source: Path, target: Path, size: tuple[int, int]) -> dict[str, int]:
    fields = {"input": str(source), "output": str(target), "width": size[0], "height": size[1]}
    argv = [part.format(**fields) for part in ref.argv]
    target.unlink(missing_ok=True)
    # exiftool writes its answer to stdout: kept in a file, so the output size means the same.
    stdout = str(target) if ref.suffix == "json" else ""
    with subprocess.Popen(
        [sys.executable, "-I", "-S", "-c", _SPAWN, stdout, *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # a tool past its time goes with the interpreter that forked it
    ) as proc:
        try:
            answer, errors = proc.communicate(timeout=RUN_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            raise
    if proc.returncode != 0:
        raise ValueError(f"measuring {ref.argv[0]} failed: {errors.strip()[-200:]}")
    figures: dict[str, int] = json.loads(answer)
    if figures["exit"] != 0:
        raise ValueError(f"{ref.argv[0]} exited with {figures['exit']}")
    return figures


def _in_process(
    ref: InProcess, source: Path, target: Path, repeat: int, size: tuple[int, int]
) -> list[dict[str, int]]:
    argv = [
        sys.executable,
        "-m",
        "compute_bench.reference_jobs",
        ref.job,
        str(source),
        str(target),
        str(repeat),
    ]
    done = subprocess.run(
        [*argv, str(size[0]), str(size[1])], capture_output=True, text=True, timeout=RUN_TIMEOUT, check=False
    )
    if done.returncode != 0:
        raise ValueError(f"{ref.job} failed: {done.stderr.strip()[-200:]}")
    runs: list[dict[str, int]] = json.loads(done.stdout)["runs"]
    return runs


def fastest(results: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The reference with the least CPU at p50 among those that ran."""
    ran = [r for r in results if r.get("cpu_ms", {}).get("p50") is not None]
    return min(ran, key=lambda r: r["cpu_ms"]["p50"]) if ran else None
