"""GET /dashboard: a page of workers, queues, recent jobs and live progress, no build step.

Static files only (`server/static/`): the page reads the HTTP API and the SSE stream from the
browser, with the token the user pastes in (kept in the tab's sessionStorage), so it needs no
server-side session and no auth of its own. Nothing is loaded from elsewhere (no CDN).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).resolve().parent.parent / "static"
#: The page may load only what this server serves; no inline script runs.
_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)


def install(app: FastAPI) -> None:
    @app.get("/dashboard", include_in_schema=False)
    def dashboard() -> FileResponse:
        return FileResponse(
            STATIC / "dashboard.html",
            media_type="text/html",
            headers={
                "Content-Security-Policy": _CSP,
                "Cache-Control": "no-cache",
                "Referrer-Policy": "no-referrer",
                "X-Content-Type-Options": "nosniff",
            },
        )

    app.mount("/dashboard/static", StaticFiles(directory=STATIC), name="dashboard-static")
