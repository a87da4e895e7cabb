"""GET /asyncapi.json: the AsyncAPI 3.0 document of this deployment's MQTT topics."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from fastapi import APIRouter, Request

from compute import asyncapi
from compute.config import Settings
from compute.server.http.deps import services_of
from compute.topics import Topics

router = APIRouter()


def _document(settings: Settings) -> dict[str, Any]:
    return _cached_document(
        Topics.for_settings(settings), f"{settings.broker_host}:{settings.mqtt_port}", settings.mqtt_version
    )


# Keyed by what the document depends on, not by Settings: Settings holds a mapping
# (worker_concurrency), so it cannot be a cache key.
@lru_cache(maxsize=16)
def _cached_document(topics: Topics, broker: str, mqtt_version: int) -> dict[str, Any]:
    return asyncapi.document(topics, broker, mqtt_version)


@router.get("/asyncapi.json", tags=["docs"])
async def asyncapi_document(request: Request) -> dict[str, Any]:
    """Every MQTT topic with its payload schema, QoS and retain flag, under this deployment's
    topic names (topics.md in machine-readable form). Open like `/openapi.json`."""
    return _document(services_of(request).settings)
