"""What this project's plugins share: a ComputeModule base and the job folder they work in.

A plugin's `run()` returns its `task_output`. A `ComputeError` it raises is the job's own
fault (a corrupt file, a missing model): the job fails at once with that message. Any other
exception is a crash, which the worker retries while attempts remain.

A plugin whose model takes a batch says so (`batchable()`) and does several jobs in one call
(`run_batch`): the worker then hands it the jobs of its task that wait together, and each job
still gets its own outcome, its own failure included.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from cl_ml_tools import BaseJobParams, ComputeModule, Job

from compute import observers
from compute.errors import ComputeError
from compute.plugins.environment import current

Progress = Callable[[int], None]
#: A job's outcome in a batch: its task_output, or what ended it (as `run` would have raised it).
Outcome = dict[str, Any] | BaseException


class TaskParams(BaseJobParams):  # type: ignore[misc]
    """Params of every project plugin: paths relative to the job folder (CL Server's shape)."""

    #: The input, e.g. `input/upload.jpg`.
    input_path: str = ""
    #: The main output, e.g. `output/clip_embedding.npy`.
    output_path: str = ""
    #: The name the client gave its upload, kept as data only.
    original_filename: str = ""


class BadJobPath(ComputeError):
    """A path in the job's params leads outside its folder."""


class JobFiles:
    """Paths inside one job's folder, as `params` and `task_output` name them."""

    def __init__(self, job_id: str) -> None:
        self.root = current().job_dir(job_id).resolve()

    def path(self, relative: str) -> Path:
        """`relative` (e.g. `input/upload.jpg`) inside the job folder, never outside it."""
        full = (self.root / relative).resolve()
        if self.root not in full.parents:
            raise BadJobPath(f"{relative!r} is not inside the job folder")
        return full

    def output(self, relative: str) -> Path:
        """Like `path`, with the parent folder created."""
        full = self.path(relative)
        full.parent.mkdir(parents=True, exist_ok=True)
        return full

    def relative(self, path: Path) -> str:
        """How `/jobs/{id}/files/` names `path`."""
        return path.resolve().relative_to(self.root).as_posix()


@dataclass(frozen=True)
class BatchJob:
    """One job of a batch, as `run` takes it."""

    files: JobFiles
    params: Any
    progress: Progress


def _no_progress(_percent: int) -> None:
    pass


def _result(outcome: Outcome) -> dict[str, Any] | BaseException:
    """An outcome as `execute` returns it (a ComputeError is the job's error), or the crash."""
    if isinstance(outcome, ComputeError):
        return {"status": "error", "error": str(outcome)}
    if isinstance(outcome, BaseException):
        return outcome
    return {"status": "ok", "task_output": outcome}


class PluginTask(ComputeModule):  # type: ignore[misc]
    """Base of this project's plugins: set `name` and `params`, write `run()`."""

    name: ClassVar[str]
    params: ClassVar[type[TaskParams]]

    @property
    def task_type(self) -> str:
        return self.name

    def get_schema(self) -> type[BaseJobParams]:
        return self.params

    def unavailable(self) -> str | None:
        """Why this task cannot run on this machine (missing tool or model), or None."""
        return None

    def batchable(self) -> bool:
        """Whether several jobs in one `run_batch` call go faster than one at a time (a model
        that takes a batch). The worker hands batches only to a plugin that says so."""
        return False

    async def execute(
        self, job: Job, params: BaseJobParams, progress_callback: Progress | None = None
    ) -> dict[str, Any]:
        assert isinstance(params, self.params)
        with observers.around(observers.plugin_runs, job.job_id):
            try:
                output = await self.run(JobFiles(job.job_id), params, progress_callback or _no_progress)
            except ComputeError as exc:
                return {"status": "error", "error": str(exc)}
        return {"status": "ok", "task_output": output}

    async def execute_batch(
        self, jobs: Sequence[tuple[Job, BaseJobParams, Progress]]
    ) -> list[dict[str, Any] | BaseException]:
        """`execute` for jobs handed over together: per job, in order, the result `execute`
        would return, or the exception that is that job's crash (its batch-mates are not
        touched by it)."""
        batch: list[BatchJob] = []
        for job, params, progress in jobs:
            assert isinstance(params, self.params)
            batch.append(BatchJob(JobFiles(job.job_id), params, progress))
        with observers.around(observers.plugin_runs, *(job.job_id for job, _, _ in jobs)):
            outcomes = await self.run_batch(batch)
        if len(outcomes) != len(batch):
            raise RuntimeError(f"{self.name}: {len(outcomes)} outcomes for {len(batch)} jobs")
        return [_result(outcome) for outcome in outcomes]

    async def run(self, files: JobFiles, params: Any, progress: Progress) -> dict[str, Any]:
        raise NotImplementedError

    async def run_batch(self, jobs: Sequence[BatchJob]) -> list[Outcome]:
        """Each job's task_output, or the exception that ended it, in order. This default runs
        them one after another; a `batchable` plugin overrides it."""
        outcomes: list[Outcome] = []
        for job in jobs:
            try:
                outcomes.append(await self.run(job.files, job.params, job.progress))
            except Exception as exc:
                outcomes.append(exc)
        return outcomes
