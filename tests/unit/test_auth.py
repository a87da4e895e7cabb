"""JWT checks on the real app (ES256 with the auth service's public key)."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cl_ml_tools import Job
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from compute.db.repository import JobRepository
from compute.errors import ConfigError
from compute.server.access import CLOCK_LEEWAY, TokenVerifier
from tests.support.brokers import BrokerInfo
from tests.support.inprocess import Server, make_settings, running_server


@dataclass(frozen=True)
class Keys:
    private_pem: bytes
    public_pem: bytes
    public_path: Path


def _pair() -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private, public


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    private, public = _pair()
    path = tmp_path_factory.mktemp("keys") / "public_key.pem"
    path.write_bytes(public)
    return Keys(private, public, path)


def token(
    keys: Keys,
    permissions: list[str] | None = None,
    expires_in: float = 300,
    key: bytes | None = None,
    **claims: Any,
) -> str:
    """An ES256 token; a claim given as None is left out."""
    payload = {
        "id": "user-1",
        "permissions": permissions if permissions is not None else ["ai_inference_support"],
        "exp": int(time.time() + expires_in),
        **claims,
    }
    payload = {k: v for k, v in payload.items() if v is not None}
    return jwt.encode(payload, key or keys.private_pem, algorithm="ES256")


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


@pytest.fixture
async def secured(
    tmp_path: Path, sqlite_url: str, amqtt_broker: BrokerInfo, prefix: str, keys: Keys
) -> AsyncIterator[Server]:
    settings = replace(
        make_settings(tmp_path, sqlite_url, amqtt_broker, prefix),
        auth_disabled=False,
        public_key_path=keys.public_path,
    )
    async with running_server(settings) as server:
        repo: JobRepository = server.services.repo
        repo.add_job(Job(job_id="job-1", task_type="image_resize", params={}), created_by="user-1")
        yield server


async def get_job(server: Server, bearer: str | None) -> httpx.Response:
    headers = {} if bearer is None else {"Authorization": f"Bearer {bearer}"}
    return await server.client.get("/jobs/job-1", headers=headers)


async def test_valid_token(secured: Server, keys: Keys) -> None:
    response = await get_job(secured, token(keys))
    assert response.status_code == 200
    assert response.json()["job_id"] == "job-1"


async def test_sub_claim_is_accepted_as_user_id(secured: Server, keys: Keys) -> None:
    assert (await get_job(secured, token(keys, id=None, sub="user-1"))).status_code == 200


async def test_null_id_falls_back_to_sub(secured: Server, keys: Keys) -> None:
    payload = {
        "id": None,
        "sub": "user-1",
        "permissions": ["ai_inference_support"],
        "exp": int(time.time() + 300),
    }
    bearer = jwt.encode(payload, keys.private_pem, algorithm="ES256")
    assert (await get_job(secured, bearer)).status_code == 200


async def test_token_times_are_taken_within_the_clock_leeway(secured: Server, keys: Keys) -> None:
    """The auth service's clock is another host's: a few seconds either way is no reason to refuse."""
    now = time.time()
    ahead = token(keys, iat=int(now + 20), nbf=int(now + 20))  # issued by a host 20 s ahead
    just_expired = token(keys, expires_in=-10)  # expired by this clock, perhaps not by the issuer's
    assert (await get_job(secured, ahead)).status_code == 200
    assert (await get_job(secured, just_expired)).status_code == 200
    beyond = token(keys, nbf=int(now + 3 * CLOCK_LEEWAY))
    assert (await get_job(secured, beyond)).status_code == 401


async def test_missing_token(secured: Server) -> None:
    response = await get_job(secured, None)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize(
    "make_bad",
    [
        pytest.param(lambda k: token(k, expires_in=-60), id="expired"),
        pytest.param(lambda k: token(k, key=_pair()[0]), id="wrong-key"),
        pytest.param(
            lambda k: (
                _b64({"alg": "none", "typ": "JWT"})
                + "."
                + _b64({"id": "u", "permissions": ["admin"], "exp": int(time.time()) + 300})
                + "."
            ),
            id="alg-none",
        ),
        pytest.param(lambda k: _hs256_with_public_key(k), id="hs256-with-public-key"),
        pytest.param(
            lambda k: jwt.encode(
                {"id": "u", "permissions": ["ai_inference_support"]}, k.private_pem, algorithm="ES256"
            ),
            id="no-exp",
        ),
        pytest.param(lambda k: token(k, id=None), id="no-user-id"),
        pytest.param(lambda k: token(k, permissions="ai_inference_support"), id="permissions-not-list"),  # type: ignore[arg-type]
        pytest.param(lambda k: "not-a-jwt", id="garbage"),
    ],
)
async def test_bad_tokens_are_401(secured: Server, keys: Keys, make_bad: Any) -> None:
    response = await get_job(secured, make_bad(keys))
    assert response.status_code == 401, response.text


def _hs256_with_public_key(keys: Keys) -> str:
    """The classic confusion attack: HMAC keyed with the public key's PEM text."""
    import hashlib
    import hmac

    header = _b64({"alg": "HS256", "typ": "JWT"})
    body = _b64({"id": "u", "permissions": ["admin"], "exp": int(time.time()) + 300})
    signing_input = f"{header}.{body}".encode()
    sig = hmac.new(keys.public_pem, signing_input, hashlib.sha256).digest()
    return f"{header}.{body}." + base64.urlsafe_b64encode(sig).rstrip(b"=").decode()


