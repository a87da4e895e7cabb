"""The suite's tiers, fastest first: a broken unit test fails the run in a minute, not after the
slow tiers have run for a quarter of an hour.

tests/conftest.py orders the collected tests by `tier` (a stable sort: within a tier, the order
of collection stays, so module- and session-scoped fixtures are set up as before), and ends the
run after the unit tier when a unit test failed (`stop_after`). A tier can still be run on its
own by its path (`uv run pytest tests/faults`).
"""

from __future__ import annotations

from pathlib import Path

#: Folders under tests/, fastest first. A folder not listed runs with the integration tests.
TIERS = ("unit", "migrations", "integration", "plugins", "e2e", "bench", "faults", "hosts")
FIRST = TIERS[0]
_DEFAULT = TIERS.index("integration")


def tier(path: Path, tests: Path) -> int:
    """The rank of the test file `path` in TIERS, by its first folder under `tests`."""
    try:
        folder = path.relative_to(tests).parts[0]
    except (ValueError, IndexError):
        return _DEFAULT
    return TIERS.index(folder) if folder in TIERS else _DEFAULT


def stop_after(failed_in_first_tier: bool, this: Path, following: Path | None, tests: Path) -> str | None:
    """Why the run stops after the test in `this` (the next one is in `following`), or None.

    It stops where the first tier ends, if a test of it failed: the slower tiers would take
    minutes to say nothing new about a change that already breaks a unit test.
    """
    if not failed_in_first_tier or following is None:
        return None
    if tier(this, tests) == 0 and tier(following, tests) > 0:
        return (
            f"a {FIRST} test failed: the slower tiers did not run (run them by their path to run them anyway)"
        )
    return None
