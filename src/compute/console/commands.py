"""`compute`: submit, follow, download, list and cancel jobs from a terminal or a script.

Exit codes (a script can branch on them):

    0  done: the command succeeded (with --wait: the job completed)
    1  the job failed
    2  usage error (unknown option, missing argument)
    3  the server could not be reached
    4  the server refused the request (its reason is printed: not found, forbidden, 409 ...)
    5  the job was cancelled
    6  the server's answer could not be used (larger than --max-document-mb, not JSON, not the
       API's shape, a file name that would leave the download folder); the reason is printed
    7  a file could not be saved (a link or a file in the way, no space, no permission)
  130  interrupted (Ctrl-C); the job keeps running on the server
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.text import Text

from compute.console.answers import Job, WorkerList
from compute.console.api import MAX_DOCUMENT_MB, ApiError, BadAnswer, ComputeApi, ServerUnreachable
from compute.console.plain import escaped, plain
from compute.console.saving import CannotSave, Folder, UnsafeName, parts_of
from compute.console.views import capabilities_table, job_details, job_status, jobs_table, workers_view

EXIT_FAILED, EXIT_UNREACHABLE, EXIT_REFUSED, EXIT_CANCELLED = 1, 3, 4, 5
EXIT_BAD_ANSWER, EXIT_CANNOT_SAVE, EXIT_INTERRUPTED = 6, 7, 130

app = typer.Typer(
    help="Submit jobs to a Compute server, follow them, fetch their results.",
    no_args_is_help=True,
    add_completion=False,
    # A crash's locals would print the token and the server's raw answers.
    pretty_exceptions_show_locals=False,
)


@dataclass
class Context:
    server: str
    token: str | None
    as_json: bool
    max_document_mb: float
    #: Made per run (not at import), so they see this run's terminal and environment.
    out: Console
    err: Console

    def api(self) -> ComputeApi:
        return ComputeApi(self.server, self.token, max_document_bytes=int(self.max_document_mb * 1024 * 1024))

    def print_json(self, document: Any) -> None:
        """A document as JSON, every non-ASCII character escaped: nothing raw reaches the terminal.

        Written as it is, not through Rich: a renderable per line took 7.5 GB for an 8 MB
        document of empty objects."""
        print(json.dumps(document, indent=2, ensure_ascii=True), file=self.out.file)


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
    max_document_mb: Annotated[
        float,
        typer.Option(
            envvar="COMPUTE_MAX_DOCUMENT_MB", min=0.001, help="refuse a server's JSON answer larger than this"
        ),
    ] = MAX_DOCUMENT_MB,
) -> None:
    ctx.obj = Context(server, token, as_json, max_document_mb, Console(), Console(stderr=True))


@contextmanager
def _calling(ctx: typer.Context) -> Iterator[ComputeApi]:
    """The API client; a failure becomes its message on stderr and the matching exit code."""
    options: Context = ctx.obj
    try:
        with options.api() as api:
            yield api
    except ServerUnreachable as exc:
        _fail(options, "cannot reach the server", exc, EXIT_UNREACHABLE)
    except ApiError as exc:
        _fail(options, f"refused ({exc.status})", exc.detail, EXIT_REFUSED)
    except BadAnswer as exc:
        _fail(options, "unusable answer", exc, EXIT_BAD_ANSWER)
    except CannotSave as exc:
        _fail(options, "cannot save", exc, EXIT_CANNOT_SAVE)
    except KeyboardInterrupt:
        options.err.print("interrupted; the job keeps running on the server")
        raise typer.Exit(EXIT_INTERRUPTED) from None


def _fail(options: Context, what: str, reason: object, code: int) -> None:
    options.err.print(Text.assemble((what, "red"), ": ", plain(reason)))
    raise typer.Exit(code) from None


def _fields(pairs: list[str]) -> dict[str, str]:
    fields: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"{pair!r} is not key=value", param_hint="--field")
        fields[key] = value
    return fields


def _exit_code(job: Job) -> int:
    if job.cancelled:
        return EXIT_CANCELLED
    return 0 if job.status == "completed" else EXIT_FAILED


def _print_job(ctx: typer.Context, job: Job, document: Any) -> None:
    if ctx.obj.as_json:
        ctx.obj.print_json(document)
    else:
        ctx.obj.out.print(job_details(job))


def _follow(ctx: typer.Context, api: ComputeApi, job_id: str, quiet: bool) -> tuple[Job, Any]:
    """Follow the job to its end with a progress bar (on stderr, so stdout stays parseable)."""
    with Progress(
        TextColumn("{task.description}", markup=False),
        BarColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        console=ctx.obj.err,
        disable=quiet,
        transient=False,
    ) as progress:
        bar = progress.add_task(escaped(job_id[:8]), total=100)
        for job, document in api.follow(job_id):
            described = escaped(f"{job_id[:8]} {job.task_type} {job_status(job)}", limit=80)
            progress.update(bar, completed=min(max(job.progress, 0), 100), description=described)
            last = job, document
    return last


def _download(api: ComputeApi, job_id: str, target: Path, everything: bool) -> list[Path]:
    """Save the job's outputs (`everything`: its input too) below `target`; every name is checked
    before anything is written, so a hostile listing writes nothing."""
    names = [f.path for f in api.files(job_id).files if everything or f.path.startswith("output/")]
    for name in names:
        try:
            parts_of(name)
        except UnsafeName as exc:
            raise BadAnswer(
                f"the server lists a file named {escaped(name, 200)!r}, which cannot be saved under"
                f" {target} ({exc}); nothing was saved"
            ) from None
    saved = []
    with Folder(target) as folder:
        for name in names:
            with folder.writing(name) as file:
                api.download(job_id, name, file)
            saved.append(target / name)
    return saved


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
        created, document = api.submit(task, file, fields, idempotency_key)
        if not wait:
            ctx.obj.print_json(document) if ctx.obj.as_json else ctx.obj.out.print(plain(created.job_id))
            return
        job, document = _follow(ctx, api, created.job_id, quiet)
        _print_job(ctx, job, document)
        if download is not None and job.status == "completed":
            for path in _download(api, created.job_id, download, everything=False):
                ctx.obj.err.print(Text.assemble("saved ", plain(path)))
    raise typer.Exit(_exit_code(job))


@app.command()
def status(ctx: typer.Context, job_id: str) -> None:
    """Show a job: status, progress, result or error."""
    with _calling(ctx) as api:
        _print_job(ctx, *api.job(job_id))


@app.command()
def wait(
    ctx: typer.Context,
    job_id: str,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bar")] = False,
) -> None:
    """Follow a job with a progress bar until it ends; the exit code says how it ended."""
    with _calling(ctx) as api:
        job, document = _follow(ctx, api, job_id, quiet)
        _print_job(ctx, job, document)
    raise typer.Exit(_exit_code(job))


@app.command()
def download(
    ctx: typer.Context,
    job_id: str,
    to: Annotated[Path, typer.Option(help="folder to save into (job paths kept below it)")] = Path("."),
    everything: Annotated[bool, typer.Option("--all", help="also the uploaded input")] = False,
) -> None:
    """Save a job's output files (`output/...`) under a folder, and nowhere else."""
    with _calling(ctx) as api:
        saved = _download(api, job_id, to, everything)
    for path in saved:
        ctx.obj.out.print(plain(path))
    if not saved:
        ctx.obj.err.print(Text.assemble("job ", plain(job_id), " has no output files"))


