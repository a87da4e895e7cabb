"""Where a worker's jobs run: lanes of slots, each slot a runner with a plugin host of its own.

Without WORKER_CONCURRENCY a worker has one lane with one slot for all its task types: one job at
a time, claimed one at a time, as it always did. A task given a concurrency N (`--concurrency
task=N`, opt-in, for light tasks) gets a lane of its own with N slots: the worker claims up to as
many of its jobs as it has free slots in one statement, and each runs at once in its own slot (a
plugin process each, so a cancel or timeout kills only that job's process, and CPU-bound plugins
use more than one core). A long job holds only its own slot: the lane's other slots keep taking
short jobs, and the other lanes are not affected at all.

A task given a batch N (`--batch task=N`, WORKER_BATCH, opt-in, for a task whose model takes a
batch: the embedding tasks, issue 19) gets a lane of its own too, whose slots each take up to N
jobs at once: the claim asks for N per free slot, and what it finds is spread evenly over the
free slots, each slot's share going to its plugin process as one batch (`batch_run.run_many`).
What is queued is taken at once: a lone job never waits for batch-mates.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field

from cl_ml_tools import ComputeModule

from compute.config import Settings
from compute.db.repository import JobRecord
from compute.worker.attempt import Attempt
from compute.worker.job_folder import JobFolders
from compute.worker.results import ResultOutbox
from compute.worker.runner import JobRunner, plugin_host


@dataclass(eq=False)
class Slot:
    """One job, or one batch, at a time, in its own plugin host."""

    runner: JobRunner
    #: The claims handed to the slot's current run (one job, or a batch), by job id.
    attempts: dict[str, Attempt] = field(default_factory=dict)


@dataclass(eq=False)
class Lane:
    """Task types that share slots, claimed together."""

    task_types: list[str]
    slots: list[Slot]
    #: The last claim found fewer jobs than it asked for: nothing more to claim until a hint
    #: (or the sweep) says otherwise.
    drained: bool = False
    #: The most jobs a slot runs together (WORKER_BATCH); 1 once the plugin says it takes no batch.
    batch: int = 1

    def free(self) -> list[Slot]:
        return [slot for slot in self.slots if not slot.attempts]

    @property
    def claim_limit(self) -> int:
        """How many jobs the next claim asks for: a batch per free slot."""
        return len(self.free()) * self.batch


def shares(jobs: list[JobRecord], slots: list[Slot]) -> Iterator[tuple[Slot, list[JobRecord]]]:
    """The claimed jobs spread evenly over the free slots, in claim order: 5 jobs on two free
    slots of batch 8 run as 3 and 2, both plugin processes working, rather than 5 and none."""
    if not jobs:
        return
    each = math.ceil(len(jobs) / len(slots))
    for index, slot in enumerate(slots):
        share = jobs[index * each : (index + 1) * each]
        if share:
            yield slot, share


def build_lanes(
    settings: Settings,
    tasks: dict[str, ComputeModule],
    outbox: ResultOutbox,
    folders: JobFolders | None = None,
) -> list[Lane]:
    """The default lane (every task without a concurrency or a batch, one slot) first, then one
    lane per task with a concurrency (its slots) or a batch (one slot unless a concurrency says
    more). A setting for a task this worker does not run is ignored (one WORKER_CONCURRENCY or
    WORKER_BATCH may serve workers of different tasks). `folders`: where every slot's plugins
    work."""
    batch = {t: n for t, n in settings.worker_batch.items() if t in tasks and n > 1}
    concurrency = {t: n for t, n in settings.worker_concurrency.items() if t in tasks}
    own_lane = [t for t in tasks if t in concurrency or t in batch]
    shared = {t: plugin for t, plugin in tasks.items() if t not in own_lane}

    def slot(lane_tasks: dict[str, ComputeModule]) -> Slot:
        host = plugin_host(settings, lane_tasks, preload=tasks)
        return Slot(JobRunner(lane_tasks, outbox, host, settings.max_result_bytes, folders))

    lanes = [Lane(list(shared), [slot(shared)])] if shared else []
    for task in own_lane:
        slots = [slot({task: tasks[task]}) for _ in range(concurrency.get(task, 1))]
        lanes.append(Lane([task], slots, batch=batch.get(task, 1)))
    return lanes
