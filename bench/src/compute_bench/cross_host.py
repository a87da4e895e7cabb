"""Figures across hosts (issue 18 item 5): what the file plane costs, what a second worker host
gives, and how fast 16 workers claim from PostgreSQL.

    sudo uv run python -m compute_bench.cross_host [--rounds 3] [--burst 30] [--claims 2000]

Runs on compute_bench.hosts: a server host (compute-server, Mosquitto with deploy/mosquitto's
configuration, PostgreSQL), two worker hosts and a client host, in network namespaces on this
machine. It needs root, iproute2, PostgreSQL's and Mosquitto's binaries; without them it says
which is missing and measures nothing. PostgreSQL runs with its durable defaults here (fsync and
synchronous commits on), unlike in the cross-host tests.

1. **The file plane, per job.** The same job run by a worker that sees the server's job folders
   (worker-a, its COMPUTE_STORAGE_DIR the server's) and by one that does not (worker-b: inputs
   fetched, outputs sent over HTTP), one job at a time, the two alternating (the other one
   SIGSTOPped) for `--rounds` rounds: image_conversion of a 12 MP JPEG (q97, 4.7 MB) to PNG and
   to WebP, and media_thumbnail of a 100 MB video. Run time is the job's record: claimed
   (`started_at`) to completion stored (`completed_at`); the transfer times are the remote
   worker's own log lines.
2. **A burst over one worker host and over two.** `--burst` image_resize jobs (the 1080p photo to
   640x360) submitted while the workers are stopped, then resumed together: jobs / (last
   completion - first claim). Each host runs one remote compute-worker.
3. **PostgreSQL claims, 1 and 16 workers.** `--claims` jobs inserted, then claimed one per
   statement (`JobRepository.claim_next`, what a worker's lane runs with one free slot;
   compute_bench.claimer) by 1 process, and by 16 processes (8 per worker host) started
   together: claims per second until the queue is empty. Claims only: no plugin, no events.

The machine's load average is printed at the start and the end: the hosts share its cores with
whatever else runs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from compute_bench import inputs
from compute_bench.harness import wait_until
from compute_bench.hosts import netns
from compute_bench.hosts.hosted import (
    BIN,
    BROKER,
    CLIENT,
    DATABASE,
    SERVER,
    WORKER_ADDRESSES,
    HostedCompute,
    Mosquitto,
    Postgres,
    Worker,
    migrate,
    missing_services,
)
from compute_bench.hosts.netns import Host, Lan

#: The worker's tasks here (one process, one slot each).
TASKS = "image_conversion,image_resize,media_thumbnail"
VIDEO_MB = 100
CLAIM_TASK = "bench_claim"
JOB_TIMEOUT = 300.0


def unavailable() -> str | None:
    """Why this machine cannot run these figures, or None."""
    return netns.unavailable() or missing_services()


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


# -- inputs ------------------------------------------------------------------------------------


def write_big_video(path: Path, megabytes: int = VIDEO_MB) -> None:
    """A 720p H.264 MP4 of about `megabytes` MB: 10 s at a constant bitrate (filler included)."""
    seconds = 10
    rate = f"{megabytes * 8 // seconds}M"
    cmd = ["ffmpeg", "-hide_banner", "-loglevel", "error", "-y"]
    cmd += ["-f", "lavfi", "-i", "testsrc2=size=1280x720:rate=30", "-t", str(seconds)]
    cmd += ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-g", "60"]
    cmd += ["-b:v", rate, "-minrate", rate, "-maxrate", rate, "-bufsize", rate]
    cmd += ["-x264-params", "nal-hrd=cbr:force-cfr=1", "-movflags", "+faststart", str(path)]
    subprocess.run(cmd, check=True, capture_output=True, timeout=600)


@dataclass(frozen=True)
class Upload:
    label: str
    task: str
    form: dict[str, str]
    path: Path
    mime: str

    def as_submitted(self) -> tuple[str, dict[str, str], str, bytes, str]:
        return (self.task, self.form, self.path.name, self.path.read_bytes(), self.mime)


def make_inputs(folder: Path) -> tuple[list[Upload], Upload]:
    """The file plane's jobs (12 MP photo twice, the 100 MB video) and the burst's job."""
    folder.mkdir(parents=True, exist_ok=True)
    large_jpeg = folder / "large_4000x3000_q97.jpg"
    image, _ = inputs.photo_image(inputs.LARGE)
    image.save(large_jpeg, format="JPEG", quality=97, exif=inputs.exif_tags())  # about 4.7 MB
    photo = folder / "standard_1080p.jpg"
    inputs.write_photo(photo)
    video = folder / f"video_720p_{VIDEO_MB}mb.mp4"
    write_big_video(video)
    per_job = [
        Upload(
            "image_conversion 12 MP jpeg->png",
            "image_conversion",
            {"format": "png"},
            large_jpeg,
            "image/jpeg",
        ),
        Upload(
            "image_conversion 12 MP jpeg->webp",
            "image_conversion",
            {"format": "webp", "quality": "85"},
            large_jpeg,
            "image/jpeg",
        ),
        Upload(f"media_thumbnail {VIDEO_MB} MB video", "media_thumbnail", {}, video, "video/mp4"),
    ]
    burst = Upload(
        "image_resize 1080p -> 640x360",
        "image_resize",
        {"width": "640", "height": "360", "maintain_aspect_ratio": "true"},
        photo,
        "image/jpeg",
    )
    return per_job, burst


# -- the deployment ----------------------------------------------------------------------------


@dataclass
class Bench:
    lan: Lan
    server: Host
    workers: tuple[Host, Host]
    client: Host
    postgres: Postgres
    compute: HostedCompute
    logs: Path

    def start_worker(self, host: Host, worker_id: str, *, shared: bool) -> subprocess.Popen[bytes]:
        """A compute-worker on `host`: seeing the server's job folders (`shared`) or not."""
        compute = self.compute
        assert compute.broker is not None
        if worker_id not in compute.broker.passwords:
            compute.broker.add_user("worker", worker_id)
        compute.prepare_worker_host(host, compute.worker_dir(host))  # hides the server's files
        env = compute.worker_env(host, worker_id)
        if shared:
            host.hidden = ()
            env["COMPUTE_STORAGE_DIR"] = str(compute.server_dir / "compute")
        proc = host.spawn(
            [str(BIN / "compute-worker"), "--tasks", TASKS], env=env, log=self.logs / f"{worker_id}.log"
        )
        compute.workers[worker_id] = Worker(host, worker_id, proc)
        compute.wait_workers(worker_id)
        return proc

    def stop_worker(self, worker_id: str) -> None:
        worker = self.compute.workers.pop(worker_id)
        worker.proc.send_signal(signal.SIGCONT)
        worker.proc.terminate()
        worker.proc.wait(60)


