"""The `compute` command: a client of the HTTP API for people and scripts."""
