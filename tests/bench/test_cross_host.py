"""compute_bench.cross_host without hosts: it says why and measures nothing (the figures
themselves need root and minutes: docs/performance.md)."""

from __future__ import annotations

import pytest

from compute_bench import cross_host


def test_without_network_namespaces_it_says_why_and_stops(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(cross_host, "unavailable", lambda: "needs root (network namespaces)")
    monkeypatch.setattr(cross_host, "deployment", None)  # reaching it would fail the test
    assert cross_host.main(["--rounds", "1"]) == 0
    assert capsys.readouterr().out == "cross-host figures skipped: needs root (network namespaces)\n"
