"""Per-task retry and timeout policy.

Defaults come from JOB_MAX_RETRIES / JOB_TIMEOUT / RETRY_BACKOFF_*; TASK_POLICIES (JSON) overrides
them per task type, e.g. {"image_conversion": {"max_retries": 1, "timeout": 60}}.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, fields, replace
from typing import Any

from compute.errors import ConfigError


@dataclass(frozen=True)
class TaskPolicy:
    #: Retries after the first attempt (CL Server's jobs.max_retries): attempts = max_retries + 1.
    max_retries: int = 3
    #: Seconds a job may run before it is stopped and treated as a crash (retried); 0 = no limit.
    timeout: float = 600.0
    #: First retry delay in seconds; doubles per attempt up to backoff_max, with full jitter.
    backoff_base: float = 1.0
    backoff_max: float = 60.0
    #: Retry also when the plugin itself reports an error (default: fail at once).
    retry_plugin_errors: bool = False

    def backoff_ms(self, attempt: int, rng: random.Random | None = None) -> int:
        """Delay before attempt `attempt + 1`: exponential, capped, with full jitter."""
        ceiling = min(self.backoff_max, self.backoff_base * 2 ** max(0, attempt - 1))
        return int((rng or random).uniform(ceiling / 2, ceiling) * 1000)


class Policies:
    def __init__(self, default: TaskPolicy, per_task: dict[str, TaskPolicy] | None = None) -> None:
        self.default = default
        self.per_task = per_task or {}

    def for_task(self, task_type: str) -> TaskPolicy:
        return self.per_task.get(task_type, self.default)

    @classmethod
    def parse(cls, default: TaskPolicy, raw: str | None) -> Policies:
        if not raw:
            return cls(default)
        try:
            data = json.loads(raw)
        except ValueError as exc:
            raise ConfigError(f"TASK_POLICIES is not JSON: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError("TASK_POLICIES must be a JSON object of task type -> policy")
        known = {f.name for f in fields(TaskPolicy)}
        per_task: dict[str, TaskPolicy] = {}
        for task, values in data.items():
            if not isinstance(values, dict) or set(values) - known:
                raise ConfigError(f"TASK_POLICIES[{task!r}]: expected keys among {sorted(known)}")
            per_task[task] = replace(default, **_typed(task, values))
        return cls(default, per_task)


def _typed(task: str, values: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in values.items():
        if key == "retry_plugin_errors":
            out[key] = bool(value)
            continue
        try:
            number = int(value) if key == "max_retries" else float(value)
        except (TypeError, ValueError, OverflowError):
            number = None
        if number is None or isinstance(value, bool) or not math.isfinite(number) or number < 0:
            raise ConfigError(f"TASK_POLICIES[{task!r}].{key} must be a non-negative number, got {value!r}")
        out[key] = number
    return out
