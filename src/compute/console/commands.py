"""`compute`: submit, follow, download, list and cancel jobs from a terminal or a script.

Exit codes (a script can branch on them):

    0  done: the command succeeded (with --wait: the job completed)
    1  the job failed
    2  usage error (unknown option, missing argument)
    3  the server could not be reached
    4  the server refused the request (its reason is printed: not found, forbidden, 409 ...)
    5  the job was cancelled
  130  interrupted (Ctrl-C); the job keeps running on the server
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from compute.console.api import ApiError, ComputeApi, ServerUnreachable

EXIT_FAILED, EXIT_UNREACHABLE, EXIT_REFUSED, EXIT_CANCELLED, EXIT_INTERRUPTED = 1, 3, 4, 5, 130

app = typer.Typer(
    help="Submit jobs to a Compute server, follow them, fetch their results.",
    no_args_is_help=True,
    add_completion=False,
)
out = Console()
err = Console(stderr=True)


@dataclass
class Context:
    server: str
    token: str | None
    as_json: bool

    def api(self) -> ComputeApi:
        return ComputeApi(self.server, self.token)


@app.callback()
def main_options(
    ctx: typer.Context,
    server: Annotated[
        str, typer.Option(envvar="COMPUTE_URL", help="the server's base URL")
    ] = "http://localhost:8002",
    token: Annotated[
        str | None, typer.Option(envvar="COMPUTE_TOKEN", help="a JWT, when the server wants one")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of tables")] = False,
) -> None:
    ctx.obj = Context(server, token, as_json)


@contextmanager
def _calling(ctx: typer.Context) -> Iterator[ComputeApi]:
    """The API client; a failure becomes its message on stderr and the matching exit code."""
    options: Context = ctx.obj
    try:
        with options.api() as api:
            yield api
    except ServerUnreachable as exc:
        err.print(f"[red]cannot reach the server[/red] {exc}")
        raise typer.Exit(EXIT_UNREACHABLE) from None
    except ApiError as exc:
        err.print(f"[red]refused ({exc.status})[/red]: {exc.detail}")
        raise typer.Exit(EXIT_REFUSED) from None
    except KeyboardInterrupt:
        err.print("interrupted; the job keeps running on the server")
        raise typer.Exit(EXIT_INTERRUPTED) from None


def _fields(pairs: list[str]) -> dict[str, str]:
    fields: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"{pair!r} is not key=value", param_hint="--field")
        fields[key] = value
    return fields


def _exit_code(job: dict[str, Any]) -> int:
    if job.get("cancelled"):
        return EXIT_CANCELLED
    return 0 if job["status"] == "completed" else EXIT_FAILED


def _when(ms: int | None) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S") if ms else "-"


def _print_job(ctx: typer.Context, job: dict[str, Any]) -> None:
    if ctx.obj.as_json:
        out.print_json(json.dumps(job))
        return
    status = "cancelled" if job.get("cancelled") else job["status"]
    table = Table.grid(padding=(0, 2))
    for name, value in (
        ("job", job["job_id"]),
        ("task", job["task_type"]),
        ("status", status),
        ("progress", f"{job['progress']}%"),
        ("priority", job["priority"]),
        ("worker", job.get("worker_id") or "-"),
        ("created", _when(job["created_at"])),
        ("finished", _when(job.get("completed_at"))),
    ):
        table.add_row(f"[bold]{name}[/bold]", str(value))
    if job.get("error_message"):
        table.add_row("[bold]error[/bold]", f"[red]{job['error_message']}[/red]")
    if job.get("task_output"):
        table.add_row("[bold]output[/bold]", json.dumps(job["task_output"])[:2000])
    out.print(table)


def _follow(api: ComputeApi, job_id: str, quiet: bool) -> dict[str, Any]:
    """Follow the job to its end with a progress bar (on stderr, so stdout stays parseable)."""
    job: dict[str, Any] = {}
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        console=err,
        disable=quiet,
        transient=False,
    ) as progress:
        bar = progress.add_task(job_id, total=100)
        for job in api.follow(job_id):
            progress.update(
                bar, completed=job["progress"], description=f"{job_id[:8]} {job['task_type']} {job['status']}"
            )
    return job


def _download(api: ComputeApi, job_id: str, target: Path, everything: bool) -> list[Path]:
    wanted = [f for f in api.files(job_id) if everything or f["path"].startswith("output/")]
    return [api.download(job_id, f["path"], target / f["path"]) for f in wanted]


@app.command()
def submit(
    ctx: typer.Context,
    task: Annotated[str, typer.Argument(help="task type, e.g. image_conversion")],
    file: Annotated[
        Path, typer.Argument(exists=True, dir_okay=False, readable=True, help="the file to process")
    ],
    field: Annotated[
        list[str] | None, typer.Option("--field", "-f", help="a form field key=value (repeat)")
    ] = None,
    priority: Annotated[int | None, typer.Option(help="0-10, higher runs first")] = None,
    wait: Annotated[bool, typer.Option("--wait", "-w", help="follow the job until it ends")] = False,
    download: Annotated[Path | None, typer.Option(help="with --wait: save its outputs here")] = None,
    idempotency_key: Annotated[
        str | None, typer.Option(help="send again with the same key and get the same job, not a second one")
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bar")] = False,
) -> None:
    """Submit FILE to TASK and print the job id (with --wait: follow it, exit by its outcome)."""
    fields = _fields(field or [])
    if priority is not None:
        fields["priority"] = str(priority)
    with _calling(ctx) as api:
        created = api.submit(task, file, fields, idempotency_key)
        job_id = created["job_id"]
        if not wait:
            out.print_json(json.dumps(created)) if ctx.obj.as_json else out.print(job_id)
            return
        job = _follow(api, job_id, quiet)
        _print_job(ctx, job)
        if download is not None and job["status"] == "completed":
            for path in _download(api, job_id, download, everything=False):
                err.print(f"saved {path}")
    raise typer.Exit(_exit_code(job))


@app.command()
def status(ctx: typer.Context, job_id: str) -> None:
    """Show a job: status, progress, result or error."""
    with _calling(ctx) as api:
        _print_job(ctx, api.job(job_id))


@app.command()
def wait(
    ctx: typer.Context,
    job_id: str,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bar")] = False,
) -> None:
    """Follow a job with a progress bar until it ends; the exit code says how it ended."""
    with _calling(ctx) as api:
        job = _follow(api, job_id, quiet)
        _print_job(ctx, job)
    raise typer.Exit(_exit_code(job))


@app.command()
def download(
    ctx: typer.Context,
    job_id: str,
    to: Annotated[Path, typer.Option(help="folder to save into (job paths kept below it)")] = Path("."),
    everything: Annotated[bool, typer.Option("--all", help="also the uploaded input")] = False,
) -> None:
    """Save a job's output files (`output/...`) under a folder."""
    with _calling(ctx) as api:
        saved = _download(api, job_id, to, everything)
    for path in saved:
        out.print(str(path))
    if not saved:
        err.print(f"job {job_id} has no output files")


