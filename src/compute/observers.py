"""Where a tool outside the product observes it at run time.

The benchmark's probes (compute_bench.probes) register callbacks here rather than replace
product methods, so a rename in the product fails them at once instead of leaving them measuring
nothing. Nothing registers in production: an empty list costs one truth test.

* `plugin_runs`: each is entered around one plugin run (`PluginTask.execute`), given the job id;
  around a batch (`PluginTask.execute_batch`) once per job of it, so each job's run spans the batch;
* `model_loads`: each is entered around the first load of a model file in this process
  (`plugins/models.py`), given the file's name;
* `events_applied`: each is called with the outcomes of a batch of worker events once their
  transaction has committed (`JobTransitions.apply_events`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Any

Around = Callable[[str], AbstractContextManager[object]]

plugin_runs: list[Around] = []
model_loads: list[Around] = []
#: Called with `list[db.transitions.Outcome]` (typed loosely: db/ imports this module).
events_applied: list[Callable[[Sequence[Any]], None]] = []


@contextlib.contextmanager
def around(observers: Sequence[Around], *keys: str) -> Iterator[None]:
    """Inside every one of `observers`, once for each of `keys`."""
    with contextlib.ExitStack() as stack:
        for observer in observers:
            for key in keys:
                stack.enter_context(observer(key))
        yield
