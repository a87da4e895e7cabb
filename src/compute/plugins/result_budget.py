"""A plugin's task_output kept within MAX_RESULT_BYTES: the leading items that fit, and a note of
what was left out, instead of a failed job.

The worker fails a result larger than MAX_RESULT_BYTES (jobs.result_too_large) and the server
refuses one. A plugin whose output grows with its input (exif's tags, face_detection's faces)
keeps the most of it that fits instead, measured as the worker measures it (jobs.result_bytes:
compact JSON, non-ASCII escaped, so an emoji counts 12 bytes), and says in its output what it
left out. The whole task_output, that note included, is what is measured; the job event around it
has room of its own (topics.EVENT_ENVELOPE_BYTES, added to the limit for the bus).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from compute.jobs import result_bytes
from compute.plugins.environment import current

Output = TypeVar("Output")


def result_limit() -> int:
    """This process's MAX_RESULT_BYTES (what the worker sends at most)."""
    return current().max_result_bytes


def item_bytes(value: Any) -> int:
    """What one element adds to a JSON array: its compact JSON and a comma."""
    return result_bytes(value) + 1


def entry_bytes(key: str, value: Any) -> int:
    """What one entry adds to a JSON object: `"key":value,`."""
    return result_bytes(key) + 1 + result_bytes(value) + 1


def most_that_fit(sizes: Sequence[int], build: Callable[[int], Output], limit: int) -> tuple[int, Output]:
    """(n, build(n)) for the largest n whose output fits in `limit` bytes.

    `build(n)` is the output with the first n items (and its note of the others); `sizes[i]` is
    what item i adds to it (item_bytes, entry_bytes). Items are taken off the end until the
    measured output fits; the note growing as more are left out is measured again. When even
    build(0) does not fit, it is returned as it is (the worker then fails the job, saying why).
    """
    kept = len(sizes)
    while True:
        output = build(kept)
        excess = result_bytes(output) - limit
        if excess <= 0 or kept == 0:
            return kept, output
        while excess > 0 and kept > 0:
            kept -= 1
            excess -= sizes[kept]
