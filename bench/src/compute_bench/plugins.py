"""Section `plugins`: each task plugin on standard inputs, run by 2 fresh workers that run only it.

Per plugin, on one server (the section's cluster), 2 workers are started with `--tasks <plugin>`
(a worker loads its model while it starts, before it comes online), then:

1. RSS after load: VmRSS of each worker once it is online;
2. warm-up: one job per worker, at once (first-call imports and caches; not counted);
3. sequential: `n` jobs, each submitted over HTTP once the previous one's completion was
   announced. Per job, from the probes (compute_bench.probes) and the job row:
   run = the plugin's `execute` in the worker, start to end; pickup = the row's created_at
   (server clock, ms) to that start; persistence = that end to the commit of the completed
   event in the server. Overhead = (pickup p50 + persistence p50) / run p50;
4. burst: `n` jobs submitted at once (4 uploads in flight); jobs/s = n / (first submit ->
   last completion announced), with the 2 workers;
5. peak RSS: VmHWM of each worker at the end (its high-water mark: load and every job), and
   the RSS of the tools it runs (ffmpeg, exiftool), sampled every SAMPLE_INTERVAL;
6. the workers are stopped, so the next plugin's figures are its own;
7. against the fastest way (issue 19): the job's CPU and peak RSS in the plugin process, from
   the probes there (sequential jobs), beside each reference of the row (compute_bench.references:
   vipsthumbnail, cwebp, vips, exiftool one-shot and -stay_open, Pillow's draft path ...) run
   on the same input as many times, with the ratio ours / the fastest (least CPU).

A task can have several rows (`Plugin.row`): image_conversion JPEG->PNG, PNG->JPEG and
JPEG->WebP on the 12 MP photo; media_thumbnail on the 12 MP and 1080p photos and the video.

Model load time is measured in the worker: the first `models.session()` of the file, i.e.
ONNX Runtime building its session from the file plus the input check (the onnxruntime import,
paid once per process, is reported apart).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compute.config import load_settings
from compute.plugins.models import MODELS
from compute.plugins.registry import installed_tasks, unavailable_reason
from compute_bench import references, standins
from compute_bench.client import Submitter
from compute_bench.cluster import Cluster, ClusterError
from compute_bench.inputs import Inputs
from compute_bench.stats import descendants, status_kb, summary

NS_PER_MS = 1_000_000
#: Overhead target: pickup + persistence at p50, in % of the plugin's run time at p50.
OVERHEAD_TARGET_PCT = 5.0
#: Issue 19's target: a job's CPU in the plugin process at most this times the fastest reference's.
REFERENCE_TARGET = 1.2
#: Runs of each reference (at most as many as the row's sequential jobs).
REFERENCE_RUNS = 10
WORKERS = 2
SAMPLE_INTERVAL = 0.05  # s, RSS of workers and their tools
BURST_UPLOADS = 4  # uploads in flight during the burst
DONE_TIMEOUT = 900.0  # s, one job (hls_streaming of a long video on a busy machine)
GAP = 0.005


@dataclass(frozen=True)
class Plugin:
    task: str
    #: "photo" (the 1920x1080 JPEG), "large_jpeg" / "large_png" (the 12 MP photo) or "video"
    input: str
    form: dict[str, str]
    #: Warm-up jobs (one per worker), not counted.
    warmup: int = WORKERS
    video_sizes: bool = False
    #: The row's name, when a task has several rows (e.g. "image_conversion jpeg->png").
    label: str = ""
    #: A 12 MP input: `plugins_large` jobs instead of `plugins`.
    large: bool = False
    #: What does the same job fastest (compute_bench.references), run on the same input.
    references: tuple[str, ...] = ()
    #: The output's (width, height) or box, for references that take one.
    size: tuple[int, int] = (0, 0)
    #: The task_output field naming the output file, whose size is reported.
    output_field: str = ""

    @property
    def row(self) -> str:
        return self.label or self.task


THUMBNAIL_REFS = ("vipsthumbnail", "pillow_thumbnail")
PLUGINS: tuple[Plugin, ...] = (
    Plugin(
        "image_conversion",
        "large_jpeg",
        {"format": "png"},
        label="image_conversion jpeg->png",
        large=True,
        references=("vips_png", "pillow_png"),
        output_field="output_path",
    ),
    Plugin(
        "image_conversion",
        "large_png",
        {"format": "jpg", "quality": "85"},
        label="image_conversion png->jpeg",
        large=True,
        references=("vips_jpeg", "pillow_jpeg"),
        output_field="output_path",
    ),
    Plugin(
        "image_conversion",
        "large_jpeg",
        {"format": "webp", "quality": "85"},
        label="image_conversion jpeg->webp",
        large=True,
        references=("cwebp", "vips_webp", "pillow_webp"),
        output_field="output_path",
    ),
    Plugin(
        "image_resize",
        "photo",
        {"width": "640", "height": "360", "maintain_aspect_ratio": "true"},
        references=("vipsthumbnail", "pillow_resize"),
        size=(640, 360),
        output_field="output_path",
    ),
    Plugin(
        "image_resize",
        "large_jpeg",
        {"width": "1920", "height": "1080", "maintain_aspect_ratio": "true"},
        label="image_resize 12mp",
        large=True,
        references=("vipsthumbnail", "pillow_resize"),
        size=(1920, 1080),
        output_field="output_path",
    ),
    Plugin("hash", "large_jpeg", {"algorithm": "sha512"}, large=True, references=("pillow_hashes",)),
    Plugin("exif", "large_jpeg", {}, references=("exiftool", "exiftool_stay_open")),
    Plugin(
        "media_thumbnail",
        "large_jpeg",
        {},
        label="media_thumbnail 12mp",
        references=THUMBNAIL_REFS,
        size=(256, 256),
        output_field="thumbnail_path",
    ),
    Plugin(
        "media_thumbnail",
        "photo",
        {},
        label="media_thumbnail 1080p",
        references=THUMBNAIL_REFS,
        size=(256, 256),
        output_field="thumbnail_path",
    ),
    Plugin("media_thumbnail", "video", {}, label="media_thumbnail video"),
    # A run is seconds of ffmpeg: a warm-up would double the section's time for noise.
    Plugin("hls_streaming", "video", {}, warmup=0, video_sizes=True),
    Plugin("clip_embedding", "photo", {}),
    Plugin("dino_embedding", "photo", {}),
    Plugin("face_detection", "photo", {}),
    Plugin("face_embedding", "photo", {}),
)
NAMES = tuple(dict.fromkeys(p.task for p in PLUGINS))


@dataclass
class Plan:
    plugin: Plugin
    #: None (no model), "real" or "stand-in"
    model: str | None = None
    skipped: str = ""


def user_models_dir() -> Path:
    """The models folder compute-worker would use in the benchmark's own environment."""
    return load_settings(os.environ).models_dir


