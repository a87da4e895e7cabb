"""Where a worker's jobs run: lanes of slots, each slot a runner with a plugin host of its own.

Without WORKER_CONCURRENCY a worker has one lane with one slot for all its task types: one job at
a time, claimed one at a time, as it always did. A task given a concurrency N (`--concurrency
task=N`, opt-in, for light tasks) gets a lane of its own with N slots: the worker claims up to as
many of its jobs as it has free slots in one statement, and each runs at once in its own slot (a
plugin process each, so a cancel or timeout kills only that job's process, and CPU-bound plugins
use more than one core). A long job holds only its own slot: the lane's other slots keep taking
short jobs, and the other lanes are not affected at all.

A lane hands each claimed job to one slot today. For a plugin that runs several jobs together
(`PluginHost.batchable` / `execute_batch`: the embedding tasks' batched ONNX Runtime run, issue 19)
the seam is `Worker._claim_free_slots`: one statement returns up to `Lane.claim_limit` jobs of the
lane's task, in claim order, and they could go to one slot's host as one `execute_batch` instead
of one slot each.
"""

from __future__ import annotations

from dataclasses import dataclass

from cl_ml_tools import ComputeModule

from compute.config import Settings
from compute.worker.attempt import Attempt
from compute.worker.job_folder import JobFolders
from compute.worker.results import ResultOutbox
from compute.worker.runner import JobRunner, plugin_host


@dataclass(eq=False)
class Slot:
    """One job at a time, in its own plugin host."""

    runner: JobRunner
    attempt: Attempt | None = None


@dataclass(eq=False)
class Lane:
    """Task types that share slots, claimed together."""

    task_types: list[str]
    slots: list[Slot]
    #: The last claim found fewer jobs than it asked for: nothing more to claim until a hint
    #: (or the sweep) says otherwise.
    drained: bool = False

    def free(self) -> list[Slot]:
        return [slot for slot in self.slots if slot.attempt is None]

    @property
    def claim_limit(self) -> int:
        """How many jobs the next claim asks for: one per free slot."""
        return len(self.free())


def build_lanes(
    settings: Settings,
    tasks: dict[str, ComputeModule],
    outbox: ResultOutbox,
    folders: JobFolders | None = None,
) -> list[Lane]:
    """The default lane (every task without a concurrency, one slot) first, then one lane per
    task with a concurrency. A concurrency for a task this worker does not run is ignored (one
    WORKER_CONCURRENCY may serve workers of different tasks). `folders`: where every slot's
    plugins work."""
    concurrency = {t: n for t, n in settings.worker_concurrency.items() if t in tasks}
    shared = {t: plugin for t, plugin in tasks.items() if t not in concurrency}

    def slot(lane_tasks: dict[str, ComputeModule]) -> Slot:
        host = plugin_host(settings, lane_tasks, preload=tasks)
        return Slot(JobRunner(lane_tasks, outbox, host, settings.max_result_bytes, folders))

    lanes = [Lane(list(shared), [slot(shared)])] if shared else []
    for task, n in concurrency.items():
        lanes.append(Lane([task], [slot({task: tasks[task]}) for _ in range(n)]))
    return lanes
