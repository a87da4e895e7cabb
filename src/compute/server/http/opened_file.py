"""A download served from the descriptor the route opened, never from a path.

The route opens and checks the file (JobStorage.open_file: one name at a time, no link
followed); Starlette's FileResponse would stat and open the *path* again while it sends, by
which time the name may be a link to anything on the server. This response reads only the
descriptor.
"""

from __future__ import annotations

import contextlib
import os
import weakref
from collections.abc import AsyncIterator, Mapping

import anyio
from fastapi.responses import FileResponse
from starlette.types import Receive, Scope, Send


class OpenedFileResponse(FileResponse):
    """FileResponse (Content-Length, ETag, Last-Modified, HEAD, Range) over an open descriptor,
    which it owns: closed once the response is sent, or when it is dropped unsent."""

    def __init__(
        self, fd: int, *, filename: str, media_type: str, headers: Mapping[str, str] | None = None
    ) -> None:
        self.fd = fd
        self._close = weakref.finalize(self, os.close, fd)
        # The path is only what FileResponse would fall back to: the same open file, by its
        # descriptor (/dev/fd/N reopens the open file, not the name it was opened by).
        super().__init__(
            f"/dev/fd/{fd}",
            headers=headers,
            media_type=media_type,
            filename=filename,
            stat_result=os.fstat(fd),
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._close()

    @contextlib.asynccontextmanager
    async def _open_file(self) -> AsyncIterator[anyio.AsyncFile[bytes]]:
        # A duplicate, so that the response's own descriptor is closed in one place (__call__).
        file = anyio.wrap_file(os.fdopen(os.dup(self.fd), "rb"))
        try:
            yield file
        finally:
            with anyio.CancelScope(shield=True):  # as FileResponse: closed even when cancelled
                await file.aclose()
