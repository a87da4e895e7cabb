"""Where a claimed job's plugin works: the server's job folder, or a scratch copy of it.

`SharedFolders` (the worker sees the server's job folders, worker/disk_sharing.py): the plugin
works in the job folder itself and nothing travels. `RemoteFolders`: before the plugin runs, the
job's inputs are fetched into the worker's scratch folder, which the plugin takes for the job
folder; once it completed, its outputs go to the server (staged there until the completion is
persisted), and only then is the completion reported. The scratch folder goes with the job.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Protocol

from compute.files.outputs import Fingerprint, collect_outputs, fingerprints
from compute.files.wire import BadTransfer
from compute.worker.attempt import Attempt
from compute.worker.file_client import FileClient, Transfer, TransferFailed
from compute.worker.scratch import Scratch

log = logging.getLogger(__name__)


class JobFolder(Protocol):
    async def fetch(self) -> None:
        """Have the job's inputs where its plugin looks for them."""

    async def deliver(self) -> None:
        """Have the completed plugin's outputs where the server serves them from."""


class JobFolders(Protocol):
    def open(self, attempt: Attempt) -> contextlib.AbstractAsyncContextManager[JobFolder]:
        """The attempt's folder, for as long as the attempt runs."""

    async def close(self) -> None: ...


class _InPlace:
    async def fetch(self) -> None:
        pass

    async def deliver(self) -> None:
        pass


class SharedFolders:
    """The plugin works in the server's job folder: nothing to fetch or deliver."""

    _folder = _InPlace()

    @contextlib.asynccontextmanager
    async def open(self, attempt: Attempt) -> AsyncIterator[JobFolder]:
        yield self._folder

    async def close(self) -> None:
        pass


class RemoteFolders:
    """The plugin works in a scratch folder; the files travel over HTTP (worker/file_client.py)."""

    def __init__(self, scratch: Scratch, client: FileClient) -> None:
        self.scratch = scratch
        self.client = client

    @contextlib.asynccontextmanager
    async def open(self, attempt: Attempt) -> AsyncIterator[JobFolder]:
        try:
            yield _ScratchFolder(self, attempt)
        finally:
            await asyncio.to_thread(self.scratch.remove, attempt.job_id)

    async def close(self) -> None:
        await self.client.aclose()
        self.scratch.close()


class _ScratchFolder:
    def __init__(self, folders: RemoteFolders, attempt: Attempt) -> None:
        self.client = folders.client
        self.attempt = attempt
        self.root = folders.scratch.job_dir(attempt.job_id)
        #: The inputs as they arrived: a file still like this is not an output.
        self.inputs: dict[str, Fingerprint] = {}

    async def fetch(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        done = await self.client.fetch_inputs(self.attempt, self.root)
        self.inputs = await asyncio.to_thread(fingerprints, self.root)
        _log(self.attempt, "inputs", "fetched its inputs", done)

    async def deliver(self) -> None:
        try:
            outputs = await asyncio.to_thread(collect_outputs, self.root, self.inputs)
        except BadTransfer as exc:
            raise TransferFailed(str(exc), retryable=False) from None
        done = await self.client.send_outputs(self.attempt, self.root, outputs)
        _log(self.attempt, "outputs", "sent its outputs", done)


def _log(attempt: Attempt, files: str, what: str, done: Transfer) -> None:
    log.info(
        "job %s: %s: %d file(s), %.1f MB in %.0f ms%s",
        attempt.job_id,
        what,
        done.files,
        done.bytes / 1e6,
        done.seconds * 1000,
        f" ({done.tries} tries)" if done.tries > 1 else "",
        extra={
            **attempt.log_fields(),
            "transfer": files,
            "files": done.files,
            "bytes": done.bytes,
            "ms": round(done.seconds * 1000, 1),
            "tries": done.tries,
        },
    )
