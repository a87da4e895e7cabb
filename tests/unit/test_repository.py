"""JobRepository on a migrated database (SQLite, and PostgreSQL when it answers)."""

from __future__ import annotations

import threading
from collections import Counter
from typing import TypeVar

import pytest
from cl_ml_tools import Job
from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError

from compute.db.repository import JobRepository, idempotency_scope
from compute.db.session import write_transaction
from compute.db.tables import jobs_table, queue_entries_table

T = TypeVar("T")


def add(repo: JobRepository, job_id: str, task: str = "image_resize", priority: int = 5) -> str:
    return repo.add_job(Job(job_id=job_id, task_type=task, params={"n": job_id}), priority=priority)


def queue_rows(repo: JobRepository) -> int:
    with repo.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(queue_entries_table)).scalar_one())


def test_add_and_get(repo: JobRepository) -> None:
    record, created = repo.insert_job(
        Job(job_id="a", task_type="image_resize", params={"w": 1}), created_by="u1", priority=7
    )
    job = repo.get("a")
    assert job is not None
    assert (job.status, job.progress, job.priority, job.params, job.created_by) == (
        "queued",
        0,
        7,
        {"w": 1},
        "u1",
    )
    assert job.created_at > 1_600_000_000_000  # milliseconds
    assert created and record == job  # what insert_job returns is what a read finds
    assert repo.get("missing") is None and repo.get_job("missing") is None
    assert repo.get_job("a").params == {"w": 1}  # type: ignore[union-attr]
    assert queue_rows(repo) == 1


def test_claim_order_priority_then_age(repo: JobRepository) -> None:
    add(repo, "old-normal", priority=5)
    add(repo, "urgent", priority=9)
    add(repo, "new-normal", priority=5)
    add(repo, "low", priority=0)
    add(repo, "other-task", task="image_conversion", priority=10)
    claimed = [repo.claim_next(["image_resize"], "w1") for _ in range(5)]
    assert [c.job_id if c else None for c in claimed] == ["urgent", "old-normal", "new-normal", "low", None]
    first = claimed[0]
    assert first is not None and first.status == "processing" and first.worker_id == "w1"
    assert first.started_at is not None
    assert repo.get("other-task").status == "queued"  # type: ignore[union-attr]


def test_a_batch_claim_takes_the_most_urgent_in_one_statement_each_with_its_own_lease(
    repo: JobRepository,
) -> None:
    for i, priority in enumerate((5, 9, 5, 0)):
        add(repo, f"j{i}", priority=priority)
    add(repo, "other-task", task="image_conversion", priority=10)
    batch = repo.claim_batch(["image_resize"], "w1", "s1", 60_000, limit=3)
    assert [j.job_id for j in batch] == ["j1", "j0", "j2"]  # claim order, whatever RETURNING gave
    assert {(j.status, j.worker_id, j.worker_session, j.attempt) for j in batch} == {
        ("processing", "w1", "s1", 1)
    }
    tokens = [j.lease_token or "" for j in batch]
    assert len(set(tokens)) == 3 and all(len(t) > 32 for t in tokens)
    assert [j.lease_token for j in map(repo.get, ("j0", "j1", "j2")) if j] == [
        tokens[1],
        tokens[0],
        tokens[2],
    ]
    # A second batch draws a new random part: nothing of the first batch's tokens predicts it.
    [last] = repo.claim_batch(["image_resize"], "w2", "s2", 60_000, limit=5)
    assert last.job_id == "j3" and (last.lease_token or "")[:32] not in {t[:32] for t in tokens}
    assert repo.claim_batch(["image_resize"], "w1", "s1", 60_000, limit=5) == []
    assert repo.get("other-task").status == "queued"  # type: ignore[union-attr]


def test_renewing_leases_says_which_claims_are_gone(repo: JobRepository) -> None:
    for i in range(3):
        add(repo, f"j{i}")
    batch = repo.claim_batch(["image_resize"], "w1", "s1", 1_000, limit=3)
    leases = [(j.job_id, j.lease_token or "") for j in batch]
    repo.update_job("j2", status="completed")  # finished meanwhile
    assert repo.renew_leases([*leases[:2], leases[2]], 60_000) == {"j2"}
    assert repo.renew_leases([("j0", "forged")], 60_000) == {"j0"}  # the token is the claim
    first_expiry = batch[0].lease_expires_at or 0
    for job_id in ("j0", "j1"):
        renewed = repo.get(job_id)
        assert renewed is not None and (renewed.lease_expires_at or 0) > first_expiry + 50_000
    assert repo.renew_leases([], 60_000) == set()


def test_claim_with_no_task_types_claims_nothing(repo: JobRepository) -> None:
    add(repo, "a")
    assert repo.claim_next([], "w1") is None
    assert repo.get("a").status == "queued"  # type: ignore[union-attr]


def test_claim_never_returns_the_same_job_twice(repo: JobRepository) -> None:
    for i in range(5):
        add(repo, f"j{i}")
    ids = [r.job_id for r in iter(lambda: repo.claim_next(["image_resize"], "w1"), None)]
    assert sorted(ids) == [f"j{i}" for i in range(5)]
    assert repo.fetch_next_job(["image_resize"]) is None


