"""The worker: wakes on MQTT hints, claims from the database, runs cl_ml_tools plugins."""
