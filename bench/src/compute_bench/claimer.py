"""One claiming process for compute_bench.cross_host's claim rate: what a worker's lane does with
one free slot (`JobRepository.claim_next`), and nothing else.

    python -m compute_bench.claimer DATABASE_URL TASK READY GO OUT

Connects, makes the claim statement once on a task nobody submits, touches READY, waits for GO
to exist (the start line every claimer shares), claims TASK's jobs one per statement until none
is left, and writes {"claimed", "started", "ended"} (Unix seconds) to OUT. Apart from the module
the benchmark imports anyway, nothing: sixteen of these start on a loaded 2-core machine.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from compute.db.repository import JobRepository
from compute.db.session import make_engine


def main(argv: list[str]) -> int:
    url, task, ready, go, out = argv
    engine = make_engine(url)
    repo = JobRepository(engine)
    repo.claim_next(["nothing"], "warm-up", "s")  # the connection and the statement, made
    Path(ready).touch()
    while not os.path.exists(go):
        time.sleep(0.002)  # the shared start line
    worker_id = f"claimer-{os.getpid()}"
    started = time.time()
    claimed = 0
    while repo.claim_next([task], worker_id, "s") is not None:
        claimed += 1
    ended = time.time()
    Path(out).write_text(json.dumps({"claimed": claimed, "started": started, "ended": ended}))
    engine.dispose()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
