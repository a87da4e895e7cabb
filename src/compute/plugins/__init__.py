"""Task plugins: the project's own (one folder each: route, task, algorithm) and their discovery.

Each plugin folder holds `route.py` (the `POST /jobs/<task>` form, registered in the
`cl_ml_tools.routes` entry-point group), `task.py` (the `ComputeModule` a worker runs, in the
`cl_ml_tools.tasks` group) and `algorithm.py` (the work itself, with no web or job code).
`registry.py` finds them; `plugin_task.py` (their base class), `intake.py`, `media.py`,
`models.py` and `tools.py` are what the plugins share.
"""
