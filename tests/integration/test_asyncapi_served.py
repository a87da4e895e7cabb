"""GET /asyncapi.json serves the document under this deployment's topic names."""

from __future__ import annotations

from compute import asyncapi
from tests.support.inprocess import Server


async def test_asyncapi_document_is_served_with_this_deployments_topics(server: Server) -> None:
    response = await server.client.get("/asyncapi.json")
    assert response.status_code == 200
    settings = server.settings
    assert response.json() == asyncapi.document(server.topics, f"{settings.broker_host}:{settings.mqtt_port}")
    addresses = {c["address"] for c in response.json()["channels"].values()}
    assert f"{settings.mqtt_topic_root}/events/{{task_type}}/{{job_id}}" in addresses
    assert settings.mqtt_topic in addresses
