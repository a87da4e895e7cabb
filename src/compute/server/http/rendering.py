"""JSON replies that always render, whatever values they carry.

Strict JSON has no NaN or Infinity, and UTF-8 has no lone surrogates (`"\\ud800"` in a JSON
body decodes to one). Both reach replies: a 422 echoes the client's input (`{"priority": NaN}`),
and a stored `task_output` or `params` holds what a plugin or a form gave. Starlette's
JSONResponse raises on either, which turned a client's bad input into a 500. `SafeJSONResponse`
renders the usual way first (no cost on the common path) and only when that fails replaces what
cannot be rendered: a non-finite number becomes its name as a string ("NaN", "Infinity",
"-Infinity"), a lone surrogate becomes U+FFFD.
"""

from __future__ import annotations

import json
import math
from typing import Any

from starlette.responses import JSONResponse

_NAMES = {math.inf: "Infinity", -math.inf: "-Infinity"}


def json_safe(value: Any) -> Any:
    """`value` with every non-finite float and lone surrogate replaced (lists, tuples and dicts
    walked; anything else as it is)."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else _NAMES[value]
    if isinstance(value, str):
        return _text(value)
    if isinstance(value, dict):
        return {json_safe(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def _text(value: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        # Pairs that belong together stay one character; a lone half becomes U+FFFD.
        return value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return value


def dumps(content: Any) -> bytes:
    """`content` as strict JSON in UTF-8, made safe first when it would not render."""
    try:
        return _strict(content)
    except (ValueError, UnicodeEncodeError):
        return _strict(json_safe(content))


def _strict(content: Any) -> bytes:
    return json.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode("utf-8")


class SafeJSONResponse(JSONResponse):
    """The app's default response class, and what every error handler answers with."""

    def render(self, content: Any) -> bytes:
        return dumps(content)
