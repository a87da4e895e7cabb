"""Compute: cl_ml_tools jobs dispatched over MQTT."""

__version__ = "0.1.0"
