"""Summaries of py-spy raw (collapsed) stacks: `python -m compute_bench.profile FILE...`."""

from __future__ import annotations

import re
import sys
from collections import Counter
from pathlib import Path

_LINE = re.compile(r":\d+\)$")


def _func(frame: str) -> str:
    """`name (path/to/module.py:123)` -> `name (module.py)`; line numbers merged."""
    frame = _LINE.sub(")", frame.strip())
    name, _, where = frame.partition(" (")
    if not where:
        return name
    path = where.rstrip(")")
    parts = path.split("/")
    short = "/".join(parts[-2:]) if len(parts) > 1 else path
    return f"{name} ({short})"


def summarize(path: Path, top: int = 15) -> dict[str, object]:
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [_func(f) for f in stack.split(";") if f and not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        samples += n
        own[frames[-1]] += n
        for f in set(frames):
            total[f] += n
    pct = (lambda c: round(100 * c / samples, 1)) if samples else (lambda c: 0.0)
    return {
        "samples": samples,
        "self": [(f, pct(c)) for f, c in own.most_common(top)],
        "inclusive": [(f, pct(c)) for f, c in total.most_common(top * 3)],
    }


def main(argv: list[str] | None = None) -> int:
    for name in argv if argv is not None else sys.argv[1:]:
        s = summarize(Path(name))
        print(f"== {name}: {s['samples']} samples")
        print("-- self %")
        for f, p in s["self"]:  # type: ignore[attr-defined]
            print(f"{p:6.1f}  {f}")
        print("-- inclusive %")
        for f, p in s["inclusive"]:  # type: ignore[attr-defined]
            print(f"{p:6.1f}  {f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