def plan(
    inputs: Inputs, models_dir: Path, stand_in_dir: Path | None, only: tuple[str, ...] = NAMES
) -> list[Plan]:
    """What to run (the rows of the tasks or rows named in `only`), and why a row is skipped. With
    `stand_in_dir`, missing models get stand-ins there and present ones are linked in, so the
    workers read that folder."""
    installed = installed_tasks()
    plans = []
    for plugin in PLUGINS:
        if plugin.task not in only and plugin.row not in only:
            continue
        p = Plan(plugin)
        plans.append(p)
        spec = MODELS.get(plugin.task)
        if plugin.input == "video" and inputs.video is None:
            p.skipped = f"no standard video ({inputs.video_problem})"
        elif inputs.path(plugin.input) is None:
            p.skipped = f"no {plugin.input} input made"
        elif plugin.task not in installed:
            p.skipped = "not installed"
        elif spec is None:
            reason = unavailable_reason(installed[plugin.task])  # tools only: no model is loaded
            if reason:
                p.skipped = f"cannot run here: {reason}"
        elif (models_dir / spec.filename).is_file():
            p.model = "real"
            if stand_in_dir is not None:
                _link(models_dir / spec.filename, stand_in_dir / spec.filename)
        elif stand_in_dir is not None:
            try:
                standins.write(plugin.task, stand_in_dir)
                p.model = "stand-in"
            except ImportError as exc:
                p.skipped = f"{spec.filename} missing and no stand-in can be built ({exc.name} not installed)"
        else:
            p.skipped = f"{spec.filename} missing (see compute-models)"
    return plans