@contextlib.contextmanager
def deployment(folder: Path) -> Iterator[Bench]:
    netns.sweep_stale()
    lan = Lan()
    postgres: Postgres | None = None
    compute: HostedCompute | None = None
    broker: Mosquitto | None = None
    try:
        server = lan.host("server", SERVER, BROKER, DATABASE)
        workers = (lan.host("worker-a", WORKER_ADDRESSES[0]), lan.host("worker-b", WORKER_ADDRESSES[1]))
        client = lan.host("client", CLIENT)
        postgres = Postgres(server, DATABASE, lan.folder_of(server) / "postgresql", folder / "postgresql.log")
        postgres.start(durable=True)
        password = postgres.create_role(client, "compute")
        postgres.create_database(client, "compute", owner="compute")
        url = postgres.url("compute", password, "compute")
        migrate(server, url, lan.folder_of(server) / "migrate")
        broker = Mosquitto(server, BROKER, lan.folder_of(server) / "mosquitto", folder / "mosquitto.log")
        broker.add_user("server")
        broker.start()
        compute = HostedCompute(
            lan=lan,
            server_host=server,
            client=client,
            postgres=postgres,
            broker=broker,
            database_url=url,
            logs=folder,
            settings={"LOG_LEVEL": "INFO", "LOG_FORMAT": "json"},
        )
        compute.start_server()
        yield Bench(lan, server, workers, client, postgres, compute, folder)
    finally:
        if compute is not None:
            compute.stop()
        if broker is not None:
            broker.stop()
        if postgres is not None:
            postgres.stop()
        lan.close()


