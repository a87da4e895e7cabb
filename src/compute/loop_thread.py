"""An event loop on a daemon thread of its own, closed when it stops.

A loop that is stopped but never closed keeps its selector and self-pipe open until the garbage
collector finds it (a ResourceWarning); the thread closes it as soon as `run_forever` returns.
The plugin thread (worker/plugin_thread.py) and the embedded broker (broker.py) run on one.
"""

from __future__ import annotations

import asyncio
import threading


def loop_thread(name: str) -> tuple[asyncio.AbstractEventLoop, threading.Thread]:
    """A new loop and the (not yet started) thread that runs it until `loop.stop()`, then closes it."""
    loop = asyncio.new_event_loop()

    def run() -> None:
        try:
            loop.run_forever()
        finally:
            loop.close()

    return loop, threading.Thread(target=run, name=name, daemon=True)
