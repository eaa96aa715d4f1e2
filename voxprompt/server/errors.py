"""HTTP errors of the server and the handlers that turn every user mistake into a 4xx JSON body.

Bodies are ``{"detail": "<what is wrong>"}`` (FastAPI's and nnInteractive's shape). Typed
:class:`~voxprompt.errors.VoxpromptError` raised by the Session or the readers become 400
(``ImageReadError`` 400 too: the upload is bad); only genuine bugs give 500.
"""
from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import ImageTooLarge, SessionTooLarge, VoxpromptError

log = logging.getLogger(__name__)


class ApiError(Exception):
    """An HTTP error with a message for the client."""

    status = 400

    def __init__(self, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = headers or {}


class BadRequest(ApiError):
    status = 400


class Unauthorized(ApiError):
    status = 401

    def __init__(self, detail: str) -> None:
        super().__init__(detail, {"WWW-Authenticate": "Bearer"})


class NotFound(ApiError):
    status = 404


class LeaseGone(ApiError):
    """The lease token is missing, unknown, released or reaped (nnInteractive: 410)."""

    status = 410


class TooLarge(ApiError):
    status = 413


class ClientGone(ApiError):
    """The client disconnected while its request was running; the work stopped (nobody reads this)."""

    status = 499  # "client closed request" (nginx)


class AtCapacity(ApiError):
    """Every session slot is taken (503 + Retry-After)."""

    status = 503

    def __init__(self, detail: str, retry_after_s: int) -> None:
        super().__init__(detail, {"Retry-After": str(int(retry_after_s))})


def _json(status: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


def _validation_detail(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body", "query", "header", "path"))
        parts.append(f"{loc or 'request'}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def install_error_handlers(app: FastAPI) -> None:
    """Map ApiError, VoxpromptError, validation and HTTP errors to ``{"detail": ...}`` bodies."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return _json(exc.status, exc.detail, exc.headers)

    @app.exception_handler(ImageTooLarge)
    @app.exception_handler(SessionTooLarge)
    async def _too_large(request: Request, exc: ImageTooLarge | SessionTooLarge) -> JSONResponse:
        log.info("%s %s: %s", request.method, request.url.path, exc)
        return _json(413, f"{exc} (--session-memory-mb)")

    @app.exception_handler(VoxpromptError)
    async def _vox_error(request: Request, exc: VoxpromptError) -> JSONResponse:
        log.info("%s %s: %s", request.method, request.url.path, exc)
        return _json(400, str(exc))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _json(400, _validation_detail(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"no endpoint {request.method} {request.url.path}"
        return _json(exc.status_code, detail, getattr(exc, "headers", None))
