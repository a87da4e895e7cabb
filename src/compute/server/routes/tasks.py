"""Admin routes for task types: pause, resume, and which are paused."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request
from pydantic import BaseModel

from compute.server.flow.pause import TaskPauses
from compute.server.http.auth import AdminUser
from compute.server.http.deps import DbDep, services_of
from compute.topics import check_segment

router = APIRouter(prefix="/admin/tasks", tags=["admin"])


class TaskPauseState(BaseModel):
    task_type: str
    paused: bool
    #: When it was paused (ms since the epoch), None when it is not.
    paused_at: int | None = None
    #: False when the call found the task already in that state.
    changed: bool = False


class PausedTaskList(BaseModel):
    paused: list[TaskPauseState]


def _pauses(request: Request) -> TaskPauses:
    return services_of(request).pauses


def _task(task_type: str) -> str:
    try:
        return check_segment(task_type, "task type")
    except ValueError as exc:
        raise HTTPException(400, str(exc)[:300]) from None


@router.get("", response_model=PausedTaskList)
async def paused_tasks(request: Request, db: DbDep, _admin: AdminUser) -> PausedTaskList:
    """The paused task types: their queued jobs wait until they are resumed."""
    paused = await db.call(_pauses(request).paused)
    return PausedTaskList(
        paused=[TaskPauseState(task_type=t, paused=True, paused_at=at) for t, at in sorted(paused.items())]
    )


@router.get("/{task_type}", response_model=TaskPauseState)
async def task_state(task_type: str, request: Request, db: DbDep, _admin: AdminUser) -> TaskPauseState:
    """Whether this task type is paused."""
    task = _task(task_type)
    at = (await db.call(_pauses(request).paused)).get(task)
    return TaskPauseState(task_type=task, paused=at is not None, paused_at=at)


@router.post("/{task_type}/pause", response_model=TaskPauseState)
async def pause(task_type: str, request: Request, db: DbDep, admin: AdminUser) -> TaskPauseState:
    """Stop workers from claiming jobs of this task type (running ones finish); new jobs still queue."""
    task = _task(task_type)
    pauses = _pauses(request)
    change = await db.call(pauses.pause, task, admin.id if admin is not None else None)
    at = (await db.call(pauses.paused)).get(task)
    return TaskPauseState(task_type=task, paused=True, paused_at=at, changed=change.changed)


@router.post("/{task_type}/resume", response_model=TaskPauseState)
async def resume(task_type: str, request: Request, db: DbDep, _admin: AdminUser) -> TaskPauseState:
    """Let workers claim this task type's jobs again (they are woken at once)."""
    task = _task(task_type)
    change = await db.call(_pauses(request).resume, task)
    return TaskPauseState(task_type=task, paused=False, changed=change.changed)
