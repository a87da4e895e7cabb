"""Pausing and resuming a task type: the database holds the state, the bus only shows it.

A pause is a row in the database (db/paused.py) that the claim statement reads, so it holds for
every worker from its commit on and a message on the bus cannot pause or resume anything. The
server mirrors the state on the retained `<root>/tasks/<task>/paused` for dashboards (repeated on
every connect, which also repairs a forged flag), and a resume sends a hint so idle workers claim
the jobs that waited. Jobs submitted meanwhile are queued as usual.
"""

from __future__ import annotations

from dataclasses import dataclass

from compute.bus.interface import Bus
from compute.db.paused import PausedTasks
from compute.jobs import now_ms
from compute.server.flow.dispatch import Dispatcher
from compute.topics import TaskPaused, Topics, encode


@dataclass(frozen=True)
class PauseChange:
    task_type: str
    paused: bool
    #: False when the task already was in that state.
    changed: bool


class TaskPauses:
    def __init__(self, store: PausedTasks, bus: Bus, topics: Topics, dispatcher: Dispatcher) -> None:
        self.store = store
        self.bus = bus
        self.topics = topics
        self.dispatcher = dispatcher

    def pause(self, task_type: str, by: str | None) -> PauseChange:
        """Blocking (a database write), then the flag."""
        changed = self.store.pause(task_type, by)
        self.publish(task_type, True)
        return PauseChange(task_type, True, changed)

    def resume(self, task_type: str) -> PauseChange:
        """Blocking (a database write), then the flag and a hint for the jobs that waited."""
        changed = self.store.resume(task_type)
        self.publish(task_type, False)
        if changed:
            self.dispatcher.hint(task_type)
        return PauseChange(task_type, False, changed)

    def paused(self) -> dict[str, int]:
        """Paused task types and when each was paused (ms). Blocking."""
        return self.store.paused()

    def publish(self, task_type: str, paused: bool) -> None:
        flag = TaskPaused(task_type=task_type, paused=paused, timestamp=now_ms())
        self.bus.publish(self.topics.task_paused(task_type), encode(flag), qos=1, retain=True)

    def publish_all(self) -> None:
        """The flags of every paused task again (on connect). Blocking (one read)."""
        for task_type in self.store.paused():
            self.publish(task_type, True)