# -- 1. the file plane per job -----------------------------------------------------------------


@dataclass
class JobTimes:
    run_ms: float
    fetch_ms: float = 0.0
    send_ms: float = 0.0
    fetched_mb: float = 0.0
    sent_mb: float = 0.0


def run_one(bench: Bench, upload: Upload) -> str:
    (job_id,) = bench.compute.submit([upload.as_submitted()])
    wait_until(
        lambda: bench.compute.count(f"job_id = '{job_id}' AND status IN ('completed', 'failed')"),
        JOB_TIMEOUT,
        f"{upload.label} finished",
        interval=0.02,
    )
    (row,) = bench.compute.rows(f"job_id = '{job_id}'")
    assert row["status"] == "completed", f"{upload.label}: {row['error_message']}"
    return job_id


def transfers(log: Path) -> dict[str, dict[str, dict[str, float]]]:
    """job id -> "inputs"/"outputs" -> {"ms", "bytes"}, from a worker's JSON log lines."""
    found: dict[str, dict[str, dict[str, float]]] = {}
    for line in log.read_text(errors="replace").splitlines():
        if '"transfer"' not in line:
            continue
        with contextlib.suppress(ValueError, KeyError):
            record = json.loads(line)
            found.setdefault(record["job_id"], {})[record["transfer"]] = {
                "ms": float(record["ms"]),
                "bytes": float(record["bytes"]),
            }
    return found


def times(bench: Bench, worker_id: str, job_id: str) -> JobTimes:
    (row,) = bench.compute.rows(f"job_id = '{job_id}'")
    assert row["worker_id"] == worker_id, f"{job_id} ran on {row['worker_id']}, not {worker_id}"
    moved = transfers(bench.logs / f"{worker_id}.log").get(job_id, {})
    fetched, sent = moved.get("inputs", {}), moved.get("outputs", {})
    return JobTimes(
        run_ms=float(row["completed_at"] - row["started_at"]),
        fetch_ms=fetched.get("ms", 0.0),
        send_ms=sent.get("ms", 0.0),
        fetched_mb=fetched.get("bytes", 0.0) / 1e6,
        sent_mb=sent.get("bytes", 0.0) / 1e6,
    )


def file_plane(bench: Bench, uploads: Sequence[Upload], rounds: int) -> None:
    print("\n1. The file plane per job: a worker sharing the server's disk / one that does not")
    shared = bench.start_worker(bench.workers[0], "shared-a", shared=True)
    remote = bench.start_worker(bench.workers[1], "remote-b", shared=False)
    procs = {"shared-a": shared, "remote-b": remote}
    try:
        for upload in uploads:  # one warm-up job each: the plugin's first import is not the figure
            for worker_id in procs:
                _only(procs, worker_id)
                run_one(bench, upload)
        results: dict[str, dict[str, list[JobTimes]]] = {u.label: {w: [] for w in procs} for u in uploads}
        for r in range(rounds):
            order = list(procs) if r % 2 == 0 else list(reversed(procs))
            for worker_id in order:
                _only(procs, worker_id)
                for upload in uploads:
                    results[upload.label][worker_id].append(times(bench, worker_id, run_one(bench, upload)))
        assert not transfers(bench.logs / "shared-a.log"), "the shared-disk worker transferred files"
        for label, by_worker in results.items():
            local = statistics.median(t.run_ms for t in by_worker["shared-a"])
            far = by_worker["remote-b"]
            remote_ms = statistics.median(t.run_ms for t in far)
            fetch = statistics.median(t.fetch_ms for t in far)
            send = statistics.median(t.send_ms for t in far)
            print(
                f"  {label}: run {local:.0f} ms shared / {remote_ms:.0f} ms remote "
                f"(+{remote_ms - local:.0f} ms, {100 * (remote_ms - local) / remote_ms:.1f} % of the remote "
                f"job); fetch {statistics.median(t.fetched_mb for t in far):.1f} MB in {fetch:.0f} ms, "
                f"send {statistics.median(t.sent_mb for t in far):.1f} MB in {send:.0f} ms "
                f"({100 * (fetch + send) / remote_ms:.1f} % of the remote job)"
            )
            print(f"    runs, shared: {_list(by_worker['shared-a'])}; remote: {_list(far)}")
    finally:
        for worker_id in procs:
            with contextlib.suppress(KeyError):
                bench.stop_worker(worker_id)


