"""compute_bench.harness: what the tests and the benchmark share to start Compute as processes."""

from __future__ import annotations

from compute.config import variable_names
from compute_bench import probes
from compute_bench.harness import scrubbed_environ


def test_scrubbed_environ_drops_every_setting_and_the_launchers_variables() -> None:
    shell = {name: "from the shell" for name in variable_names()}
    shell.update({probes.ENV: "/tmp/p", probes.KINDS_ENV: "sql", "PATH": "/usr/bin", "HOME": "/home/x"})
    assert scrubbed_environ(environ=shell) == {"PATH": "/usr/bin", "HOME": "/home/x"}


def test_scrubbed_environ_drops_extra_names() -> None:
    assert scrubbed_environ(["MINE"], environ={"MINE": "1", "LANG": "C"}) == {"LANG": "C"}
