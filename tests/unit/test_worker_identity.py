"""The default worker id: stable across restarts, distinct for workers side by side."""

from __future__ import annotations

from pathlib import Path

import pytest

from compute.errors import ConfigError
from compute.topics import check_segment
from compute.worker import identity
from compute.worker.identity import claim_slot, host_part


def test_workers_side_by_side_get_distinct_ids_and_a_restart_gets_its_own_back(tmp_path: Path) -> None:
    first, second = claim_slot(tmp_path, "nas"), claim_slot(tmp_path, "nas")
    assert (first.ident, second.ident) == ("worker-nas-1", "worker-nas-2")
    first.release()  # the process ended (the kernel releases the lock however it ends)
    again = claim_slot(tmp_path, "nas")
    assert again.ident == "worker-nas-1"
    third = claim_slot(tmp_path, "nas")
    assert third.ident == "worker-nas-3"
    other = claim_slot(tmp_path, "other")
    assert other.ident == "worker-other-1"
    for slot in (second, again, third, other):
        slot.release()


def test_odd_host_names_still_make_a_valid_topic_segment() -> None:
    for name in ("my host+1", "#/", "", "a" * 300, "nas.local"):
        check_segment(f"worker-{host_part(name)}-1", "worker id")
    assert host_part("nas.local") == "nas.local"


def test_all_slots_taken_asks_for_an_explicit_id(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(identity, "MAX_SLOTS", 2)
    held = [claim_slot(tmp_path, "h"), claim_slot(tmp_path, "h")]
    with pytest.raises(ConfigError, match="--worker-id"):
        claim_slot(tmp_path, "h")
    assert len(held) == 2
    for slot in held:
        slot.release()