async def test_missing_permission_is_403(secured: Server, keys: Keys) -> None:
    response = await get_job(secured, token(keys, permissions=["something_else"]))
    assert response.status_code == 403
    assert "ai_inference_support" in response.json()["detail"]


async def test_job_creation_needs_the_permission(secured: Server, keys: Keys) -> None:
    from tests.support.images import png_bytes

    files = {"file": ("a.png", png_bytes(), "image/png")}
    data = {"format": "png"}
    no_token = await secured.client.post("/jobs/image_conversion", data=data, files=files)
    assert no_token.status_code == 401
    ok = await secured.client.post(
        "/jobs/image_conversion", data=data, files=files, headers={"Authorization": f"Bearer {token(keys)}"}
    )
    assert ok.status_code == 200
    job = (
        await secured.client.get(
            f"/jobs/{ok.json()['job_id']}", headers={"Authorization": f"Bearer {token(keys)}"}
        )
    ).json()
    assert job["created_by"] == "user-1"


async def test_admin_route_needs_admin(secured: Server, keys: Keys) -> None:
    url = "/admin/jobs/storage/size"

    async def call(bearer: str) -> int:
        return (await secured.client.get(url, headers={"Authorization": f"Bearer {bearer}"})).status_code

    assert (await secured.client.get(url)).status_code == 401
    assert await call(token(keys)) == 403
    assert await call(token(keys, permissions=["admin"])) == 200
    assert await call(token(keys, permissions=[], is_admin=True)) == 200


async def test_admin_token_may_use_job_routes(secured: Server, keys: Keys) -> None:
    assert (await get_job(secured, token(keys, permissions=[], is_admin=True))).status_code == 200


async def test_health_needs_no_token_and_tells_clients_about_auth(secured: Server) -> None:
    response = await secured.client.get("/")
    assert response.status_code == 200
    body = response.json()
    assert body["mqtt_connected"] is True
    # CL Server's SDK reads these to decide whether to send tokens.
    assert body["auth_required"] is True and body["guestMode"] == "off"
    assert {"status", "service", "version"} <= set(body)


async def test_guest_mode_is_admin_only_and_opens_job_routes_not_admin_ones(
    secured: Server, keys: Keys
) -> None:
    url = "/admin/pref/guest-mode"
    admin = {"Authorization": f"Bearer {token(keys, permissions=['admin'], id='boss')}"}
    user = {"Authorization": f"Bearer {token(keys)}"}
    assert (await secured.client.put(url, data={"guest_mode": "true"})).status_code == 401
    assert (await secured.client.put(url, data={"guest_mode": "true"}, headers=user)).status_code == 403
    assert (await secured.client.get(url, headers=admin)).json() == {"guest_mode": False}
    assert (await get_job(secured, None)).status_code == 401

    turned_on = await secured.client.put(url, data={"guest_mode": "true"}, headers=admin)
    assert turned_on.status_code == 200 and turned_on.json() == {"guest_mode": True}
    assert (await secured.client.get("/")).json()["guestMode"] == "on"
    # No token needed now (no 401); user-1's job stays hidden from guests (404).
    assert (await get_job(secured, None)).status_code == 404
    assert (await get_job(secured, "garbage")).status_code == 401  # a bad token is still refused
    assert (await secured.client.get("/admin/jobs/storage/size")).status_code == 401

    # Kept in the database: a new server process on the same database sees it.
    from compute.db.preferences import GUEST_MODE, PreferenceStore

    assert PreferenceStore(secured.services.repo.engine).get(GUEST_MODE) is True
    # The older CL Server path still works.
    off = await secured.client.put("/admin/config/guest-mode", data={"guest_mode": "false"}, headers=admin)
    assert off.json() == {"guest_mode": False}
    assert (await get_job(secured, None)).status_code == 401


async def test_guest_mode_survives_a_restart(
    tmp_path: Path, sqlite_url: str, amqtt_broker: BrokerInfo, prefix: str, keys: Keys
) -> None:
    settings = replace(
        make_settings(tmp_path, sqlite_url, amqtt_broker, prefix),
        auth_disabled=False,
        public_key_path=keys.public_path,
    )
    admin = {"Authorization": f"Bearer {token(keys, is_admin=True)}"}
    async with running_server(settings) as first:
        assert (await first.client.get("/")).json()["guestMode"] == "off"
        await first.client.put("/admin/pref/guest-mode", data={"guest_mode": "on"}, headers=admin)
    async with running_server(settings) as second:
        assert (await second.client.get("/")).json()["guestMode"] == "on"


def test_missing_public_key_is_a_config_error(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, "sqlite://", BrokerInfo("amqtt", "127.0.0.1", 1), "p")
    with pytest.raises(ConfigError, match="PUBLIC_KEY_PATH"):
        TokenVerifier.from_settings(
            replace(settings, auth_disabled=False, public_key_path=tmp_path / "absent.pem")
        )
    assert TokenVerifier.from_settings(replace(settings, auth_disabled=True)).disabled


def test_key_is_read_where_the_auth_service_writes_it_and_from_the_old_place(
    tmp_path: Path, keys: Keys, caplog: pytest.LogCaptureFixture
) -> None:
    from compute.config import load_settings

    settings = load_settings({"CL_SERVER_DIR": str(tmp_path)})
    (tmp_path / "public_key.pem").write_bytes(keys.public_pem)  # the old location
    assert TokenVerifier.from_settings(settings).public_key == keys.public_pem.decode()
    assert "older location" in caplog.text
    other = _pair()[1]
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "public_key.pem").write_bytes(other)  # CL Server's auth service's place
    assert TokenVerifier.from_settings(settings).public_key == other.decode()
