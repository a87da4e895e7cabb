"""Operators' changes to a job (PATCH /jobs/{id}, POST /jobs/{id}/retry): the database first,
then what the workers and CL Server clients need to hear about it.

Called on the routes' database threads; the announcer hops to the event loop.
"""

from __future__ import annotations

from compute.db.transitions import Changed, JobTransitions
from compute.server.flow.announcer import ChangeAnnouncer


class JobActions:
    def __init__(self, transitions: JobTransitions, announcer: ChangeAnnouncer) -> None:
        self.transitions = transitions
        self.announcer = announcer

    def reprioritise(self, job_id: str, priority: int) -> Changed | None:
        """A queued job's new priority (a raised one wakes the workers again)."""
        return self._announced(self.transitions.reprioritise(job_id, priority))

    def retry(self, job_id: str) -> Changed | None:
        """A failed or cancelled job queued again: hinted, and `queued` on `inference/events`."""
        return self._announced(self.transitions.retry(job_id))

    def _announced(self, changed: Changed | None) -> Changed | None:
        if changed is not None:
            self.announcer.announce([changed.change])
        return changed
