"""Targets and the text tables."""

from __future__ import annotations

from typing import Any

from compute_bench import ml_batch, standins
from compute_bench.latency import STEPS, VISIBLE_TARGET_MS

#: (name, where in the result, comparison, target)
TARGETS: tuple[tuple[str, tuple[str, ...], str, float], ...] = (
    ("pickup p50, no file (ms)", ("pickup", "bench_noop", "submit_to_task_start_ms", "p50"), "<=", 4),
    ("pickup p99, no file (ms)", ("pickup", "bench_noop", "submit_to_task_start_ms", "p99"), "<=", 8),
    (
        "pickup p50, image_conversion (ms)",
        ("pickup", "image_conversion", "submit_to_task_start_ms", "p50"),
        "<=",
        5,
    ),
    (
        "pickup p99, image_conversion (ms)",
        ("pickup", "image_conversion", "submit_to_task_start_ms", "p99"),
        "<=",
        10,
    ),
    ("row created -> claim p50 (ms)", ("pickup", "bench_noop", "created_to_claim_ms", "p50"), "<=", 1.5),
    ("no-op jobs/s, 2 workers", ("throughput", "bench_noop", "jobs_per_s"), ">=", 600),
    ("image_conversion jobs/s", ("throughput", "image_conversion", "jobs_per_s"), ">=", 300),
    ("progress lag p99, updates 1 ms apart (ms)", ("progress", "spaced", "lag_ms", "p99"), "<=", 50),
    ("progress lag p99, back to back (ms)", ("progress", "burst", "lag_ms", "p99"), "<=", 50),
    ("idle worker statements between sweeps", ("idle", "worker_statements_outside_sweeps"), "<=", 0),
    ("polling/events median pickup ratio", ("polling", "median_ratio"), ">=", 500),
)


#: The issue's targets against the peers, measured in the same run:
#: (name, Compute's figure, peer, peer's figure, comparison, factor): Compute op factor x peer.
PEER_TARGETS: tuple[tuple[str, tuple[str, ...], str, tuple[str, ...], str, float], ...] = (
    (
        "no-op jobs/s vs Celery + Redis",
        ("throughput", "bench_noop", "jobs_per_s"),
        "celery",
        ("throughput", "jobs_per_s"),
        ">=",
        1.0,
    ),
    (
        "no-op jobs/s vs Celery behind FastAPI",
        ("throughput", "bench_noop", "jobs_per_s"),
        "fastapi_celery",
        ("throughput", "jobs_per_s"),
        ">=",
        2.0,
    ),
    (
        "no-op jobs/s vs Celery behind FastAPI (issue 20)",
        ("throughput", "bench_noop", "jobs_per_s"),
        "fastapi_celery",
        ("throughput", "jobs_per_s"),
        ">=",
        1.0,
    ),
    (
        "pickup p50 vs Celery behind FastAPI (issue 20)",
        ("pickup", "bench_noop", "submit_to_task_start_ms", "p50"),
        "fastapi_celery",
        ("pickup", "submit_to_task_start_ms", "p50"),
        "<=",
        1.0,
    ),
    (
        "pickup p50 vs Celery + Redis",
        ("pickup", "bench_noop", "submit_to_task_start_ms", "p50"),
        "celery",
        ("pickup", "submit_to_task_start_ms", "p50"),
        "<=",
        1.0,
    ),
    (
        "pickup p99 vs Celery + Redis",
        ("pickup", "bench_noop", "submit_to_task_start_ms", "p99"),
        "celery",
        ("pickup", "submit_to_task_start_ms", "p99"),
        "<=",
        2.0,
    ),
    (
        "image_conversion jobs/s vs Celery behind FastAPI",
        ("throughput", "image_conversion", "jobs_per_s"),
        "fastapi_celery",
        ("throughput_image", "jobs_per_s"),
        ">=",
        2.0,
    ),
)
#: Rows of the peers table: (label, Compute's figure, the peer's figure, higher is better).
PEER_FIGURES: tuple[tuple[str, tuple[str, ...], tuple[str, ...], bool], ...] = (
    (
        "pickup p50 (ms)",
        ("pickup", "bench_noop", "submit_to_task_start_ms", "p50"),
        ("pickup", "submit_to_task_start_ms", "p50"),
        False,
    ),
    (
        "pickup p99 (ms)",
        ("pickup", "bench_noop", "submit_to_task_start_ms", "p99"),
        ("pickup", "submit_to_task_start_ms", "p99"),
        False,
    ),
    (
        "submit call p50 (ms)",
        ("pickup", "bench_noop", "submit_call_ms", "p50"),
        ("pickup", "submit_call_ms", "p50"),
        False,
    ),
    ("no-op jobs/s", ("throughput", "bench_noop", "jobs_per_s"), ("throughput", "jobs_per_s"), True),
    (
        "image_conversion jobs/s",
        ("throughput", "image_conversion", "jobs_per_s"),
        ("throughput_image", "jobs_per_s"),
        True,
    ),
)


