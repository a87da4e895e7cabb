"""GET / (health) and GET /capabilities."""

from __future__ import annotations

from fastapi import APIRouter, Request

from compute import __version__
from compute.server.http.auth import guest_mode_on
from compute.server.http.deps import RegistryDep, ServicesDep
from compute.server.http.schemas import Capabilities, Health

router = APIRouter()


@router.get("/", response_model=Health, tags=["health"])
async def health(request: Request, services: ServicesDep) -> Health:
    """Liveness, whether the MQTT bus is connected and the database answers, and what clients
    need to know about auth. Answers at once, whatever the database does: `database` is its
    state as last seen ("unavailable" is re-checked in the background)."""
    db = services.db
    database = db.current_state()
    return Health(
        status="healthy",
        service="compute",
        version=__version__,
        mqtt_connected=services.bus.connected,
        database=database,
        database_detail=db.reason,
        auth_required=not services.verifier.disabled,
        guestMode="on" if await guest_mode_on(request, wait=False) else "off",
        server_id=services.server_id,
        sweeps=services.sweep_lease.held,
    )


@router.get("/capabilities", response_model=Capabilities, tags=["workers"])
def capabilities(registry: RegistryDep) -> Capabilities:
    """Live workers and, per task type, how many of them are idle."""
    return Capabilities.model_validate(registry.capabilities())
