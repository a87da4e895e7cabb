"""Compute: cl_ml_tools jobs dispatched over MQTT."""

from __future__ import annotations

__version__ = "0.1.0"
