"""The old name of tests.support, kept so tests written against it still import: use tests.support."""

from __future__ import annotations

from tests.support import *  # noqa: F403
from tests.support import wait_until as wait_for_sync  # noqa: F401
