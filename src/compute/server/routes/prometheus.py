"""GET /metrics: Prometheus exposition of the server's metrics (server/metrics.py)."""

from __future__ import annotations

import hmac

from fastapi import APIRouter, Header, HTTPException, Response, status

from compute.server.http.deps import ServicesDep
from compute.server.metrics import CONTENT_TYPE, ScrapeState

router = APIRouter()


@router.get(
    "/metrics",
    tags=["health"],
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE: {}}, "description": "Prometheus text format"}},
)
async def metrics(services: ServicesDep, authorization: str | None = Header(default=None)) -> Response:
    """Queue depth and age per task type, job pickup and run times, retries, rescues, rejected
    MQTT messages, workers by state and HTTP latency. Open unless `METRICS_TOKEN` is set; then
    it wants `Authorization: Bearer <METRICS_TOKEN>`."""
    token = services.settings.metrics_token
    if token and not hmac.compare_digest((authorization or "").encode(), f"Bearer {token}".encode()):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "GET /metrics needs Authorization: Bearer <METRICS_TOKEN>",
            headers={"WWW-Authenticate": "Bearer"},
        )
    queues = await services.db.call(services.repo.queue_summary)
    registry = services.registry
    state = ScrapeState(
        queues,
        [info["idle"] for info in registry.workers.values()],
        [("job_event", services.ingest.rejected), ("worker_info", registry.rejected)],
        services.rescuer.checks,
    )
    return Response(services.metrics.render(state), media_type=CONTENT_TYPE)
