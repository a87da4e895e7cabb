"""Persistence: the SQL database is the source of truth."""
