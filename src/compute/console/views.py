"""What a person sees of jobs and workers: tables sized for a terminal, every server value plain."""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import UTC, datetime

from rich import box
from rich.console import Group, RenderableType
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

from compute.console.answers import Capabilities, Job, Worker
from compute.console.plain import plain


def job_status(job: Job) -> str:
    return "cancelled" if job.cancelled else job.status


def when(ms: int | None, form: str = "%Y-%m-%d %H:%M:%S") -> Text:
    """A timestamp (ms since the epoch) in UTC; what no date can be, as it came."""
    if ms is None:
        return Text("-")
    try:
        return Text(datetime.fromtimestamp(ms / 1000, UTC).strftime(form))
    except (ValueError, OverflowError, OSError):
        return plain(ms)


def ago(ms: int | None, now_ms: int) -> Text:
    """How long before `now_ms` (on the same clock) `ms` was: `12 s ago`, `5 min ago`."""
    if ms is None:
        return Text("-")
    seconds = max(0, (now_ms - ms) // 1000)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return Text(f"{seconds // size} {unit} ago")
    return Text(f"{seconds} s ago")


def listing(values: list[str], separator: str, most: int = 50) -> Text:
    """Server strings joined for one cell (`-` for none), the first `most` of them."""
    if not values:
        return Text("-")
    shown = [plain(value, limit=200) for value in values[:most]]
    if len(values) > most:
        shown.append(Text(f"… {len(values) - most} more"))
    return Text(separator).join(shown)


def job_details(job: Job) -> RenderableType:
    """One job, a field per line (`status`, `wait`, `cancel`)."""
    table = Table.grid(padding=(0, 2))
    rows: list[tuple[str, Text]] = [
        ("job", plain(job.job_id)),
        ("task", plain(job.task_type)),
        ("status", plain(job_status(job))),
        ("progress", plain(f"{job.progress}%")),
        ("priority", plain("-" if job.priority is None else job.priority)),
        ("worker", plain(job.worker_id or "-")),
        ("created", when(job.created_at)),
        ("finished", when(job.completed_at)),
    ]
    if job.error_message:
        rows.append(("error", plain(job.error_message, style="red")))
    if job.task_output:
        rows.append(("output", plain(json.dumps(job.task_output))))
    for name, value in rows:
        table.add_row(Text(name, style="bold"), value)
    return table


def _listing_table(*columns: str) -> Table:
    """A table for an 80-column terminal: no outer frame, one space between columns."""
    return Table(*columns, box=box.SIMPLE_HEAD, show_edge=False, padding=0, pad_edge=False)


def jobs_table(jobs: Iterable[Job], now_ms: int) -> RenderableType:
    """Jobs as a person scans them: the whole id (to copy into `compute status`), task, status
    with progress, when (how long ago today, else the date). Priority, worker and exact times
    are in `compute status` and `--json`."""
    table = _listing_table("job", "task", "status", "created")
    table.columns[0].no_wrap = True
    table.columns[1].overflow = "fold"
    table.columns[3].no_wrap = True
    for job in jobs:
        status = job_status(job)
        if status == "processing":
            status = f"{status} {job.progress}%"
        recent = job.created_at is not None and now_ms - job.created_at < 86_400_000
        created = ago(job.created_at, now_ms) if recent else when(job.created_at, "%Y-%m-%d")
        table.add_row(plain(job.job_id), plain(job.task_type), plain(status), created)
    return table


def workers_view(workers: Iterable[Worker], now_ms: int) -> RenderableType:
    """Each worker as a short block: who, idle or busy, when last heard from, then the tasks it
    takes and the jobs it runs, in full (a job id to copy, a task list that wraps). A table cannot
    hold a 36-character job id and a dozen task names in 80 columns; session, pid, host, version
    and exact times are under `--json`."""
    blocks: list[RenderableType] = []
    for worker in workers:
        state = worker.state or "-"
        heading = Text.assemble(
            plain(worker.worker_id, style="bold"),
            "  ",
            plain(state, style="green" if state == "idle" else "yellow"),
            "  last seen ",
            ago(worker.last_heartbeat, now_ms),
        )
        details = Table.grid(padding=(0, 2))
        details.add_column(no_wrap=True)
        details.add_column(overflow="fold")
        details.add_row("tasks", listing(worker.tasks, ", "))
        details.add_row("running", listing(worker.running_jobs, "\n"))
        blocks.append(Group(heading, Padding(details, (0, 0, 1, 2))))
    return Group(*blocks)


def capabilities_table(capabilities: Capabilities) -> RenderableType:
    """A server without GET /workers (CL Server's) tells only how many idle workers take each task."""
    table = _listing_table("task", "idle workers")
    table.caption = f"{capabilities.num_workers} workers"
    for task, idle in sorted(capabilities.capabilities.items()):
        table.add_row(plain(task), plain(idle))
    return table