def _only(procs: dict[str, subprocess.Popen[bytes]], running: str) -> None:
    """SIGCONT `running`, SIGSTOP the others: the next job can only go to `running`."""
    for worker_id, proc in procs.items():
        proc.send_signal(signal.SIGCONT if worker_id == running else signal.SIGSTOP)


def _list(runs: Sequence[JobTimes]) -> str:
    return ", ".join(f"{t.run_ms:.0f}" for t in runs)


# -- 2. a burst over one worker host and two ---------------------------------------------------


def burst(bench: Bench, upload: Upload, jobs: int, rounds: int) -> None:
    print(f"\n2. A burst of {jobs} {upload.label} jobs over remote worker hosts (one worker each)")
    procs = {
        "burst-a": bench.start_worker(bench.workers[0], "burst-a", shared=False),
        "burst-b": bench.start_worker(bench.workers[1], "burst-b", shared=False),
    }
    rates: dict[str, list[float]] = {"one host": [], "two hosts": []}
    try:
        for r in range(rounds):
            order = ["one host", "two hosts"] if r % 2 == 0 else ["two hosts", "one host"]
            for case in order:
                running = ["burst-a"] if case == "one host" else ["burst-a", "burst-b"]
                rates[case].append(one_burst(bench, procs, running, upload, jobs))
        for case, values in rates.items():
            rounds_text = ", ".join(f"{v:.1f}" for v in values)
            print(f"  {case}: {statistics.median(values):.1f} jobs/s (rounds: {rounds_text})")
    finally:
        for worker_id in procs:
            with contextlib.suppress(KeyError):
                bench.stop_worker(worker_id)


def one_burst(
    bench: Bench, procs: dict[str, subprocess.Popen[bytes]], running: list[str], upload: Upload, jobs: int
) -> float:
    """jobs/s: the burst submitted while every worker is stopped, then `running` resumed."""
    for proc in procs.values():
        proc.send_signal(signal.SIGSTOP)
    job_ids = bench.compute.submit([upload.as_submitted()] * jobs)
    for worker_id in running:
        procs[worker_id].send_signal(signal.SIGCONT)
    ids = ", ".join(f"'{j}'" for j in job_ids)
    wait_until(
        lambda: bench.compute.count(f"job_id IN ({ids}) AND status = 'completed'") == jobs,
        JOB_TIMEOUT,
        "the burst completed",
        interval=0.05,
    )
    rows = bench.compute.rows(f"job_id IN ({ids})")
    assert {r["worker_id"] for r in rows} <= set(running), "a stopped worker ran a job"
    span = (max(r["completed_at"] for r in rows) - min(r["started_at"] for r in rows)) / 1000
    return float(jobs / span)


# -- 3. PostgreSQL claims ----------------------------------------------------------------------


def claims(bench: Bench, jobs: int, rounds: int) -> None:
    print(f"\n3. PostgreSQL claims from the worker hosts, {jobs} jobs, one claim per statement")
    pools = {count: Claimers(bench, count, rounds) for count in (1, 16)}
    rates: dict[int, list[float]] = {count: [] for count in pools}
    try:
        for r in range(rounds):
            for count in (1, 16) if r % 2 == 0 else (16, 1):
                bench.client.call(_insert_claimable, bench.compute, jobs)
                rates[count].append(pools[count].round(r, jobs))
                bench.client.call(_delete_claimed, bench.compute)
    finally:
        for pool in pools.values():
            pool.end()
    for count, values in rates.items():
        rounds_text = ", ".join(f"{v:.0f}" for v in values)
        print(f"  {count:>2} worker(s): {statistics.median(values):.0f} claims/s (rounds: {rounds_text})")


