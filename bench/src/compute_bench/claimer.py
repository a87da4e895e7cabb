"""Claiming processes for compute_bench.cross_host's claim rate: what a worker's lane does with
one free slot (`JobRepository.claim_next`), and nothing else.

    python -m compute_bench.claimer DATABASE_URL TASK FOLDER INDEX ROUNDS

Connects and makes the claim statement once on a task nobody submits; then for each round r:
touches FOLDER/INDEX.ready-r, waits for FOLDER/go-r to exist (the start line every claimer of
the pool shares), claims TASK's jobs one per statement until none is left, and writes
{"claimed", "started", "ended"} (Unix seconds) to FOLDER/INDEX.r.json. One process serves every
round: sixteen of them take minutes to import on a loaded 2-core machine.
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
    url, task, folder_name, index, rounds = argv
    folder = Path(folder_name)
    engine = make_engine(url)
    repo = JobRepository(engine)
    repo.claim_next(["nothing"], "warm-up", "s")  # the connection and the statement, made
    worker_id = f"claimer-{os.getpid()}"
    for r in range(int(rounds)):
        (folder / f"{index}.ready-{r}").touch()
        while not (folder / f"go-{r}").exists():
            time.sleep(0.01)  # the shared start line
        started = time.time()
        claimed = 0
        while repo.claim_next([task], worker_id, "s") is not None:
            claimed += 1
        ended = time.time()
        result = {"claimed": claimed, "started": started, "ended": ended}
        (folder / f"{index}.{r}.json").write_text(json.dumps(result))
    engine.dispose()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
