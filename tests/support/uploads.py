"""Uploads of one job of each task type, as the benchmark's plugins section submits them (the
cross-host tests submit them through `HostedCompute.submit`)."""

from __future__ import annotations

from compute_bench.inputs import Inputs
from compute_bench.plugins import PLUGINS, Source


def uploads(inputs: Inputs) -> list[tuple[str, dict[str, str], str, bytes, str]]:
    """(task type, form fields, file name, content, MIME type) of one job of each task type."""
    made = []
    for plugin in PLUGINS:
        source = Source(plugin, inputs)
        made.append((source.task, source.form, source.name, source.content, source.mime))
    return made