class Claimers:
    """`count` claiming processes (compute_bench.claimer) spread over the worker hosts, started
    once for every round."""

    def __init__(self, bench: Bench, count: int, rounds: int) -> None:
        self.count = count
        self.folder = Path(tempfile.mkdtemp(dir=bench.logs, prefix=f"claims-{count}-"))
        self.procs = []
        for i in range(count):
            host = bench.workers[i % 2]
            host.hidden = ()
            cmd = [sys.executable, "-m", "compute_bench.claimer", bench.compute.database_url, CLAIM_TASK]
            cmd += [str(self.folder), str(i), str(rounds)]
            log = self.folder / f"{i}.log"
            self.procs.append(host.spawn(cmd, env=bench.compute.base_env(), log=log))

    def round(self, r: int, jobs: int) -> float:
        """Claims/s of the pool, started together, emptying a queue of `jobs`."""
        wait_until(self._ready(r), 600, f"{self.count} claimers ready", interval=0.2)
        (self.folder / f"go-{r}").touch()
        results_of = [self.folder / f"{i}.{r}.json" for i in range(self.count)]
        wait_until(lambda: all(p.exists() for p in results_of), 600, "the claimers done", interval=0.05)
        results = [json.loads(p.read_text()) for p in results_of]
        total = sum(x["claimed"] for x in results)
        assert total == jobs, f"{total} claims of {jobs} jobs"
        return float(total / (max(x["ended"] for x in results) - min(x["started"] for x in results)))

    def _ready(self, r: int) -> Callable[[], bool]:
        def ready() -> bool:
            for proc in self.procs:
                assert proc.poll() is None, (self.folder / "0.log").read_text()[-2000:]
            return len(list(self.folder.glob(f"*.ready-{r}"))) == self.count

        return ready

    def end(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()


def _insert_claimable(compute: HostedCompute, jobs: int) -> None:
    from cl_ml_tools import Job

    from compute.db.repository import JobRepository

    repo = JobRepository(compute.engine)
    repo.insert_rows(
        [repo.new_row(Job(job_id=str(uuid.uuid4()), task_type=CLAIM_TASK, params={})) for _ in range(jobs)]
    )


def _delete_claimed(compute: HostedCompute) -> None:
    from sqlalchemy import text

    with compute.engine.begin() as conn:
        conn.execute(text("DELETE FROM jobs WHERE task_type = :t"), {"t": CLAIM_TASK})


# -- main --------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m compute_bench.cross_host", description=__doc__)
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each comparison (default 3)")
    parser.add_argument("--burst", type=int, default=30, help="jobs per burst (default 30)")
    parser.add_argument("--claims", type=int, default=2000, help="jobs claimed per round (default 2000)")
    parser.add_argument("--sections", default="files,burst,claims", help="a subset of files,burst,claims")
    parser.add_argument("--keep", action="store_true", help="keep the logs folder")
    args = parser.parse_args(argv)
    reason = unavailable()
    if reason:
        print(f"cross-host figures skipped: {reason}")
        return 0
    sections = {s.strip() for s in args.sections.split(",")}
    print(f"load average at the start: {load_average()}")
    folder = Path(tempfile.mkdtemp(prefix="compute-bench-hosts-"))
    folder.chmod(0o755)
    try:
        per_job, burst_upload = make_inputs(folder / "inputs")
        with deployment(folder / "logs") as bench:
            if "files" in sections:
                file_plane(bench, per_job, args.rounds)
            if "burst" in sections:
                burst(bench, burst_upload, args.burst, args.rounds)
            if "claims" in sections:
                claims(bench, args.claims, args.rounds)
    finally:
        print(f"\nload average at the end: {load_average()}")
        if args.keep:
            print(f"logs kept in {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
