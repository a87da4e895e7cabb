"""The MQTT dispatch bus."""
