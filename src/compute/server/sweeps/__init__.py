"""The server's background passes: orphan folders, retention, forgetting workers, priority aging."""
