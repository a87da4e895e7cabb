"""Percentiles and small helpers for the benchmark's numbers."""

from __future__ import annotations

import ctypes
import math
import os
import platform
import resource
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def percentile(sorted_values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not sorted_values:
        return math.nan
    pos = (len(sorted_values) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def summary(values: Iterable[float | None]) -> dict[str, Any]:
    """n, p50, p90, p99, max, mean and min (None when there is no value)."""
    data = sorted(v for v in values if v is not None and not math.isnan(v))
    if not data:
        return {"n": 0, "p50": None, "p90": None, "p99": None, "max": None, "mean": None, "min": None}
    return {
        "n": len(data),
        "p50": round(percentile(data, 0.50), 3),
        "p90": round(percentile(data, 0.90), 3),
        "p99": round(percentile(data, 0.99), 3),
        "max": round(data[-1], 3),
        "mean": round(sum(data) / len(data), 3),
        "min": round(data[0], 3),
    }


def filesystem_of(path: Path) -> dict[str, str]:
    """Mount point, type and device holding `path` (from /proc/mounts)."""
    real = str(Path(path).resolve())
    best = ("", "unknown", "unknown")
    try:
        lines = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return {"path": real, "mount": "?", "type": "unknown", "device": "unknown"}
    for line in lines:
        device, mount, fstype, *_ = line.split()
        mount = mount.replace("\\040", " ")
        inside = real == mount or real.startswith(mount.rstrip("/") + "/")
        if inside and len(mount) >= len(best[0]):
            best = (mount, fstype, device)
    return {"path": real, "mount": best[0], "type": best[1], "device": best[2]}


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "kernel": platform.release(),
    }


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process (Linux /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(pid: int) -> float | None:
    """CPU time of a process and its descendants alive now (Celery's prefork pool)."""
    own = cpu_seconds(pid)
    if own is None:
        return None
    return own + sum(c for c in (cpu_seconds(k) for k in descendants(pid)) if c is not None)


def status_kb(pid: int, field: str = "VmRSS") -> int | None:
    """A memory figure of a process from /proc/<pid>/status, in KiB (VmRSS, VmHWM ...)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def start_peak() -> int:
    """Begin measuring a job's memory in this process: freed heap memory is handed back to the
    kernel (glibc's malloc_trim; else what an earlier job freed would hide this one's growth),
    VmHWM is reset to VmRSS (Linux clear_refs), and VmRSS is returned (KiB)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc: growth is then over memory the process already held
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass  # not Linux, or not allowed: the peak is then the process's since it started
    return status_kb(os.getpid()) or 0


def peak_kb() -> int:
    """VmHWM of this process (KiB): its peak since start_peak()."""
    return status_kb(os.getpid(), "VmHWM") or 0


def cpu_ns() -> int:
    """CPU of this process and of everything it started, in ns: its own, its finished (waited-for)
    children's, and its live descendants' (a tool kept running across jobs). A child that ends
    and is waited for moves from the last sum to the second with the same total."""
    own, done = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    seconds = own.ru_utime + own.ru_stime + done.ru_utime + done.ru_stime
    return round(seconds * 1e9) + sum(run_ns(pid) for pid in descendants(os.getpid()))


def run_ns(pid: int) -> int:
    """Time a live process's threads spent on a CPU, in ns (/proc/<pid>/task/<tid>/schedstat)."""
    total = 0
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            total += int((task / "schedstat").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        pass  # it ended meanwhile
    return total


def descendants(pid: int) -> list[int]:
    """Children, grandchildren ... of a process (Linux /proc/<pid>/task/<tid>/children)."""
    found: list[int] = []
    todo = [pid]
    while todo:
        parent = todo.pop()
        try:
            tasks = list(Path(f"/proc/{parent}/task").iterdir())
        except OSError:
            continue
        for task in tasks:
            try:
                kids = [int(k) for k in (task / "children").read_text().split()]
            except (OSError, ValueError):
                continue
            found.extend(kids)
            todo.extend(kids)
    return found
