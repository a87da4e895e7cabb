"""A job's way through the server, each step after the database changed: submit, dispatch, ingest,
cancel, operators' actions, pause, rescue, and the live worker map that hands Wills to the rescue."""
