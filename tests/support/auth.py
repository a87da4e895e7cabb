"""Signing in as CL Server's auth service would let a user: an ES256 key pair, bearer tokens
signed with it, and settings that verify them."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from compute.config import Settings

#: (private key PEM, path of the public key PEM), as CL Server's auth service writes it.
SigningKey = tuple[bytes, Path]


def make_signing_key(folder: Path) -> SigningKey:
    """A new key pair; the public key is written to `folder`/public_key.pem."""
    key = ec.generate_private_key(ec.SECP256R1())
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path = folder / "public_key.pem"
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
