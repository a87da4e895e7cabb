"""Section `ml_batch` (issue 19 item 2): the embedding tasks one job at a time and in batches of 8.

No real weights are on this machine, so the section has two kinds of stand-ins and measures
what each can tell:

1. plugin: clip_embedding and dino_embedding on the standard 1920x1080 photo, face_embedding on
   a 200x200 crop of it, `jobs` jobs each, with the tiny stand-in models (compute_bench.standins)
   exported with a dynamic batch. In this process, through the plugin's `execute_batch`: one job
   per call, then 8 per call, in alternating rounds (the least disturbed round of each counts);
   jobs/s (wall) and CPU ms per job (every thread of this process, ONNX Runtime's included).
   A tiny model costs next to nothing, so this is the pre- and post-processing (decode, resize,
   normalise, save) and what a call costs, which batching does not make cheaper per image.
2. network: stand-ins with the real networks' layer shapes and random weights
   (compute_bench.large_standins: ViT-B/32, DINOv2 ViT-S/14 with `layers` of their 12 layers,
   ArcFace IResNet-50 in full) run by ONNX Runtime at batch 1 and 8 with the plugin process's
   session options (threads that do not spin: compute.plugins.models.session_options), and at
   batch 1 with ONNX Runtime's defaults: CPU and wall ms per image, scaled to the real depth.
   With row 1's pre- and post-processing, what a real job would cost at each batch size, and
   the gain.
3. service: `jobs` clip_embedding jobs (the stand-in of row 1) queued for one worker started
   with `--batch clip_embedding=1`, then one with `=8`, in alternating rounds: the task is
   paused while they are uploaded, and jobs/s counts from its resume to the last completion the
   server announces (claims, events, results through the broker and the database, as a library
   import meets them), and the CPU the server and the worker spent over that window (each with
   its children: broker, plugin process), per job. The batches the worker ran, from its log.

CPU time is the figure to compare on a loaded machine: wall time there includes waiting for a
core.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from compute_bench import large_standins, standins
from compute_bench.stats import tree_cpu_seconds

if TYPE_CHECKING:
    from compute_bench.client import Submitter
    from compute_bench.cluster import Cluster

BATCH = 8
#: Rounds of each batch size, alternating (the least disturbed counts).
ROUNDS = 2
#: Which large stand-in stands for each task's real network.
NETWORK_OF = {
    "clip_embedding": "ViT-B/32 (CLIP)",
    "dino_embedding": "DINOv2 ViT-S/14",
    "face_embedding": "ArcFace IResNet-50",
}
TASKS = tuple(NETWORK_OF)


@dataclass(frozen=True)
class Timed:
    wall_s: float
    cpu_s: float


async def _timed(run: Callable[[], Awaitable[None]]) -> Timed:
    cpu, wall = time.process_time(), time.perf_counter()
    await run()
    return Timed(time.perf_counter() - wall, time.process_time() - cpu)


#: Uploads in flight while a service round's jobs are queued.
UPLOADS = 4
#: Seconds a service round's job may take to be announced done.
DONE_TIMEOUT = 300.0
SERVICE_TASK = "clip_embedding"
_STARTED = re.compile(r"job (\S+) \(clip_embedding, attempt \d+\): started(?: in a batch of (\d+))?")


def face_crop(photo: Path, target: Path) -> Path:
    """A 200x200 crop of the standard photo around the astronaut's face (its upper middle)."""
    with Image.open(photo) as img:
        left = img.width // 2 - 100
        img.crop((left, 80, left + 200, 280)).save(target, format="JPEG", quality=90)
    return target