def _link(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        target.unlink()
    target.symlink_to(source.resolve())


def _exe(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return ""


class RssSampler:
    """Peak RSS of the workers and, apart, of the programs they run (summed per worker).

    A child still running the worker's own executable is a fork (or vfork) not yet turned into
    the tool: its RSS is the worker's, shared, and is left out."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.exes = {pid: _exe(pid) for pid in pids}
        self.worker_peak_kb = 0
        self.tools_peak_kb = 0
        self.samples = 0
        self._stop = asyncio.Event()

    async def run(self) -> None:
        while not self._stop.is_set():
            for pid in self.pids:
                self.worker_peak_kb = max(self.worker_peak_kb, status_kb(pid) or 0)
                tools = sum(
                    status_kb(child) or 0 for child in descendants(pid) if _exe(child) != self.exes[pid]
                )
                self.tools_peak_kb = max(self.tools_peak_kb, tools)
            self.samples += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), SAMPLE_INTERVAL)

    def stop(self) -> None:
        self._stop.set()


def _mb(kb: int | float | None) -> float | None:
    return None if kb is None else round(kb / 1024, 1)


MIME = {"photo": "image/jpeg", "large_jpeg": "image/jpeg", "large_png": "image/png", "video": "video/mp4"}


class Source:
    """One plugin's input, read once, uploaded as CL Server clients upload it."""

    def __init__(self, plugin: Plugin, inputs: Inputs) -> None:
        path = inputs.path(plugin.input)
        assert path is not None
        self.path = path
        self.task = plugin.task
        self.form = plugin.form
        self.name = path.name
        self.mime = MIME[plugin.input]
        self.content = path.read_bytes()

    async def submit(self, sub: Submitter) -> str:
        return await sub.upload(self.task, self.form, self.name, self.content, self.mime)


async def _at_once(cluster: Cluster, sub: Submitter, source: Source, n: int) -> tuple[list[str], float]:
    """n jobs submitted at once; their ids and the seconds from the first submit to the last done."""
    assert cluster.observer is not None
    ids: list[str] = []
    remaining = iter(range(n))
    t0 = time.time_ns()

    async def uploader() -> None:
        for _ in remaining:
            ids.append(await source.submit(sub))

    await asyncio.gather(*(uploader() for _ in range(min(n, BURST_UPLOADS))))
    done = await asyncio.gather(*(cluster.observer.wait_done(j, DONE_TIMEOUT) for j in ids))
    ends = [d for d in done if d is not None]
    return ids, (max(ends) - t0) / 1e9 if ends else float("nan")


async def _one_by_one(cluster: Cluster, sub: Submitter, source: Source, n: int) -> list[str]:
    assert cluster.observer is not None
    ids = []
    for _ in range(n):
        job_id = await source.submit(sub)
        await cluster.observer.wait_done(job_id, DONE_TIMEOUT)
        ids.append(job_id)
        await asyncio.sleep(GAP)
    return ids


async def _stamps(cluster: Cluster, key: str, ids: list[str], timeout: float = 3.0) -> dict[str, Any]:
    """The probes' `key` stamps ("runs", "commits") of these jobs, from every process; waits for
    them, as a running process rewrites its probe file only every 0.5 s."""
    deadline = time.monotonic() + timeout
    while True:
        found: dict[str, Any] = {}
        for p in cluster.read_probes():
            found.update(p.get(key) or {})
        if all(j in found for j in ids) or time.monotonic() > deadline:
            return found
        await asyncio.sleep(0.2)


@dataclass
class Workers:
    ids: list[str]
    pids: list[int]
    #: VmRSS once online (models loaded), KiB
    loaded_kb: list[int]
    start_s: float
    #: False: one pair runs every plugin (--quick), so RSS is not any one plugin's
    fresh: bool


async def start_workers(cluster: Cluster, tasks: str, fresh: bool) -> Workers:
    t0 = time.monotonic()
    ids = await cluster.add_workers(WORKERS, tasks)
    start_s = time.monotonic() - t0
    pids = [cluster.workers[w].pid for w in ids]
    return Workers(ids, pids, [status_kb(pid) or 0 for pid in pids], round(start_s, 2), fresh)


async def measure(
    cluster: Cluster, sub: Submitter, p: Plan, inputs: Inputs, n: int, shared: Workers | None = None
) -> dict[str, Any]:
    plugin = p.plugin
    source = Source(plugin, inputs)
    load_before = _loadavg()
    workers = shared or await start_workers(cluster, plugin.task, fresh=True)
    pids = workers.pids
    sampler = RssSampler(pids)
    sampling = asyncio.create_task(sampler.run())
    try:
        if plugin.warmup:
            await _at_once(cluster, sub, source, plugin.warmup)
        sequential = await _one_by_one(cluster, sub, source, n)
        burst, burst_s = await _at_once(cluster, sub, source, n)
    finally:
        sampler.stop()
        await sampling
        hwm_kb = [status_kb(pid, "VmHWM") or 0 for pid in pids]
        if shared is None:
            await cluster.stop_workers(workers.ids)
    runs = await _stamps(cluster, "runs", sequential + burst)
    commits = await _stamps(cluster, "commits", sequential + burst)
    in_plugin_process = await _stamps(cluster, "jobs", sequential + burst)
    probes = [s for s in cluster.read_probes() if s.get("role") == "worker" and s.get("pid") in pids]
    rows = cluster.rows(sequential + burst)

    def per_job(job_ids: list[str]) -> dict[str, list[float | None]]:
        out: dict[str, list[float | None]] = {"run": [], "pickup": [], "persist": [], "claim": []}
        for j in job_ids:
            start, end = runs.get(j) or (None, None)
            row = rows.get(j, {})
            commit = commits.get(j)
            out["run"].append(None if start is None or end is None else (end - start) / NS_PER_MS)
            out["pickup"].append(
                None
                if start is None or row.get("created_at") is None
                else start / NS_PER_MS - row["created_at"]
            )
            out["persist"].append(None if end is None or commit is None else (commit - end) / NS_PER_MS)
            out["claim"].append(
                None if row.get("started_at") is None else row["started_at"] - row["created_at"]
            )
        return out

    seq = per_job(sequential)
    loaded = per_job(burst)
    run, pickup, persist = summary(seq["run"]), summary(seq["pickup"]), summary(seq["persist"])
    overhead = None
    if run["p50"] and pickup["p50"] is not None and persist["p50"] is not None:
        overhead = round((pickup["p50"] + persist["p50"]) / run["p50"] * 100, 2)
    statuses = [rows.get(j, {}).get("status") for j in sequential + burst]
    completed = sum(1 for s in statuses if s == "completed")
    spec = MODELS.get(plugin.task)
    first_output = next(
        (r.get("task_output") for j in sequential if (r := rows.get(j, {})).get("status") == "completed"),
        None,
    )
    loads = [
        m
        for s in probes
        for name, m in (s.get("models") or {}).items()
        if spec is not None and name == spec.filename
    ]
    result: dict[str, Any] = {
        "task": plugin.task,
        "row": plugin.row,
        "input": plugin.input,
        "form": plugin.form,
        "model": p.model,
        "note": standins.LABEL if p.model == "stand-in" else "",
        "workers": WORKERS,
        "warmup": plugin.warmup,
        "jobs": len(sequential) + len(burst),
        "sequential": len(sequential),
        "burst": len(burst),
        "completed": completed,
        "failed": len(statuses) - completed,
        "first_error": _first_error(cluster, sequential + burst),
        "jobs_per_s": round(len(burst) / burst_s, 2) if burst and burst_s > 0 else None,
        "burst_s": round(burst_s, 3),
        "run_ms": run,
        "pickup_ms": pickup,
        "persist_ms": persist,
        "created_to_claim_ms": summary(seq["claim"]),
        "run_under_load_ms": summary(loaded["run"]),
        "overhead_pct": overhead,
        "overhead_met": None if overhead is None else overhead < OVERHEAD_TARGET_PCT,
        "model_load_ms": _mean([m["load_ms"] for m in loads]),
        "onnxruntime_import_ms": _mean([m["onnxruntime_import_ms"] for m in loads]),
        "fresh_workers": workers.fresh,
        "worker_start_s": workers.start_s,
        "rss_after_load_mb": _mb(max(workers.loaded_kb)),
        # Shared workers: VmHWM is every plugin's so far; the samples are this plugin's.
        "peak_rss_mb": _mb(max(hwm_kb) if workers.fresh else sampler.worker_peak_kb),
        "peak_rss_sampled_mb": _mb(sampler.worker_peak_kb),
        "tools_peak_rss_mb": _mb(sampler.tools_peak_kb),
        "rss_samples": sampler.samples,
        "loadavg_1min": [load_before, _loadavg()],
        "output": _scalars(first_output),
    }
    result.update(_against_references(cluster, plugin, source, sequential, burst, in_plugin_process, rows))
    if plugin.references:
        result["references"] = await asyncio.to_thread(
            _run_references, plugin, source, cluster.dir / "references", min(len(sequential), REFERENCE_RUNS)
        )
        result.update(_ratios(result))
    return result


def _against_references(
    cluster: Cluster,
    plugin: Plugin,
    source: Source,
    sequential: list[str],
    burst: list[str],
    figures: dict[str, Any],
    rows: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    """Our side of the comparison, from the plugin process's own figures per job: CPU (sequential
    jobs: the burst's share the machine), peak RSS and its growth over the RSS before the job."""
    seq = [figures[j] for j in sequential if j in figures]
    every = [figures[j] for j in sequential + burst if j in figures]
    out: dict[str, Any] = {
        "cpu_ms": summary(f["cpu_ns"] / NS_PER_MS for f in seq),
        "plugin_peak_rss_mb": _mb(max((f["peak_rss_kb"] for f in every), default=None)),
        "plugin_job_growth_mb": _mb(
            max((f["peak_rss_kb"] - f["rss_before_kb"] for f in every), default=None)
        ),
        "input_bytes": len(source.content),
    }
    done = next((j for j in sequential if rows.get(j, {}).get("status") == "completed"), None)
    output = (rows[done].get("task_output") or {}) if done else {}
    named = output.get(plugin.output_field) if plugin.output_field else None
    if isinstance(named, str):
        path = cluster.job_file(str(done), named)
        out["output_bytes"] = path.stat().st_size if path.is_file() else None
    return out


def _run_references(plugin: Plugin, source: Source, folder: Path, runs: int) -> list[dict[str, Any]]:
    return [
        references.run(name, source.path, folder, max(1, runs), plugin.size) for name in plugin.references
    ]


def _ratios(result: dict[str, Any]) -> dict[str, Any]:
    """Ours / the fastest reference (least CPU), for CPU and wall time at p50."""
    best = references.fastest(result["references"])
    ours_cpu, ours_wall = result["cpu_ms"]["p50"], result["run_ms"]["p50"]
    if best is None or ours_cpu is None:
        return {"fastest": None, "ratio_cpu": None, "ratio_wall": None, "reference_met": None}
    ratio_cpu = round(ours_cpu / best["cpu_ms"]["p50"], 2) if best["cpu_ms"]["p50"] else None
    ratio_wall = (
        round(ours_wall / best["wall_ms"]["p50"], 2) if ours_wall and best["wall_ms"]["p50"] else None
    )
    return {
        "fastest": best["name"],
        "ratio_cpu": ratio_cpu,
        "ratio_wall": ratio_wall,
        "reference_met": None if ratio_cpu is None else ratio_cpu <= REFERENCE_TARGET,
    }


def _loadavg() -> float | None:
    """The 1-minute load average: other work on the machine skews a plugin's figures."""
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _mean(values: list[float]) -> float | None:
    return round(sum(values) / len(values), 1) if values else None


def _scalars(output: dict[str, Any] | None) -> dict[str, Any]:
    """The task output's short scalar fields, to show the jobs did their work."""
    if not isinstance(output, dict):
        return {}
    return {
        k: v
        for k, v in output.items()
        if isinstance(v, int | float | bool) or (isinstance(v, str) and len(v) <= 40)
    }


def _first_error(cluster: Cluster, ids: list[str]) -> str | None:
    if not ids:
        return None
    marks = ", ".join(f"'{j}'" for j in ids)  # uuids the server made
    error = cluster.scalar(
        f"SELECT error_message FROM jobs WHERE job_id IN ({marks}) AND error_message IS NOT NULL LIMIT 1"
    )
    return None if error is None else str(error)


def skipped_row(p: Plan) -> dict[str, Any]:
    return {"task": p.plugin.task, "row": p.plugin.row, "input": p.plugin.input, "skipped": p.skipped}


async def run_all(
    cluster: Cluster,
    sub: Submitter,
    plans: list[Plan],
    inputs: Inputs,
    n: int,
    n_video: int,
    n_large: int,
    fresh: bool = True,
) -> list[dict[str, Any]]:
    """Every plan in turn. fresh: 2 new workers per plugin; else one pair runs them all (--quick:
    6-8 s of worker start-up per plugin on a busy 2-core machine is most of a smoke run)."""
    shared = None
    if not fresh:
        tasks = ",".join(p.plugin.task for p in plans if not p.skipped)
        shared = await start_workers(cluster, tasks, fresh=False)
    results = []
    try:
        for p in plans:
            if p.skipped:
                results.append(skipped_row(p))
                continue
            jobs = n_video if p.plugin.video_sizes else n_large if p.plugin.large else n
            try:
                results.append(await measure(cluster, sub, p, inputs, jobs, shared))
            except ClusterError as exc:  # a model file that does not load: the worker refuses to start
                results.append(
                    {
                        "task": p.plugin.task,
                        "row": p.plugin.row,
                        "input": p.plugin.input,
                        "model": p.model,
                        "error": str(exc).splitlines()[-1][:300] if str(exc) else "ClusterError",
                    }
                )
    finally:
        if shared is not None:
            await cluster.stop_workers(shared.ids)
    return results
