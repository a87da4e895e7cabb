"""What the server shows as it changes: every job change for live views, the queue summaries."""