def ratio(a: Any, b: Any) -> float | None:
    if not isinstance(a, int | float) or not isinstance(b, int | float) or not b:
        return None
    return round(a / b, 2)


def _get(doc: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        if key in ("spaced", "burst") and isinstance(doc, dict) and "variants" in doc:
            found = [v for v in doc["variants"] if v["steps"] and bool(v["step_ms"]) == (key == "spaced")]
            doc = found[0] if found else None
        elif isinstance(doc, dict):
            doc = doc.get(key)
        else:
            return None
    return doc


def evaluate_targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for name, path, op, target in TARGETS:
        value = _get(result, path)
        met = None if value is None else (value <= target if op == "<=" else value >= target)
        out.append({"target": name, "value": value, "goal": f"{op} {target:g}", "met": met})
    for run in (result.get("latency") or {}).get("runs", []):
        visible = (run.get("bench_noop") or {}).get("done_to_visible_ms") or {}
        for q, goal in zip(("p50", "p99"), VISIBLE_TARGET_MS, strict=True):
            value = visible.get(q)
            out.append(
                {
                    "target": f"no-op done -> inference/events {q} (ms), {run['broker']}",
                    "value": value,
                    "goal": f"<= {goal:g}",
                    "met": None if value is None else value <= goal,
                }
            )
    sqlite = _get(result, ("throughput", "bench_noop", "jobs_per_s"))
    postgres = _get(result, ("throughput_postgres", "bench_noop", "jobs_per_s"))
    if postgres is not None:
        r = ratio(postgres, sqlite)
        out.append(
            {
                "target": "no-op jobs/s on PostgreSQL / on SQLite (same run)",
                "value": r,
                "goal": ">= 0.8x",
                "met": None if r is None else r >= 0.8,
            }
        )
    section = result.get("recovery") or {}
    for run in section.get("runs", []):
        value = (run.get("kill_seconds") or {}).get("max")
        out.append(
            {
                "target": f"kill -9 -> job running elsewhere, worst round (s), {run['broker']}",
                "value": value,
                "goal": f"<= {section['target_seconds']:g}",
                "met": None if value is None or run.get("not_rerun") else value <= section["target_seconds"],
            }
        )
    value = _get(result, ("throughput", "bench_noop", "server_cpu_ms_per_job"))
    out.append(
        {
            "target": "server CPU per no-op job in the burst (ms)",
            "value": value,
            "goal": "<= 1.5",
            "met": None if value is None else value <= 1.5,
        }
    )
    peers = result.get("peers") or {}
    for name, ours, peer, theirs, op, factor in PEER_TARGETS if peers else ():
        r = ratio(_get(result, ours), _get(peers.get(peer), theirs))
        met = None if r is None else (r >= factor if op == ">=" else r <= factor)
        out.append({"target": f"{name} (ratio)", "value": r, "goal": f"{op} {factor:g}x", "met": met})
    section = result.get("plugins") or {}
    for row in section.get("plugins", []):
        name = row.get("row", row["task"])
        if "overhead_pct" in row:
            stand_in = " (stand-in model)" if row.get("model") == "stand-in" else ""
            out.append(
                {
                    "target": f"{name}{stand_in}: pickup + persistence, % of run p50",
                    "value": row["overhead_pct"],
                    "goal": f"< {section['target_pct']:g}",
                    "met": row["overhead_met"],
                }
            )
        if row.get("references"):
            out.append(
                {
                    "target": f"{name}: CPU per job / the fastest reference's "
                    f"({row.get('fastest') or 'none ran'})",
                    "value": row.get("ratio_cpu"),
                    "goal": f"<= {section.get('reference_target', 1.2):g}x",
                    "met": row.get("reference_met"),
                }
            )
    return out


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}"
    return str(v)


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    cells = [headers, *[[_fmt(c) for c in r] for r in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = [
        "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in cells
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _dist_row(name: str, d: dict[str, Any] | None) -> list[Any]:
    d = d or {}
    return [name, d.get("n"), d.get("p50"), d.get("p90"), d.get("p99"), d.get("max")]


def render(result: dict[str, Any]) -> str:
    meta = result["meta"]
    st = meta["storage"]
    parts = [
        f"== compute-bench: {meta['label']} ==",
        f"broker: {meta['broker']}; database: {meta['database']}; workers: {meta['workers']}",
        f"storage: {st['path']} on {st['mount']} ({st['type']}, {st['device']}); "
        f"machine: {meta['machine']['cpus']} CPUs {meta['machine']['cpu_model']}; load average "
        f"at start {meta.get('loadavg_start')}, at end {meta.get('loadavg_end')}",
    ]
    dist_headers = ["", "n", "p50", "p90", "p99", "max"]
    if "pickup" in result:
        rows = []
        for kind, p in result["pickup"].items():
            if "submit_to_task_start_ms" in p:
                rows.append(_dist_row(f"{kind}: submit -> task start (ms)", p["submit_to_task_start_ms"]))
            rows.append(_dist_row(f"{kind}: submit -> 'started' event (ms)", p["submit_to_started_event_ms"]))
            rows.append(_dist_row(f"{kind}: created_at -> started_at (ms)", p["created_to_claim_ms"]))
            rows.append(_dist_row(f"{kind}: submit HTTP call (ms)", p["submit_call_ms"]))
            rows.append(_dist_row(f"{kind}: submit -> completed persisted (ms)", p["submit_to_done_ms"]))
        parts += [
            "",
            "1. Pickup latency (sequential jobs; task start = bench_noop's own stamp, or when "
            "image_conversion opens its input)",
            _table(dist_headers, rows),
        ]
    if "latency" in result:
        parts += ["", *_latency(result["latency"])]
    if "recovery" in result:
        parts += ["", *_recovery(result["recovery"])]
    if "throughput" in result:
        bursts = dict(result["throughput"])
        on_postgres = (result.get("throughput_postgres") or {}).get("bench_noop")
        if on_postgres:
            bursts["bench_noop, PostgreSQL"] = on_postgres
        rows = [
            [
                k,
                t["jobs"],
                t["finished"],
                t["failed"] + t["submit_errors"],
                t["concurrency"],
                t["workers"],
                t["submit_per_s"],
                t["jobs_per_s"],
                t["elapsed_s"],
            ]
            for k, t in bursts.items()
        ]
        parts += [
            "",
            "2. Throughput (burst over HTTP)"
            + (
                f"; workers' WORKER_CONCURRENCY {result['meta']['concurrency']}"
                if result["meta"].get("concurrency")
                else ""
            ),
            _table(
                ["", "jobs", "done", "errors", "clients", "workers", "submit/s", "jobs/s", "seconds"], rows
            ),
        ]
        for k, t in bursts.items():
            parts.append(
                f"   CPU seconds during {k} burst: "
                + ", ".join(f"{n.split('-')[-1]} {v}" for n, v in t["cpu_seconds"].items())
            )
    if "progress" in result:
        rows = [
            [
                v["label"],
                v["jobs"],
                v["reported_per_job"],
                v["db_updates_per_job"]["p50"],
                v["lag_ms"]["p50"],
                v["lag_ms"]["p99"],
                v["lag_ms"]["max"],
                v["task_ms"]["p50"],
                v["submit_to_done_ms"]["p50"],
            ]
            for v in result["progress"]["variants"]
        ]
        parts += [
            "",
            f"3. Progress ({result['progress']['workers']} workers; lag = commit of the DB update "
            "minus the task's report)",
            _table(
                [
                    "",
                    "jobs",
                    "reported",
                    "DB updates p50",
                    "lag p50",
                    "lag p99",
                    "lag max",
                    "task ms p50",
                    "submit->done p50",
                ],
                rows,
            ),
        ]
    if "idle" in result:
        i = result["idle"]
        parts += [
            "",
            f"4. Idle cost ({i['workers']} idle workers, {i['window_s']} s window, "
            f"sweep every {i['sweep_interval_s']:g} s, {i['database']})",
            _table(
                ["", "value"],
                [
                    ["DB statements (all processes)", i["statements"]],
                    ["DB statements per minute", i["statements_per_min"]],
                    ["worker sweeps (empty claims)", i["worker_sweeps"]],
                    ["expected sweeps", i["expected_sweeps"]],
                    ["worker statements outside sweeps", i["worker_statements_outside_sweeps"]],
                    ["server statements", i["server_statements"]],
                ],
            ),
        ]
    if "polling" in result:
        p = result["polling"]
        poll = p["polling"]
        parts += [
            "",
            f"5. Polling mode (WORKER_WAKE_EVENTS=false, sweep {p['sweep_interval_s']:g} s, "
            f"{p['workers']} workers) vs events",
            _table(
                dist_headers,
                [
                    _dist_row("polling: submit -> task start (ms)", poll.get("submit_to_task_start_ms")),
                    _dist_row("polling: created_at -> started_at (ms)", poll.get("created_to_claim_ms")),
                ],
            ),
            f"   median ratio polling/events: {_fmt(p['median_ratio'])} "
            f"(events p50 {_fmt(p['events_p50_ms'])} ms)",
        ]
    if "ml_batch" in result:
        parts += ml_batch.render(result["ml_batch"], _table)
    if "plugins" in result:
        parts += ["", *_plugins(result["plugins"])]
    if result.get("empty_claims"):
        rows = [
            [
                name,
                e["workers"],
                "events" if e["wake_events"] else "polling",
                e["jobs_run"],
                e["empty_claims"],
                e["empty_per_job"],
                e["results_written_by_worker"],
            ]
            for name, e in result["empty_claims"].items()
        ]
        parts += [
            "",
            "6. Empty claims (Worker.empty_claims, logged at exit; includes start-up drains and sweeps)",
            _table(
                [
                    "cluster",
                    "workers",
                    "mode",
                    "jobs run",
                    "empty claims",
                    "per job",
                    "results unconfirmed >10 s",
                ],
                rows,
            ),
        ]
    parts += _scale(result)
    if "peers" in result:
        parts += ["", *_peers(result)]
    rows = [
        [t["target"], t["goal"], t["value"], {True: "met", False: "MISSED", None: "n/a"}[t["met"]]]
        for t in result.get("targets", [])
    ]
    parts += [
        "",
        "Targets",
        _table(["", "goal", "measured", ""], rows),
        f"(total {result['meta'].get('seconds')} s)",
    ]
    return "\n".join(parts)


def _latency(section: dict[str, Any]) -> list[str]:
    parts = [
        f"1b. Latency, step by step ({section['workers']} worker, sequential jobs; row times in whole ms)"
    ]
    for run in section["runs"]:
        rows = []
        for kind in ("bench_noop", "image_conversion"):
            data = run.get(kind) or {}
            rows += [_dist_row(f"{kind}: {label} (ms)", data.get(key)) for key, label in STEPS]
        parts += [f"   broker: {run['broker']}", _table(["", "n", "p50", "p90", "p99", "max"], rows)]
    return parts


def _recovery(section: dict[str, Any]) -> list[str]:
    parts = [
        "1c. Recovery: a long job's worker killed (-9) or stopped (SIGTERM) mid-job; seconds from "
        "the signal to the job starting on the other worker (2 workers)"
    ]
    for run in section["runs"]:
        rows = [
            _dist_row("kill -9 -> running elsewhere (s)", run["kill_seconds"]),
            _dist_row("SIGTERM -> running elsewhere (s)", run["stop_seconds"]),
        ]
        parts += [
            f"   broker: {run['broker']}; not run again: {run['not_rerun']}",
            _table(["", "n", "p50", "p90", "p99", "max"], rows),
        ]
    return parts


def _plugins(section: dict[str, Any]) -> list[str]:
    ins = section["inputs"]
    fresh = "fresh workers per plugin" if section.get("fresh_workers", True) else "workers for all plugins"
    lines = [
        f"7. Plugins ({section['workers']} {fresh}; run, pickup and persistence at p50 "
        f"over {section['jobs']} sequential jobs ({section['jobs_video']} for hls_streaming, "
        f"{section.get('jobs_large', '-')} on the large photo), jobs/s over as many submitted at once)",
        f"   inputs: photo {ins['photo']}; video {ins['video']}",
        *(f"   {kind}: {ins[kind]}" for kind in ("large_jpeg", "large_png") if kind in ins),
        f"   models: {section['models_dir']}",
    ]
    if not section.get("fresh_workers", True):
        lines.append(
            "   --quick: one pair of workers runs every plugin; RSS loaded = with every model, "
            "RSS peak = sampled during the plugin's jobs"
        )
    rows = []
    notes = []
    for r in section["plugins"]:
        name = r.get("row", r["task"])
        if "skipped" in r:
            notes.append(f"   {name}: skipped: {r['skipped']}")
            continue
        if "error" in r:
            notes.append(f"   {name}: error: {r['error']}")
            continue
        model = {"real": "real", "stand-in": "stand-in*", None: "-"}[r["model"]]
        met = {True: "met", False: "MISSED", None: "n/a"}[r["overhead_met"]]
        done = f"{r['completed']}/{r['jobs']}"
        rows.append(
            [
                name,
                r["input"],
                model,
                done,
                r["jobs_per_s"],
                r["run_ms"]["p50"],
                r["pickup_ms"]["p50"],
                r["persist_ms"]["p50"],
                r["overhead_pct"],
                met,
                r["model_load_ms"],
                r["rss_after_load_mb"],
                r["peak_rss_mb"],
                r["tools_peak_rss_mb"],
            ]
        )
        if r["failed"]:
            notes.append(f"   {name}: {r['failed']} jobs failed: {r['first_error']}")
    if rows:
        lines.append(
            _table(
                [
                    "",
                    "input",
                    "model",
                    "done",
                    "jobs/s",
                    "run ms",
                    "pickup ms",
                    "persist ms",
                    "overhead %",
                    f"<{section['target_pct']:g}%",
                    "load ms",
                    "RSS loaded MB",
                    "RSS peak MB",
                    "tools peak MB",
                ],
                rows,
            )
        )
    if any(r.get("model") == "stand-in" for r in section["plugins"]):
        notes.append(f"   * {standins.LABEL}")
    lines += notes
    lines.append(
        "   overhead = (pickup p50 + persistence p50) / run p50; run = the plugin's execute in the "
        "worker; load = first models.session() in the worker; RSS peak = workers' VmHWM, tools = "
        "ffmpeg/exiftool children, sampled"
    )
    lines += _against_references(section)
    return lines


def _against_references(section: dict[str, Any]) -> list[str]:
    """Each row's job in the plugin process beside the fastest way found to do it (issue 19)."""
    measured = [r for r in section["plugins"] if r.get("references")]
    if not measured:
        return []
    target = section.get("reference_target", 1.2)
    rows, notes = [], []
    for r in measured:
        best = next((ref for ref in r["references"] if ref["name"] == r.get("fastest")), None)
        met = {True: "met", False: "MISSED", None: "n/a"}[r.get("reference_met")]
        rows.append(
            [
                r["row"],
                r["cpu_ms"]["p50"],
                r["run_ms"]["p50"],
                r.get("plugin_peak_rss_mb"),
                r.get("plugin_job_growth_mb"),
                _kib(r.get("output_bytes")),
                best["label"] if best else "-",
                best["cpu_ms"]["p50"] if best else None,
                best["wall_ms"]["p50"] if best else None,
                _ref_memory(best),
                _kib(best.get("output_bytes")) if best else None,
                r.get("ratio_cpu"),
                r.get("ratio_wall"),
                met,
            ]
        )
        others = [f"{ref['label']} {_reference_figures(ref)}" for ref in r["references"] if ref is not best]
        if others:
            notes.append(f"   {r['row']}, also: " + "; ".join(others))
    return [
        "",
        f"   Against the fastest way found (issue 19; CPU and wall at p50 per job; "
        f"target: CPU <= {target:g}x)",
        _table(
            [
                "",
                "CPU ms",
                "wall ms",
                "peak MB",
                "job +MB",
                "out KiB",
                "fastest reference",
                "CPU ms",
                "wall ms",
                "peak MB",
                "out KiB",
                "CPU x",
                "wall x",
                f"<={target:g}x",
            ],
            rows,
        ),
        *notes,
        "   ours: CPU of the plugin process per job (its own, its children's, a persistent tool's), "
        "wall = run; peak MB = the plugin process's VmHWM during the job, job +MB = over its RSS "
        "before the job. References: tools run once per job (CPU includes starting them; peak = "
        "the process's maxrss), in-process ones after a warm-up (peak = +MB over the RSS before)",
    ]


def _kib(value: Any) -> int | None:
    return None if not isinstance(value, int) else value // 1024


def _ref_memory(ref: dict[str, Any] | None) -> str:
    if ref is None:
        return "-"
    if "peak_rss_mb" in ref:
        return _fmt(ref["peak_rss_mb"])
    return f"+{_fmt(ref.get('peak_growth_mb'))}"


def _reference_figures(ref: dict[str, Any]) -> str:
    if "missing" in ref:
        return f"missing: {ref['missing']}"
    if "error" in ref:
        return f"error: {ref['error']}"
    return (
        f"{_fmt(ref['cpu_ms']['p50'])} ms CPU, {_fmt(ref['wall_ms']['p50'])} ms wall, {_ref_memory(ref)} MB"
    )


def _peers(result: dict[str, Any]) -> list[str]:
    """Compute beside each peer, and each figure's ratio Compute / peer."""
    peers = result["peers"]
    names = [n for n in peers["describe"] if n in peers]
    lines = [
        "8. Peers, same run, same measurement points (pickup: start of the submit call -> first "
        "line of the task body; jobs/s: burst, until every job is done)"
    ]
    lines += [
        f"   {n}: {peers['describe'][n]}"
        + (f" -- skipped: {peers[n]['skipped']}" if "skipped" in peers[n] else "")
        for n in names
    ]
    live = [n for n in names if "skipped" not in peers[n]]
    headers = ["", "Compute", *live, *[f"ratio to {n}" for n in live]]
    rows = []
    for label, ours, theirs, _higher in PEER_FIGURES:
        mine = _get(result, ours)
        values = [_get(peers[n], theirs) for n in live]
        rows.append([label, mine, *values, *[ratio(mine, v) for v in values]])
    rows.extend(_cpu_rows(result, peers, live))
    lines.append(_table(headers, rows))
    lines.append(
        "   ratio = Compute / peer: above 1 is better for jobs/s, below 1 for times. Everything "
        "shares the machine with the client: compare ratios within one run, not absolute "
        "figures across runs."
    )
    return lines


def _cpu_rows(result: dict[str, Any], peers: dict[str, Any], live: list[str]) -> list[list[Any]]:
    """CPU ms per no-op job in the burst: the front (Compute's server, uvicorn) and every process."""

    def per_job(t: dict[str, Any] | None, keys: tuple[str, ...] | None) -> float | None:
        if not t or not t.get("finished"):
            return None
        cpu = {k: v for k, v in t["cpu_seconds"].items() if k != "bench client" and v is not None}
        if keys is not None:
            cpu = {k: v for k, v in cpu.items() if k in keys}
        return round(sum(cpu.values()) * 1000 / t["finished"], 3) if cpu else None

    mine = (result.get("throughput") or {}).get("bench_noop")
    front = [per_job(mine, ("server",)), *[per_job(peers[n].get("throughput"), ("web",)) for n in live]]
    total = [per_job(mine, None), *[per_job(peers[n].get("throughput"), None) for n in live]]
    return [
        ["CPU ms per no-op job, server / web", *front, *[ratio(front[0], v) for v in front[1:]]],
        ["CPU ms per no-op job, all processes", *total, *[ratio(total[0], v) for v in total[1:]]],
    ]


def _scale(result: dict[str, Any]) -> list[str]:
    parts: list[str] = []
    if "claim_scale" in result:
        c = result["claim_scale"]
        rows = [
            [
                s["table"],
                s["fill_s"],
                s["claim_ms"]["n"],
                s["claim_ms"]["p50"],
                s["claim_ms"]["p99"],
                s["plan_kind"],
            ]
            for s in c["steps"]
        ]
        parts += [
            "",
            f"9. Claim cost against the size of jobs ({c['database']}; claim_next in the "
            "benchmark's process, one claim per statement)",
            _table(["jobs table", "fill s", "claims", "claim p50 ms", "claim p99 ms", "plan"], rows),
        ]
        parts += [f"   plan, {c['steps'][-1]['table']}: " + " | ".join(c["steps"][-1]["plan"])]
    if "workers_scale" in result:
        rows = [
            [w["workers"], w["jobs"], w["submit_per_s"], w["jobs_per_s"], w["server_cpu_ms_per_job"]]
            for w in result["workers_scale"]
        ]
        parts += [
            "",
            "10. No-op burst with more workers (one cluster, workers added between bursts)",
            _table(["workers", "jobs", "submit/s", "jobs/s", "server CPU ms/job"], rows),
        ]
    if "backlog" in result:
        b = result["backlog"]
        rows = [
            [name, p["idle_mb"], p["peak_mb"], p["end_mb"], p["growth_mb"], p["samples"]]
            for name, p in b["processes"].items()
        ]
        parts += [
            "",
            f"11. Backlog: {b['submitted']:,} jobs queued with no worker (server RSS "
            f"{_fmt(b['server_idle_mb'])} -> {_fmt(b['server_after_submit_mb'])} MiB), then "
            f"drained by {b['workers']} fresh workers in {b['drain_s']} s "
            f"({_fmt(b['drain_jobs_per_s'])} jobs/s)",
            _table(["process", "idle MiB", "peak MiB", "end MiB", "end - idle", "samples"], rows),
        ]
    if "live_fanout" in result:
        f = result["live_fanout"]
        rows = [
            [
                name,
                p["changes"],
                p["server_cpu_ms_per_change"],
                p["list_jobs_ms"]["n"],
                p["list_jobs_ms"]["p50"],
                p["list_jobs_ms"]["p99"],
            ]
            for name, p in (
                ("no live view", f["no_streams"]),
                (f"{f['streams']} live views", f["with_streams"]),
            )
        ]
        parts += [
            "",
            f"12. Live views: {f['streams']} open GET /events streams (one audience) cost "
            f"{_fmt(f['fanout_cpu_ms_per_change'])} ms of server CPU per job change "
            f"({_fmt(f['fanout_cpu_us_per_stream_change'])} us per stream)",
            _table(["phase", "changes", "server CPU ms/change", "GET /jobs n", "p50 ms", "p99 ms"], rows),
        ]
    return parts
