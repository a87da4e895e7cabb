"""Test-only helpers that run inside the processes a test starts (a plugin and a launcher)."""
