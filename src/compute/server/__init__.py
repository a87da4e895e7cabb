"""compute-server: the HTTP API over the database, and the bus side that persists worker events.

`app.py` builds the FastAPI app over the parts `services.py` builds and runs; `serving.py` is the
uvicorn server. The sub-packages, by purpose:

- `http/`: what every request meets before and after its route (auth, dependencies, body limits,
  error replies, response models, SSE, the plugin routes' wrapper);
- `routes/`: the routes, one module per resource;
- `flow/`: a job's way through the server: submitted, dispatched, its workers' events ingested,
  cancelled, changed by an operator, rescued from a lost worker; task types paused; the live
  worker map;
- `live/`: what the server shows as it changes: the change feed (SSE) and the queue summaries;
- `sweeps/`: the background passes (orphan folders, retention, forgetting workers, aging).

`access.py` (users, tokens, whose jobs a caller may see), `dbcalls.py` (database calls with a
deadline), `loopsafe.py` (bus calls from database threads) and `metrics.py` (Prometheus) serve
all of them.
"""
