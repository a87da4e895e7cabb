"""GET / (health) and GET /capabilities."""

from __future__ import annotations

from fastapi import APIRouter, Request

from compute import __version__
from compute.server.deps import RegistryDep
from compute.server.schemas import Capabilities, Health

router = APIRouter()


@router.get("/", response_model=Health, tags=["health"])
def health(request: Request) -> Health:
    """Liveness, whether the MQTT bus is connected, and what clients need to know about auth."""
    state = request.app.state
    return Health(status="healthy", service="compute", version=__version__,
                  mqtt_connected=state.bus.connected, auth_required=not state.verifier.disabled,
                  guestMode="on" if state.guest.enabled else "off")


@router.get("/capabilities", response_model=Capabilities, tags=["workers"])
def capabilities(registry: RegistryDep) -> Capabilities:
    """Live workers and, per task type, how many of them are idle."""
    return Capabilities.model_validate(registry.capabilities())
