"""Helpers of the integration tests: an ES256 key pair and bearer tokens to sign in with, jobs
stored directly, and the check of every payload published through MqttBus against the AsyncAPI
document."""

from __future__ import annotations

import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import jwt
import pytest
from cl_ml_tools import Job
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import update

from compute.config import Settings
from compute.db.tables import jobs_table
from tests.asyncapi_check import published_payloads_follow_asyncapi
from tests.conftest import Server

__all__ = ["published_payloads_follow_asyncapi"]

SigningKey = tuple[bytes, Path]


@pytest.fixture(scope="session")
def signing_key(tmp_path_factory: pytest.TempPathFactory) -> SigningKey:
    """(private key PEM, path of the public key PEM), as CL Server's auth service writes it."""
    key = ec.generate_private_key(ec.SECP256R1())
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path = tmp_path_factory.mktemp("keys") / "public_key.pem"
    path.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return private, path


def bearer(signing_key: SigningKey, user: str, *permissions: str, **claims: Any) -> dict[str, str]:
    """Headers of a request by `user` (permission `ai_inference_support` unless others are given)."""
    payload = {
        "id": user,
        "permissions": list(permissions or ["ai_inference_support"]),
        "exp": int(time.time()) + 300,
        **claims,
    }
    return {"Authorization": "Bearer " + jwt.encode(payload, signing_key[0], algorithm="ES256")}


def secured(settings: Settings, signing_key: SigningKey) -> Settings:
    """`settings` with auth on, verifying tokens signed by `signing_key`."""
    return replace(settings, auth_disabled=False, public_key_path=signing_key[1])


def add_job(server: Server, task: str, *, by: str | None = None, priority: int = 5) -> str:
    """A job stored and hinted as a plugin route would, without an upload (params empty)."""
    job_id = str(uuid.uuid4())
    server.services.submitter.add_job(
        Job(job_id=job_id, task_type=task, params={}), created_by=by, priority=priority
    )
    return job_id


def set_columns(server: Server, job_id: str, **values: Any) -> None:
    """Put a job in a state directly (finished, claimed by a named worker ...)."""
    with server.services.repo.engine.begin() as conn:
        conn.execute(update(jobs_table).where(jobs_table.c.job_id == job_id).values(**values))
