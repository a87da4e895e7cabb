"""compute-bench: start a real Compute deployment and measure it. See `--help`."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import fields, replace
from pathlib import Path

from compute.config import EMBEDDED_BROKERS
from compute_bench import scenarios
from compute_bench.cluster import ClusterError
from compute_bench.report import render
from compute_bench.runner import DEFAULT_CONCURRENCY, DEFAULT_SECTIONS, SECTIONS, Config, Run


def _broker(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError("expected host:port, e.g. 127.0.0.1:1883")
    return host, int(port)


def _sizes(base: scenarios.Sizes, spec: str | None) -> scenarios.Sizes:
    if not spec:
        return base
    names = {f.name: f.type for f in fields(base)}
    changes: dict[str, float | int] = {}
    for item in spec.split(","):
        key, _, value = item.partition("=")
        key = key.strip()
        if key not in names:
            raise SystemExit(f"--jobs: unknown key {key!r}; known: {', '.join(names)}")
        changes[key] = float(value) if names[key] in ("float", float) else int(value)
    return replace(base, **changes)  # type: ignore[arg-type]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="compute-bench", description=__doc__)
    parser.add_argument("--workers", type=int, default=2, help="workers for pickup/throughput/polling")
    parser.add_argument(
        "--broker",
        type=_broker,
        help="host:port of a running MQTT broker (default: compute-server's embedded broker on a free port)",
    )
    parser.add_argument(
        "--embedded-broker",
        choices=EMBEDDED_BROKERS,
        default="auto",
        help="the server's embedded broker without --broker (EMBEDDED_BROKER): auto runs "
        "Mosquitto when installed, else amqtt",
    )
    parser.add_argument(
        "--database-url",
        help="a database of the benchmark's own (default: SQLite in a temporary CL_SERVER_DIR)",
    )
    parser.add_argument(
        "--jobs",
        help="sizes, e.g. pickup=300,pickup_image=100,burst=5000,"
        "burst_image=1000,progress=50,progress_spaced=20,polling=25,idle_seconds=60,"
        "concurrency=24,warmup=10,plugins=20,plugins_video=3,plugins_large=8,video_seconds=10",
    )
    parser.add_argument("--quick", action="store_true", help="few jobs, short windows: a smoke test")
    parser.add_argument(
        "--sections",
        default=",".join(DEFAULT_SECTIONS),
        help=f"comma-separated subset of {','.join(SECTIONS)} (default: all but plugins)",
    )
    parser.add_argument(
        "--plugins",
        help="plugins section: only these tasks or rows, comma-separated (e.g. hash,"
        "'image_conversion jpeg->png'; default: every row)",
    )
    parser.add_argument("--json", type=Path, help="write the results as JSON here")
    parser.add_argument("--dir", type=Path, help="where to create the temporary CL_SERVER_DIRs")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directories and logs")
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="py-spy the server and one worker during the two bursts (raw stacks of "
        "the thread holding the GIL: where the Python CPU goes)",
    )
    parser.add_argument("--label", help="name of this configuration in the report")
    parser.add_argument(
        "--stand-in-models",
        action="store_true",
        help="plugins section: tiny stand-in ONNX models (real I/O names and shapes) for "
        "model files missing from COMPUTE_MODELS_DIR; measures pre/post-processing "
        "and service overhead, not the real networks",
    )
    parser.add_argument(
        "--peers",
        action="store_true",
        help="also run Celery + Redis, Celery behind FastAPI and Procrastinate + PostgreSQL "
        "at the same measurement points, and print every figure's ratio to each "
        "(needs `uv sync --group peers`, Redis on 6379, PostgreSQL on 5432)",
    )
    parser.add_argument(
        "--concurrency",
        default=DEFAULT_CONCURRENCY,
        help="the workers' WORKER_CONCURRENCY (default %(default)s: the light no-op task claimed "
        "and run several at a time; '' for one job at a time)",
    )
    args = parser.parse_args(argv)

    sections = tuple(s.strip() for s in args.sections.split(",") if s.strip())
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections: {', '.join(sorted(unknown))}")
    base = scenarios.QUICK if args.quick else scenarios.Sizes()
    cfg = Config(
        workers=args.workers,
        broker=args.broker,
        embedded_broker=args.embedded_broker,
        database_url=args.database_url,
        sizes=_sizes(base, args.jobs),
        quick=args.quick,
        sections=sections,
        base_dir=args.dir,
        keep=args.keep,
        profile_dir=args.profile,
        label=args.label,
        stand_in_models=args.stand_in_models,
        peers=args.peers,
        plugin_rows=tuple(r.strip() for r in args.plugins.split(",") if r.strip()) if args.plugins else None,
        concurrency=args.concurrency,
    )
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    loop_factory: Callable[[], asyncio.AbstractEventLoop] = asyncio.new_event_loop
    try:
        import uvloop  # the client should cost the machine as little as it can

        loop_factory = uvloop.new_event_loop
    except ImportError:
        pass
    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            result = runner.run(Run(cfg).run())
    except ClusterError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(render(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
        print(f"results written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
