"""The dashboard in headless Chromium, on a real compute-server and compute-worker.

Debian's chromium (README command 1 installs it) driven by Playwright, which downloads no
browser here. Everything is awaited with Playwright's own waiting (`expect`), never a sleep.
With DASHBOARD_SCREENSHOT=<path> the test also saves a screenshot there (docs/dashboard.png
is made this way: `DASHBOARD_SCREENSHOT=docs/dashboard.png uv run pytest tests/e2e/test_dashboard.py`).
"""

from __future__ import annotations

import os
import shutil
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

from tests.support.auth import SigningKey, bearer
from tests.support.commands import Commands, run, start_server
from tests.support.images import png_bytes
from tests.support.waits import wait_for

pytestmark = pytest.mark.e2e

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
HAVE_CHROMIUM = Path(CHROMIUM).exists()
#: Playwright's waits (ms): long enough for a loaded CI machine, never slept through.
WAIT_MS = 30_000


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    if not HAVE_CHROMIUM:
        pytest.skip("chromium is not installed (README command 1: apt-get install chromium)")
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield browser
        await browser.close()


async def submit(
    client: httpx.AsyncClient, task: str, size: tuple[int, int], headers: dict[str, str] | None = None
) -> str:
    data = {"format": "webp"} if task == "image_conversion" else {"width": "16", "height": "12"}
    response = await client.post(
        f"/jobs/{task}",
        data=data,
        headers=headers or {},
        files={"file": ("photo.png", png_bytes(size), "image/png")},
    )
    assert response.status_code == 200, response.text
    return str(response.json()["job_id"])


async def test_dashboard_shows_workers_queues_and_live_progress(
    procs: Commands,
    env: dict[str, str],
    browser: Browser,
) -> None:
    assert run(env, "compute-migrate").returncode == 0
    served = await start_server(procs, "--no-auth")
    base, http_port, mqtt_port = served.base, served.http_port, served.mqtt_port
    async with httpx.AsyncClient(base_url=base, timeout=10) as client:
        page: Page = await browser.new_page(viewport={"width": 1280, "height": 900})
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        await page.goto(f"{base}/dashboard")
        await expect(page.locator("#live-state")).to_have_attribute("data-state", "live", timeout=WAIT_MS)
        await expect(page.locator("#workers-empty")).to_be_visible()

        # Jobs wait while no worker runs: the queue shows them.
        waiting = [await submit(client, "image_conversion", (64, 48)) for _ in range(3)]
        waiting.append(await submit(client, "image_resize", (64, 48)))
        conversions = page.locator('#queues tr[data-task="image_conversion"]')
        await expect(conversions.locator("td.queued")).to_have_text("3", timeout=WAIT_MS)
        await expect(page.locator('#queues tr[data-task="image_resize"] td.queued')).to_have_text("1")
        for job_id in waiting:  # heard live (SSE), queued at 0 %
            row = page.locator(f'#jobs tr[data-job="{job_id}"]')
            await expect(row).to_have_attribute("data-status", "queued", timeout=WAIT_MS)

        procs.start(
            "worker",
            "compute-worker",
            "--port",
            str(http_port),
            "--mqtt-port",
            str(mqtt_port),
            "--worker-id",
            "dash-1",
            "--tasks",
            "image_conversion,image_resize",
        )
        await expect(page.locator('#workers tr[data-worker="dash-1"]')).to_be_visible(timeout=WAIT_MS)
        for job_id in waiting:
            row = page.locator(f'#jobs tr[data-job="{job_id}"]')
            await expect(row).to_have_attribute("data-status", "completed", timeout=WAIT_MS)
            await expect(row.locator('[role="progressbar"]')).to_have_attribute("aria-valuenow", "100")
        await expect(page.locator("#queues-empty")).to_be_visible(timeout=WAIT_MS)

        # A job submitted with the page open: it appears, and its bar fills to 100 %.
        job_id = await submit(client, "image_conversion", (320, 240))
        row = page.locator(f'#jobs tr[data-job="{job_id}"]')
        await expect(row.locator('[role="progressbar"]')).to_have_attribute(
            "aria-valuenow", "100", timeout=WAIT_MS
        )
        await expect(row).to_have_attribute("data-status", "completed")
        await expect(row.locator("td.worker")).to_have_text("dash-1", timeout=WAIT_MS)
        # The throughput chart counts the five finished jobs.
        await expect(page.locator("#throughput rect.completed")).not_to_have_count(0)
        await expect(page.locator("#throughput-rate")).to_have_text("(5 in the last minute)")

        shot = os.environ.get("DASHBOARD_SCREENSHOT")
        if shot:
            await page.screenshot(path=shot, full_page=True)
        assert errors == []

        # SIGTERM with the page's live view open: the stream is ended, so the server exits
        # (uvicorn would otherwise wait for it for ever), and the page notices.
        served.proc.send_signal(signal.SIGTERM)
        assert await wait_for(
            lambda: served.proc.poll() is not None,
            timeout=20,
            what="compute-server to exit with a live view open",
        )
        assert served.proc.returncode == 0, procs.log("server")
        await expect(page.locator("#live-state")).not_to_have_attribute("data-state", "live")


async def test_dashboard_asks_for_a_token_when_auth_is_on(
    procs: Commands,
    env: dict[str, str],
    browser: Browser,
    signing_key: SigningKey,
) -> None:
    assert run(env, "compute-migrate").returncode == 0
    procs.env = {**env, "PUBLIC_KEY_PATH": str(signing_key[1])}
    base = (await start_server(procs)).base
    alice, bob = bearer(signing_key, "alice"), bearer(signing_key, "bob")
    async with httpx.AsyncClient(base_url=base, timeout=10) as client:
        bobs = await submit(client, "image_conversion", (32, 24), bob)

        page = await browser.new_page()
        await page.goto(f"{base}/dashboard")
        await expect(page.locator("#token-form")).to_be_visible(timeout=WAIT_MS)
        await page.fill("#token-input", "not-a-token")
        await page.click("#token-form button[type=submit]")
        await expect(page.locator("#token-error")).to_contain_text("invalid token", timeout=WAIT_MS)

        await page.fill("#token-input", alice["Authorization"].removeprefix("Bearer "))
        await page.click("#token-form button[type=submit]")
        await expect(page.locator("#live-state")).to_have_attribute("data-state", "live", timeout=WAIT_MS)
        await expect(page.locator("#token-form")).to_be_hidden()
        alices = await submit(client, "image_conversion", (32, 24), alice)  # heard live
        await expect(page.locator(f'#jobs tr[data-job="{alices}"]')).to_have_attribute(
            "data-status", "queued", timeout=WAIT_MS
        )
        await expect(page.locator('#queues tr[data-task="image_conversion"] td.queued')).to_have_text(
            "2", timeout=WAIT_MS
        )  # queue depth counts everyone's jobs, as the retained topic does
        await expect(page.locator(f'#jobs tr[data-job="{bobs}"]')).to_have_count(0)
        await expect(page.locator("#jobs tbody tr")).to_have_count(1)