@app.command()
def cancel(ctx: typer.Context, job_id: str) -> None:
    """Cancel a queued or running job."""
    with _calling(ctx) as api:
        _print_job(ctx, api.cancel(job_id))


@app.command("jobs")
def list_jobs(
    ctx: typer.Context,
    status_filter: Annotated[str | None, typer.Option("--status", help="queued, processing, ...")] = None,
    task: Annotated[str | None, typer.Option(help="only this task type")] = None,
    limit: Annotated[int, typer.Option(min=1, max=200, help="how many (the server's most: 200)")] = 20,
    cursor: Annotated[str | None, typer.Option(help="the next page, as printed after a page")] = None,
) -> None:
    """List jobs you may see, newest first."""
    with _calling(ctx) as api:
        page = api.jobs(status=status_filter, task_type=task, limit=limit, cursor=cursor)
    if ctx.obj.as_json:
        out.print_json(json.dumps(page))
        return
    table = Table("job", "task", "status", "progress", "priority", "worker", "created")
    for job in page["jobs"]:
        table.add_row(
            job["job_id"],
            job["task_type"],
            "cancelled" if job.get("cancelled") else job["status"],
            f"{job['progress']}%",
            str(job["priority"]),
            job.get("worker_id") or "-",
            _when(job["created_at"]),
        )
    out.print(table)
    if page.get("next_cursor"):
        err.print(f"more: compute jobs --cursor {page['next_cursor']}")


@app.command()
def workers(ctx: typer.Context) -> None:
    """List the workers the server knows (verified ones only)."""
    with _calling(ctx) as api:
        rows = api.workers()
    if ctx.obj.as_json:
        out.print_json(json.dumps(rows))
        return
    if not rows:
        err.print("no workers")
        return
    columns = list(rows[0])
    table = Table(*columns)
    for row in rows:
        table.add_row(*(_cell(row.get(column)) for column in columns))
    out.print(table)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    return str(value)


def main() -> None:
    app()  # exits with the codes above; Click's own usage errors exit 2