async def plugin_batching(folder: Path, photo: Path, jobs: int) -> dict[str, Any]:
    """Row 1: each embedding plugin in this process, `jobs` jobs at batch 1 and at batch 8."""
    from cl_ml_tools import Job

    from compute.plugins import environment, models
    from compute.plugins.clip_embedding.task import ClipEmbeddingTask
    from compute.plugins.dino_embedding.task import DinoEmbeddingTask
    from compute.plugins.face_embedding.task import FaceEmbeddingTask

    models_dir = folder / "models"
    for task in TASKS:
        standins.write(task, models_dir, dynamic_batch=True)
    face = face_crop(photo, folder / "face.jpg")
    env = environment.PluginEnvironment(storage_dir=folder / "storage", models_dir=models_dir)
    saved = environment.replace_current(env)
    models.forget()
    out: dict[str, Any] = {}
    try:
        for plugin in (ClipEmbeddingTask(), DinoEmbeddingTask(), FaceEmbeddingTask()):
            source = face if plugin.name == "face_embedding" else photo
            assert plugin.batchable(), f"{plugin.name}: the stand-in should take a batch"

            def batch(n: int, plugin: Any = plugin, source: Path = source) -> list[Any]:
                made = []
                for _ in range(n):
                    job_id = str(uuid.uuid4())
                    upload = env.job_dir(job_id) / "input" / source.name
                    upload.parent.mkdir(parents=True)
                    shutil.copyfile(source, upload)
                    params = plugin.params(
                        input_path=f"input/{source.name}", output_path=f"output/{plugin.name}.npy"
                    )
                    job = Job(job_id=job_id, task_type=plugin.name, params=params.model_dump())
                    made.append((job, params, lambda _p: None))
                return made

            await plugin.execute_batch(batch(1))  # first-call costs, not counted
            by_size: dict[int, list[Timed]] = {1: [], BATCH: []}
            for _ in range(ROUNDS):
                for size in (1, BATCH):
                    calls = [batch(size) for _ in range(jobs // size)]

                    async def run(calls: list[list[Any]] = calls, plugin: Any = plugin) -> None:
                        for call in calls:
                            results = await plugin.execute_batch(call)
                            assert all(r["status"] == "ok" for r in results), results

                    by_size[size].append(await _timed(run))
            shutil.rmtree(env.storage_dir / "jobs", ignore_errors=True)
            out[plugin.name] = {
                "input": "200x200 crop" if plugin.name == "face_embedding" else "1920x1080 photo",
                **{f"batch_{size}": _per_job(runs, jobs) for size, runs in by_size.items()},
            }
            row = out[plugin.name]
            row["gain"] = _ratio(row[f"batch_{BATCH}"]["jobs_per_s"], row["batch_1"]["jobs_per_s"])
    finally:
        environment.replace_current(saved)
        models.forget()
    return out


async def service_batching(
    cluster: Cluster, sub: Submitter, photo: Path, jobs: int, *, quick: bool = False
) -> dict[str, Any]:
    """Row 3: `jobs` queued clip_embedding jobs through the service, one worker at batch 1 and
    at batch 8 (`cluster`'s models: the stand-ins)."""
    content = await asyncio.to_thread(photo.read_bytes)
    rounds: dict[int, list[dict[str, Any]]] = {1: [], BATCH: []}
    for _ in range(1 if quick else ROUNDS):
        for size in (1, BATCH):
            rounds[size].append(await _service_round(cluster, sub, content, photo.name, jobs, size))
    out: dict[str, Any] = {}
    for size, runs in rounds.items():
        best = max(runs, key=lambda r: r["jobs_per_s"])
        out[f"batch_{size}"] = best
    out["gain"] = _ratio(out[f"batch_{BATCH}"]["jobs_per_s"], out["batch_1"]["jobs_per_s"])
    return out


async def _service_round(
    cluster: Cluster, sub: Submitter, content: bytes, name: str, jobs: int, size: int
) -> dict[str, Any]:
    (worker_id,) = await cluster.add_workers(1, SERVICE_TASK, ["--batch", f"{SERVICE_TASK}={size}"])
    try:
        await _burst(cluster, sub, content, name, BATCH)  # the model's first calls, not counted
        await _admin(sub, "pause")
        ids = await _burst(cluster, sub, content, name, jobs, wait=False)
        assert cluster.server is not None and cluster.observer is not None
        pids = {"server": cluster.server.pid, "worker": cluster.workers[worker_id].pid}
        cpu_before = {role: tree_cpu_seconds(pid) or 0.0 for role, pid in pids.items()}
        t0 = time.time_ns()
        await _admin(sub, "resume")
        done = [await cluster.observer.wait_done(job_id, DONE_TIMEOUT) for job_id in ids]
        cpu = {role: (tree_cpu_seconds(pid) or 0.0) - cpu_before[role] for role, pid in pids.items()}
    finally:
        await cluster.stop_workers([worker_id])
    ends = [d for d in done if d is not None]
    assert len(ends) == len(ids), f"{len(ids) - len(ends)} of {len(ids)} jobs not done"
    elapsed = (max(ends) - t0) / 1e9
    log = await asyncio.to_thread(cluster.deployment.log, worker_id)
    return {
        "jobs": len(ids),
        "elapsed_s": round(elapsed, 2),
        "jobs_per_s": round(len(ids) / elapsed, 1),
        **{f"{role}_cpu_ms_per_job": round(s * 1000 / len(ids), 1) for role, s in cpu.items()},
        "batches": _batches(log, set(ids)),
    }


async def _burst(
    cluster: Cluster, sub: Submitter, content: bytes, name: str, n: int, wait: bool = True
) -> list[str]:
    ids: list[str] = []

    async def uploader(count: int) -> None:
        for _ in range(count):
            ids.append(await sub.upload(SERVICE_TASK, {}, name, content, "image/jpeg"))

    share = [n // UPLOADS + (1 if i < n % UPLOADS else 0) for i in range(UPLOADS)]
    await asyncio.gather(*(uploader(count) for count in share if count))
    if wait:
        assert cluster.observer is not None
        for job_id in ids:
            await cluster.observer.wait_done(job_id, DONE_TIMEOUT)
    return ids


async def _admin(sub: Submitter, action: str) -> None:
    async with sub.session.post(f"{sub.base_url}/admin/tasks/{SERVICE_TASK}/{action}") as response:
        assert response.status == 200, await response.text()


def _batches(log: str, ids: set[str]) -> float | None:
    """How many plugin calls ran the jobs `ids`, from the worker's "started" lines (a job of a
    batch of k counts 1/k)."""
    calls = 0.0
    for found in _STARTED.finditer(log):
        if found.group(1) in ids:
            calls += 1 / int(found.group(2) or 1)
    return round(calls, 1) if calls else None


def _per_job(runs: list[Timed], jobs: int) -> dict[str, float]:
    best = min(runs, key=lambda r: r.wall_s)
    return {
        "jobs_per_s": round(jobs / best.wall_s, 1),
        "wall_ms_per_job": round(best.wall_s * 1000 / jobs, 2),
        "cpu_ms_per_job": round(min(r.cpu_s for r in runs) * 1000 / jobs, 2),
    }


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a and b else None


def network_batching(folder: Path, layers: int, *, quick: bool = False) -> dict[str, Any]:
    """Row 2: the large stand-ins at batch 1 and 8, ms per image (real depth), with the plugin
    process's session options; and at batch 1 with ONNX Runtime's defaults (spinning threads)."""
    import onnxruntime as ort

    from compute.plugins.models import session_options

    out: dict[str, Any] = {}
    rounds = 1 if quick else ROUNDS
    for model in large_standins.build_all(folder, layers, quick=quick):
        ours = ort.InferenceSession(str(model.path), session_options(), providers=["CPUExecutionProvider"])
        default = ort.InferenceSession(str(model.path), providers=["CPUExecutionProvider"])
        name = ours.get_inputs()[0].name
        inputs = {
            size: np.random.default_rng(size).random((size, *model.image), dtype=np.float32)
            for size in (1, BATCH)
        }
        plan = {"batch_1": (ours, 1), f"batch_{BATCH}": (ours, BATCH), "batch_1_spinning": (default, 1)}
        for session, size in plan.values():
            session.run(None, {name: inputs[size]})  # first-run allocations, not counted
        timed: dict[str, list[Timed]] = {key: [] for key in plan}
        for _ in range(rounds):
            for key, (session, size) in plan.items():
                cpu, wall = time.process_time(), time.perf_counter()
                for _ in range(BATCH // size):  # as many images at each size
                    session.run(None, {name: inputs[size]})
                timed[key].append(Timed(time.perf_counter() - wall, time.process_time() - cpu))
        del ours, default
        model.path.unlink()
        row: dict[str, Any] = {
            "gflops_per_image": round(model.flops * model.scale / 1e9, 1),
            "params_m": round(model.params / 1e6, 1),
            "measured_layers": ("1 block a stage" if quick else "all")
            if model.scale == 1
            else f"{layers} of 12",
        }
        for key, runs in timed.items():
            row[key] = {
                "cpu_ms_per_image": round(min(t.cpu_s for t in runs) * 1000 / BATCH * model.scale, 1),
                "wall_ms_per_image": round(min(t.wall_s for t in runs) * 1000 / BATCH * model.scale, 1),
            }
        row["gain"] = _ratio(row["batch_1"]["cpu_ms_per_image"], row[f"batch_{BATCH}"]["cpu_ms_per_image"])
        out[model.name] = row
    return out


def real_estimate(plugin: dict[str, Any], network: dict[str, Any]) -> dict[str, Any]:
    """Per task: CPU ms a real job would take at batch 1 and 8 (the plugin's pre- and
    post-processing at that batch size, measured with the tiny stand-in, plus the real network's
    share), and the gain."""
    out: dict[str, Any] = {}
    for task, net_name in NETWORK_OF.items():
        if task not in plugin or net_name not in network:
            continue
        row: dict[str, Any] = {"network": net_name}
        for key in ("batch_1", f"batch_{BATCH}"):
            row[key] = {
                "cpu_ms_per_job": round(
                    plugin[task][key]["cpu_ms_per_job"] + network[net_name][key]["cpu_ms_per_image"], 1
                )
            }
        row["gain"] = _ratio(row["batch_1"]["cpu_ms_per_job"], row[f"batch_{BATCH}"]["cpu_ms_per_job"])
        out[task] = row
    return out


def render(section: dict[str, Any], table: Callable[[list[str], list[list[Any]]], str]) -> list[str]:
    parts = [
        "",
        f"ML batches (issue 19 item 2): batch 1 against batch {BATCH}; "
        f"{section['jobs']} jobs per plugin figure",
    ]
    plugin = section.get("plugin") or {}
    if plugin:
        rows = [
            [
                task,
                r["input"],
                r["batch_1"]["jobs_per_s"],
                r[f"batch_{BATCH}"]["jobs_per_s"],
                r["gain"],
                r["batch_1"]["cpu_ms_per_job"],
                r[f"batch_{BATCH}"]["cpu_ms_per_job"],
            ]
            for task, r in plugin.items()
        ]
        parts += [
            "   plugin, tiny stand-in models (pre/post-processing and calls, no real network), in process",
            table(
                ["", "input", "jobs/s b1", f"b{BATCH}", "gain", "CPU ms/job b1", f"b{BATCH}"],
                rows,
            ),
        ]
    network = section.get("network") or {}
    if network:
        rows = [
            [
                name,
                r["gflops_per_image"],
                r["measured_layers"],
                r["batch_1"]["cpu_ms_per_image"],
                r[f"batch_{BATCH}"]["cpu_ms_per_image"],
                r["gain"],
                r["batch_1"]["wall_ms_per_image"],
                r[f"batch_{BATCH}"]["wall_ms_per_image"],
                r["batch_1_spinning"]["cpu_ms_per_image"],
                r["batch_1_spinning"]["wall_ms_per_image"],
            ]
            for name, r in network.items()
        ]
        parts += [
            "   networks: real layer shapes, random weights, ONNX Runtime CPU (ms per image at full depth)",
            table(
                [
                    "",
                    "GFLOPs/img",
                    "layers run",
                    "CPU ms b1",
                    f"CPU ms b{BATCH}",
                    "gain",
                    "wall ms b1",
                    f"wall ms b{BATCH}",
                    "spinning: CPU b1",
                    "wall b1",
                ],
                rows,
            ),
        ]
    estimate = section.get("estimate") or {}
    if estimate:
        b1, b8 = "batch_1", f"batch_{BATCH}"
        rows = [
            [task, r["network"], r[b1]["cpu_ms_per_job"], r[b8]["cpu_ms_per_job"], r["gain"]]
            for task, r in estimate.items()
        ]
        parts += [
            "   a real job's CPU, estimated (plugin row + network row)",
            table(["", "network", "CPU ms/job b1", f"CPU ms/job b{BATCH}", "gain"], rows),
        ]
    service = section.get("service") or {}
    if service:
        rows = [
            [
                k,
                r["jobs"],
                r["jobs_per_s"],
                r["elapsed_s"],
                r.get("server_cpu_ms_per_job"),
                r.get("worker_cpu_ms_per_job"),
                r.get("batches"),
            ]
            for k, r in service.items()
            if isinstance(r, dict)
        ]
        parts += [
            f"   service: one worker, jobs queued then resumed (clip_embedding, tiny stand-in); "
            f"gain {service.get('gain')}",
            table(
                ["", "jobs", "jobs/s", "seconds", "server CPU ms/job", "worker CPU ms/job", "plugin calls"],
                rows,
            ),
        ]
    return parts