def test_threaded_claim_race_gives_each_job_to_one_claimer(repo: JobRepository) -> None:
    total, claimers = 300, 6
    for i in range(total):
        add(repo, f"r{i:03d}", priority=i % 3)
    claimed: dict[str, list[str]] = {f"w{n}": [] for n in range(claimers)}
    errors: list[BaseException] = []
    start = threading.Barrier(claimers)

    def claimer(worker_id: str) -> None:
        try:
            start.wait()
            while True:
                record = repo.claim_next(["image_resize"], worker_id)
                if record is not None:
                    claimed[worker_id].append(record.job_id)
                elif not any(s.queued for s in repo.queue_summary()):
                    return
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=claimer, args=(w,)) for w in claimed]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    everything = [job_id for ids in claimed.values() for job_id in ids]
    duplicates = [job_id for job_id, n in Counter(everything).items() if n > 1]
    assert duplicates == []
    assert len(everything) == total
    # Each row records the claimer that got it.
    for worker_id, ids in claimed.items():
        for job_id in ids[:5]:
            assert repo.get(job_id).worker_id == worker_id  # type: ignore[union-attr]


def test_update_and_delete(repo: JobRepository) -> None:
    add(repo, "u1")
    assert repo.update_job("u1", status="error", error_message="x") is True
    assert repo.get("u1").status == "failed"  # type: ignore[union-attr]
    assert repo.update_job("missing", progress=3) is False
    with pytest.raises(ValueError):
        repo.update_job("u1", task_type="other")
    assert repo.delete_job("u1") is True
    assert repo.delete_job("u1") is False
    assert repo.get("u1") is None and queue_rows(repo) == 0


def test_queue_summary(repo: JobRepository) -> None:
    add(repo, "a")
    add(repo, "b")
    add(repo, "c", task="image_conversion")
    repo.claim_next(["image_resize"], "w1")
    summary = {s.task_type: s for s in repo.queue_summary()}
    assert (summary["image_resize"].queued, summary["image_resize"].running) == (1, 1)
    assert (summary["image_conversion"].queued, summary["image_conversion"].running) == (1, 0)
    assert summary["image_conversion"].oldest_queued_at == repo.get("c").created_at  # type: ignore[union-attr]


def test_cleanup_of_finished_jobs(repo: JobRepository) -> None:
    for job_id in ("done", "failed", "running", "waiting"):
        add(repo, job_id)
    done, failed, _running = (repo.claim_next(["image_resize"], "w1") for _ in range(3))  # by age
    assert done is not None and failed is not None
    with write_transaction(repo.engine) as conn:  # finished long ago
        conn.execute(
            update(jobs_table)
            .where(jobs_table.c.job_id == done.job_id)
            .values(status="completed", completed_at=1000)
        )
        conn.execute(
            update(jobs_table)
            .where(jobs_table.c.job_id == failed.job_id)
            .values(status="failed", completed_at=2000)
        )
    assert sorted(repo.finished_before(1500)) == ["done"]
    assert sorted(repo.finished_before(10**15)) == ["done", "failed"]
    assert repo.delete_many(repo.finished_before(10**15)) == 2
    assert repo.delete_many([]) == 0
    assert repo.get("done") is None and repo.get("failed") is None
    assert repo.get("running") is not None and repo.get("waiting") is not None
    assert queue_rows(repo) == 2


def test_idempotency_key_returns_the_first_job(repo: JobRepository) -> None:
    added: list[str] = []

    def submit(job_id: str, user: str | None, key: str | None) -> str:
        job = Job(job_id=job_id, task_type="image_resize", params={})
        record, created = repo.insert_job(job, created_by=user, idempotency_key=key)
        if created:
            added.append(record.job_id)
        return record.job_id

    assert submit("first", "alice", "k1") == "first"
    assert submit("retry", "alice", "k1") == "first"  # the same user and key: the first job
    assert submit("bobs", "bob", "k1") == "bobs"  # another user's key is another key
    assert submit("guest", None, "k1") == "guest"
    assert submit("guest-retry", None, "k1") == "guest"
    assert submit("plain-1", "alice", None) == "plain-1" and submit("plain-2", "alice", None) == "plain-2"
    assert repo.get("retry") is None and repo.get("guest-retry") is None
    assert added == ["first", "bobs", "guest", "plain-1", "plain-2"]  # a replay is not new: no hint
    assert queue_rows(repo) == 5
    found = repo.find_by_idempotency_key(idempotency_scope("alice", "k1"))
    assert found is not None and found.job_id == "first"
    assert repo.find_by_idempotency_key("g:k1").job_id == "guest"  # type: ignore[union-attr]
    assert repo.find_by_idempotency_key(idempotency_scope("alice", "nope")) is None


def test_a_duplicate_job_id_without_a_key_still_fails(repo: JobRepository) -> None:
    add(repo, "same")
    with pytest.raises(IntegrityError):
        add(repo, "same")


def test_existing_job_ids(repo: JobRepository) -> None:
    for job_id in ("a", "b"):
        add(repo, job_id)
    many = [f"none-{i}" for i in range(1200)] + ["a", "b"]  # more than one IN list
    assert repo.existing_job_ids(many) == {"a", "b"}
    assert repo.existing_job_ids([]) == set()


def test_stored_idempotency_keys_name_one_user_and_key_each() -> None:
    """No two (user, key) pairs share a stored key, whatever their characters: the stored form
    is read back into the pair it came from."""

    def parse(stored: str) -> tuple[str | None, str]:
        if stored.startswith("g:"):
            return None, stored[2:]
        length, rest = stored[1:].split(":", 1)
        user = rest[: int(length)]
        assert rest[int(length)] == ":"
        return user, rest[int(length) + 1 :]

    parts = ["", ":", "-", "g", "u1", "a:b", "u3:a:b", "x:y", "1:", "\u00e9"]
    for user in [None, *parts]:
        for key in parts:
            assert parse(idempotency_scope(user, key)) == (user, key)
