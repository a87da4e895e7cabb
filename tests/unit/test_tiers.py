"""The suite runs its tiers fastest first and stops after the unit tier when a unit test failed."""

from __future__ import annotations

from pathlib import Path

from tests.support.tiers import TIERS, stop_after, tier

TESTS = Path("/repo/tests")


def test_tiers_run_fastest_first() -> None:
    files = [
        TESTS / "hosts/test_remote_worker.py",
        TESTS / "faults/test_faults.py",
        TESTS / "bench/test_bench_smoke.py",
        TESTS / "e2e/test_cli.py",
        TESTS / "plugins/hash/test_hash.py",
        TESTS / "integration/test_job_flow.py",
        TESTS / "migrations/test_head_matches_models.py",
        TESTS / "unit/test_config.py",
    ]
    ordered = sorted(files, key=lambda path: tier(path, TESTS))
    assert [path.relative_to(TESTS).parts[0] for path in ordered] == list(TIERS)


def test_a_folder_of_no_tier_runs_with_the_integration_tests() -> None:
    assert tier(TESTS / "newfolder/test_x.py", TESTS) == tier(TESTS / "integration/test_x.py", TESTS)
    assert tier(Path("/elsewhere/test_x.py"), TESTS) == TIERS.index("integration")


def test_the_run_stops_where_a_failed_unit_tier_ends() -> None:
    unit, unit2, slow = TESTS / "unit/test_a.py", TESTS / "unit/test_b.py", TESTS / "faults/test_f.py"
    assert stop_after(True, unit, slow, TESTS) is not None
    assert stop_after(True, unit, unit2, TESTS) is None  # the unit tier runs to its end
    assert stop_after(False, unit, slow, TESTS) is None  # nothing failed
    assert stop_after(True, unit, None, TESTS) is None  # the unit tier was all there was
    assert stop_after(True, slow, slow, TESTS) is None  # a failure past the unit tier stops nothing
