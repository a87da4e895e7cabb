"""What the HTTP API answers when something raises: a clear status and reason, never a traceback.

- the client's fault: an upload too large (413), a path outside the job (403) or one no file can
  have (400: NUL, a name too long), a value the database refuses (400: NUL on PostgreSQL), a
  conflicting write (409);
- a database that is locked or does not answer: 503 with `Retry-After` and the reason;
- a full disk: 507; no file descriptor left (`EMFILE`, `ENFILE`): 503 with `Retry-After`;
- anything else is a bug: 500 with an id to find the logged traceback by, nothing more.

Every reply renders (`rendering.SafeJSONResponse`): a 422 that echoes a NaN or a lone surrogate
from the request is still JSON.
"""

from __future__ import annotations

import errno
import logging
import uuid

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.utils import is_body_allowed_for_status_code
from sqlalchemy.exc import DataError, IntegrityError, SQLAlchemyError
from starlette.exceptions import HTTPException
from starlette.responses import Response

from compute.errors import first_line
from compute.server.dbcalls import DatabaseUnavailable, is_unavailable
from compute.server.http.rendering import SafeJSONResponse as JSONResponse
from compute.storage import BadPath, PathOutsideJob, UploadTooLarge

log = logging.getLogger(__name__)

#: File-system errors a client's name or path causes.
_CLIENT_ERRNOS = {errno.ENAMETOOLONG, errno.EINVAL, errno.EILSEQ}
_DISK_FULL = {errno.ENOSPC, errno.EDQUOT}
_NO_DESCRIPTORS = {errno.EMFILE, errno.ENFILE}
#: Seconds a client is asked to wait when the server ran out of file descriptors.
BUSY_RETRY_AFTER = 5


def _out_of_descriptors(exc: BaseException | None) -> bool:
    """Whether `exc`, or what it was raised from, is EMFILE/ENFILE."""
    seen = 0
    while exc is not None and seen < 5:
        if isinstance(exc, OSError) and exc.errno in _NO_DESCRIPTORS:
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def _busy() -> JSONResponse:
    return _detail(
        503,
        "the server has no file descriptor free now; retry shortly",
        {"Retry-After": str(BUSY_RETRY_AFTER)},
    )


def _detail(status: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


def _bug(request: Request, exc: BaseException) -> JSONResponse:
    error_id = uuid.uuid4().hex[:12]
    log.error(
        "%s %s failed (error id %s)",
        request.method,
        request.url.path[:200],
        error_id,
        exc_info=(type(exc), exc, exc.__traceback__),
    )
    return _detail(500, f"internal error; the server log has the details under id {error_id}")


def install_error_handlers(app: FastAPI) -> None:
    # FastAPI's own two handlers answer with Starlette's JSONResponse, which cannot render a
    # NaN or a lone surrogate echoed from the request: the same replies, through ours.
    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": jsonable_encoder(exc.errors())}, status_code=422)

    @app.exception_handler(HTTPException)
    async def _http(_request: Request, exc: HTTPException) -> Response:
        if exc.status_code == 400 and _out_of_descriptors(exc.__cause__):
            return _busy()  # FastAPI turns any error while parsing a form into a 400
        if not is_body_allowed_for_status_code(exc.status_code):
            return Response(status_code=exc.status_code, headers=exc.headers)
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(UploadTooLarge)
    async def _too_large(_request: Request, exc: UploadTooLarge) -> JSONResponse:
        return _detail(413, str(exc))

    @app.exception_handler(PathOutsideJob)
    async def _outside(_request: Request, exc: PathOutsideJob) -> JSONResponse:
        return _detail(403, str(exc))

    @app.exception_handler(BadPath)
    async def _bad_path(_request: Request, exc: BadPath) -> JSONResponse:
        return _detail(400, str(exc))

    @app.exception_handler(DatabaseUnavailable)
    async def _unavailable(_request: Request, exc: DatabaseUnavailable) -> JSONResponse:
        return _detail(503, str(exc), {"Retry-After": str(exc.retry_after)})

    @app.exception_handler(SQLAlchemyError)
    async def _database(request: Request, exc: SQLAlchemyError) -> JSONResponse:
        # Calls made outside RouteDatabase (a plugin's own reads, guest mode) end up here.
        if _out_of_descriptors(exc):
            return _busy()
        if is_unavailable(exc):
            db = request.app.state.services.db
            return _detail(
                503,
                f"the database does not answer now; retry in {db.retry_after} s",
                {"Retry-After": str(db.retry_after)},
            )
        if isinstance(exc, IntegrityError):
            return _detail(409, "conflicts with a stored record")
        if isinstance(exc, DataError):
            # The database refused a value the request carried (PostgreSQL: a NUL in text).
            reason = first_line(exc.orig) if exc.orig is not None else "invalid value"
            return _detail(400, f"the request holds a value the database cannot take: {reason}")
        return _bug(request, exc)

    @app.exception_handler(OSError)
    async def _os_error(request: Request, exc: OSError) -> JSONResponse:
        if exc.errno in _CLIENT_ERRNOS:
            return _detail(400, f"the request names a path the server cannot use: {exc.strerror}")
        if exc.errno in _DISK_FULL:
            return _detail(507, "the server's storage is full")
        if exc.errno in _NO_DESCRIPTORS:
            return _busy()
        return _bug(request, exc)

    @app.exception_handler(ValueError)
    async def _value_error(request: Request, exc: ValueError) -> JSONResponse:
        if "null byte" in str(exc) or "null character" in str(exc):  # a NUL reached os or a driver
            return _detail(400, "the request contains a NUL character")
        return _bug(request, exc)

    @app.exception_handler(Exception)
    async def _anything(request: Request, exc: Exception) -> JSONResponse:
        if _out_of_descriptors(exc):
            return _busy()
        return _bug(request, exc)
