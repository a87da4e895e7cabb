"""The documents the `compute` command reads, as the fields it uses.

A server's answer is checked against these before anything reads it, so a missing field or a
wrong type is a clear "not what the API describes" instead of a crash halfway through a table.
Only what the command uses is required; other fields (and other servers' extra ones) are left to
`--json`, which prints the document as it came.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator


class Answer(BaseModel):
    model_config = ConfigDict(frozen=True)


class Created(Answer):
    job_id: str


class Job(Answer):
    job_id: str
    task_type: str
    #: CL Server's statuses: a cancelled job reads `failed` (see `cancelled`).
    status: str
    cancelled: bool = False
    progress: int = 0
    priority: int | None = None
    worker_id: str | None = None
    #: Milliseconds since the epoch.
    created_at: int | None = None
    updated_at: int | None = None
    completed_at: int | None = None
    error_message: str | None = None
    task_output: Any = None


class JobPage(Answer):
    jobs: list[Job]
    next_cursor: str | None = None


class JobFile(Answer):
    #: Relative to the job folder; checked again before anything is saved under that name.
    path: str


class FileList(Answer):
    files: list[JobFile]


class Worker(Answer):
    worker_id: str
    #: "idle" or "busy".
    state: str | None = None
    tasks: list[str] = []
    running_jobs: list[str] = []
    #: Milliseconds since the epoch, by the server's clock.
    last_heartbeat: int | None = None


class WorkerList(Answer):
    workers: list[Worker]

    @model_validator(mode="before")
    @classmethod
    def _bare_list(cls, document: Any) -> Any:
        """Earlier servers answered with the bare list."""
        return {"workers": document} if isinstance(document, list) else document


class Capabilities(Answer):
    """GET /capabilities, what CL Server's compute service offers instead of GET /workers."""

    num_workers: int = 0
    #: Idle workers per task type.
    capabilities: dict[str, int]
