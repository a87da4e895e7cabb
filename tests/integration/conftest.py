"""Integration tests: every payload the product publishes is checked against the AsyncAPI document."""

from __future__ import annotations

import pytest

from tests.support.asyncapi_payloads import PayloadChecker


@pytest.fixture(autouse=True)
def _payloads_follow_asyncapi(published_payloads_follow_asyncapi: PayloadChecker) -> PayloadChecker:
    return published_payloads_follow_asyncapi
