"""A job whose hint is lost still runs: the worker's periodic sweep claims it."""

from __future__ import annotations

from cl_ml_tools import Job

from compute.db.repository import JobRepository
from compute.db.session import make_engine
from tests.support.images import png_bytes
from tests.support.inprocess import Server, WorkerFactory
from tests.support.waits import wait_for


async def test_without_wake_events_the_sweep_runs_the_job(
    server: Server, start_worker: WorkerFactory
) -> None:
    running = await start_worker(wake_events=False, sweep_interval=0.2)
    assert not any("/jobs/available/" in f for f in running.bus.subscriptions)
    # Nothing wakes this worker: a second empty pass can only be the sweep timer.
    await wait_for(lambda: running.worker.empty_claims >= 2, what="two idle sweeps")

    job_id = (await server.submit())["job_id"]
    job = await server.wait_status(job_id, "completed", timeout=10)
    assert job["progress"] == 100


async def test_a_hint_never_published_is_picked_up_by_the_sweep(
    server: Server, start_worker: WorkerFactory
) -> None:
    await start_worker(sweep_interval=0.2)  # returns once idle, after its first pass

    # Written straight to the database: no dispatcher, so no MQTT hint at all.
    engine = make_engine(server.settings.database_url)
    try:
        storage = server.services.storage
        storage.create_job_directory("silent-job")
        (storage.get_input_path("silent-job") / "in.png").write_bytes(png_bytes())
        target = storage.get_output_path("silent-job") / "out.png"
        JobRepository(engine).add_job(
            Job(  # params relative to the job folder, as the route writes them
                job_id="silent-job",
                task_type="image_conversion",
                params={"input_path": "input/in.png", "output_path": "output/out.png", "format": "png"},
            )
        )
    finally:
        engine.dispose()
    assert server.services.dispatcher.unsent == 0  # nothing went through the dispatcher

    await server.wait_status("silent-job", "completed", timeout=10)
    assert target.is_file()