@app.command()
def cancel(ctx: typer.Context, job_id: str) -> None:
    """Cancel a queued or running job."""
    with _calling(ctx) as api:
        _print_job(ctx, *api.cancel(job_id))


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
        page, document = api.jobs(status=status_filter, task_type=task, limit=limit, cursor=cursor)
    if ctx.obj.as_json:
        ctx.obj.print_json(document)
        return
    ctx.obj.out.print(jobs_table(page.jobs, api.server_time_ms))
    if page.next_cursor:
        ctx.obj.err.print(Text.assemble("more: compute jobs --cursor ", plain(page.next_cursor)))


@app.command()
def workers(ctx: typer.Context) -> None:
    """List the workers the server knows (verified ones only): what each runs and when it was
    last heard from. --json adds the rest (session, host, pid, version, exact times)."""
    with _calling(ctx) as api:
        answer, document = api.workers()
    if isinstance(answer, WorkerList):
        if ctx.obj.as_json:
            ctx.obj.print_json(document["workers"] if isinstance(document, dict) else document)
        elif not answer.workers:
            ctx.obj.err.print("no workers")
        else:
            ctx.obj.out.print(workers_view(answer.workers, api.server_time_ms))
    elif ctx.obj.as_json:  # the rows earlier versions printed for /capabilities
        ctx.obj.print_json(
            [{"task": task, "idle_workers": n} for task, n in sorted(answer.capabilities.items())]
        )
    else:
        ctx.obj.out.print(capabilities_table(answer))


def main() -> None:
    app()  # exits with the codes above; Click's own usage errors exit 2
