"""The HTTP server: plugin routes, job routes, and the bus side that persists worker events."""
