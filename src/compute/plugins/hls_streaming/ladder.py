"""Which renditions to make: the client's `variants` JSON, checked, and fitted to the source."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from compute.errors import ComputeError

#: Upstream's ladder.
DEFAULT_VARIANTS = '[{"resolution": 720, "bitrate": 3500}, {"resolution": 480, "bitrate": 1500}]'
MIN_HEIGHT, MAX_HEIGHT = 32, 4320
MIN_KBPS, MAX_KBPS = 64, 100_000
MAX_VARIANTS = 8
#: A stand-in variant (for a source shorter than every requested one) never gets less than this.
FLOOR_KBPS = 200


class BadVariants(ComputeError, ValueError):
    """The `variants` field is not a list of {"resolution", "bitrate"} objects in range."""


@dataclass(frozen=True, order=True)
class Variant:
    #: Height in pixels (the `720` of 720p); even, as H.264 in 4:2:0 needs.
    resolution: int
    #: Video bitrate in kbit/s.
    bitrate: int

    @property
    def name(self) -> str:
        """As upstream names files: `adaptive-<name>.m3u8`."""
        return f"{self.resolution}p-{self.bitrate}"

    def as_dict(self) -> dict[str, int]:
        return {"resolution": self.resolution, "bitrate": self.bitrate}


def _int_in(item: dict[str, Any], key: str, low: int, high: int) -> int:
    value = item.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise BadVariants(f"variants: {key!r} must be a whole number from {low} to {high}, got {value!r}")
    return value


def parse_variants(raw: str | None) -> list[Variant]:
    """The client's `variants` JSON (None or "" = the default ladder), tallest first, no repeats."""
    try:
        items = json.loads(raw or DEFAULT_VARIANTS)
    except json.JSONDecodeError as exc:
        raise BadVariants(f"variants is not valid JSON: {exc.msg}") from None
    if not isinstance(items, list) or not items or not all(isinstance(i, dict) for i in items):
        raise BadVariants(
            'variants must be a non-empty JSON list like [{"resolution": 720, "bitrate": 3500}]'
        )
    if len(items) > MAX_VARIANTS:
        raise BadVariants(f"variants: at most {MAX_VARIANTS}, got {len(items)}")
    variants = set()
    for item in items:
        height = _int_in(item, "resolution", MIN_HEIGHT, MAX_HEIGHT)
        if height % 2:
            raise BadVariants(f"variants: resolution must be even (H.264 4:2:0), got {height}")
        variants.add(Variant(height, _int_in(item, "bitrate", MIN_KBPS, MAX_KBPS)))
    return sorted(variants, reverse=True)


def fit_to_source(requested: list[Variant], source_height: int) -> list[Variant]:
    """The requested variants no taller than the source: upscaling only wastes bits.

    When every one is taller, one variant at the source's own height, its bitrate scaled down
    from the smallest requested one by area.
    """
    kept = [v for v in requested if v.resolution <= source_height]
    if kept:
        return kept
    smallest = min(requested)
    height = max(2, source_height - source_height % 2)
    kbps = max(FLOOR_KBPS, round(smallest.bitrate * (height / smallest.resolution) ** 2))
    return [Variant(height, min(kbps, smallest.bitrate))]
