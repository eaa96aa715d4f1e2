"""Request-side safety: API key check, upload size limit, body time-out, quiet client disconnects,
Host checking, and paths confined to ``--data-dir``."""
from __future__ import annotations

import asyncio
import hmac
import logging
import os
import re
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path, PurePosixPath

from fastapi import HTTPException
from starlette.requests import ClientDisconnect

from ..errors import UsageError
from .errors import BadRequest, NotFound, TooLarge, Unauthorized

log = logging.getLogger(__name__)

Scope = dict
Message = dict
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


# ----------------------------------------------------------------------------- API key
def read_api_key_file(path: str | os.PathLike) -> str:
    """The key in ``path`` (surrounding whitespace stripped); warns if others may read the file."""
    p = Path(path)
    try:
        key = p.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"--api-key-file {p}: cannot read it ({exc.__class__.__name__})") from None
    if not key:
        raise UsageError(f"--api-key-file {p} is empty")
    if any(c.isspace() for c in key):
        raise UsageError(f"--api-key-file {p}: the key must be one line without spaces")
    if os.name == "posix" and p.stat().st_mode & (stat.S_IRGRP | stat.S_IROTH):
        log.warning("--api-key-file %s is readable by other users; consider chmod 600", p)
    return key


def check_api_key(expected: str | None, authorization: str | None) -> None:
    """Raise Unauthorized unless ``authorization`` is ``Bearer <expected>`` (constant-time compare).

    With no ``expected`` key every request passes.
    """
    if expected is None:
        return
    if not authorization:
        raise Unauthorized("missing API key: send 'Authorization: Bearer <key>'")
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("Authorization must be 'Bearer <key>'")
    if not hmac.compare_digest(token.strip().encode("utf-8"), expected.encode("utf-8")):
        raise Unauthorized("invalid API key")


# ----------------------------------------------------------------------------- upload size
class BodyLimitMiddleware:
    """ASGI middleware: 413 for a request body over ``max_bytes`` (declared or streamed)."""

    def __init__(self, app, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = int(max_bytes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_bytes
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await _send_json(send, 400, "Content-Length is not a number")
                    return
                if declared > limit:
                    await _send_json(send, 413, _too_large(declared, limit))
                    return
        seen = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > limit:
                    raise _BodyTooLarge(_too_large(seen, limit))
            return msg

        async def tracking_send(msg: Message) -> None:
            nonlocal started
            if msg["type"] == "http.response.start":
                started = True
            await send(msg)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _BodyTooLarge:
            if not started:
                await _send_json(send, 413, _too_large(seen, limit))


class _BodyTooLarge(HTTPException):
    """Raised from ``receive``; an HTTPException so that FastAPI's body parsing passes it on."""

    def __init__(self, detail: str) -> None:
        super().__init__(status_code=413, detail=detail)


def _too_large(size: int, limit: int) -> str:
    return (f"request body of {size / 2**20:.1f} MiB exceeds the server's limit of {limit / 2**20:.1f} MiB "
            "(--max-upload-mb)")


async def _send_json(send: Send, status: int, detail: str, close: bool = False) -> None:
    import json

    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


# ----------------------------------------------------------------------------- Host header
def host_name(value: str) -> str:
    """The host name of a ``Host`` header, lower case, without port and brackets (``[::1]:80`` -> ``::1``)."""
    v = value.strip().lower()
    if v.startswith("["):
        return v[1:v.find("]")] if "]" in v else v
    if v.count(":") == 1:
        v = v.partition(":")[0]
    return v.rstrip(".")


class HostCheckMiddleware:
    """ASGI middleware: 400 unless the ``Host`` header names this server (DNS rebinding defence).

    Accepted: loopback names and addresses (``localhost``, ``127.0.0.1``, ``[::1]``, any port) and the
    names in ``allowed`` (``--allowed-host``). A request without a Host header (HTTP/1.0) passes."""

    def __init__(self, app, allowed: frozenset[str]) -> None:
        from .settings import is_loopback

        self.app = app
        self.allowed = frozenset(host_name(h) for h in allowed)
        self._is_loopback = is_loopback

    def ok(self, host: str) -> bool:
        name = host_name(host)
        return name in self.allowed or self._is_loopback(name)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            for name, value in scope.get("headers", []):
                if name == b"host":
                    host = value.decode("latin-1")
                    if not self.ok(host):
                        log.info("refused a request for Host %r", host[:100])
                        await _send_json(send, 400, f"Host {host[:100]!r} is not served here: this server answers "
                                         "to localhost, 127.0.0.1 and [::1] (add a name with --allowed-host)")
                        return
                    break
        await self.app(scope, receive, send)


class OriginCheckMiddleware:
    """ASGI middleware: 403 for a browser-route request from another site (cross-site request forgery).

    Under ``prefixes`` (the viewer's API), a request that carries an ``Origin`` header must come from
    this server's own origin (scheme://host:port matching the ``Host`` header). Clients that are not
    browsers send no Origin and pass."""

    def __init__(self, app, prefixes: tuple[str, ...] = ("/api/viewer",)) -> None:
        self.app = app
        self.prefixes = tuple(prefixes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope.get("path", "").startswith(self.prefixes):
            origin = host = None
            for name, value in scope.get("headers", []):
                if name == b"origin":
                    origin = value.decode("latin-1").strip().lower()
                elif name == b"host":
                    host = value.decode("latin-1").strip().lower()
            if origin is not None:
                netloc = origin.partition("://")[2] if "://" in origin else ""
                if not netloc or netloc != host:
                    log.info("refused a %s %s from Origin %r", scope.get("method"), scope.get("path"), origin[:100])
                    await _send_json(send, 403, f"cross-site request from Origin {origin[:100]!r} refused: "
                                     "the viewer's API answers only its own page")
                    return
        await self.app(scope, receive, send)


# ----------------------------------------------------------------------------- access log
class TokenMaskFilter(logging.Filter):
    """Masks session tokens (32 hex digits, in viewer and MONAI Label paths) in uvicorn's access log.

    A token in a URL is a bearer credential for its session; the log keeps its first 8 digits."""

    _TOKEN = re.compile(r"(?<=/)([0-9a-fA-F]{8})[0-9a-fA-F]{24}(?=[/?#]|$)")

    def mask(self, text: str) -> str:
        return self._TOKEN.sub(r"\1…", text)

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(self.mask(a) if isinstance(a, str) else a for a in record.args)
        elif isinstance(record.msg, str):
            record.msg = self.mask(record.msg)
        return True


def install_access_log_filter(name: str = "uvicorn.access") -> None:
    """Attach :class:`TokenMaskFilter` to the access logger once (uvicorn's log config keeps filters)."""
    logger = logging.getLogger(name)
    if not any(isinstance(f, TokenMaskFilter) for f in logger.filters):
        logger.addFilter(TokenMaskFilter())


# ----------------------------------------------------------------------------- body time-out, disconnects
class RequestGuardMiddleware:
    """ASGI middleware: 408 when the request body stalls, one log line when the client goes away.

    Every wait for the next piece of the body is bounded by ``body_timeout_s`` (a client that sends the
    headers and part of a body, then nothing, would otherwise hold the connection and its buffered
    upload forever); the 408 closes the connection. A client that disconnects during its upload is logged
    in one line (no traceback)."""

    def __init__(self, app, body_timeout_s: float) -> None:
        self.app = app
        self.timeout = float(body_timeout_s)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        body_done = False
        received = 0
        started = False
        what = f"{scope.get('method', '?')} {scope.get('path', '?')}"

        async def guarded_receive() -> Message:
            nonlocal body_done, received
            if body_done:  # after the body: waiting for a disconnect is not bounded
                return await receive()
            try:
                msg = await asyncio.wait_for(receive(), self.timeout)
            except asyncio.TimeoutError:
                exc = _BodyTimeout(f"the request body stalled: nothing received for {self.timeout:g} s "
                                   f"after {received} bytes (--body-timeout)")
                log.warning("%s: %s; answering 408 and closing the connection", what, exc.detail)
                raise exc from None
            if msg["type"] == "http.request":
                received += len(msg.get("body", b""))
                body_done = not msg.get("more_body", False)
            else:
                body_done = True
            return msg

        async def tracking_send(msg: Message) -> None:
            nonlocal started
            if msg["type"] == "http.response.start":
                started = True
            await send(msg)

        try:
            await self.app(scope, guarded_receive, tracking_send)
        except ClientDisconnect:
            log.warning("%s: the client disconnected during the request (%d bytes of body received)",
                        what, received)
        except _BodyTimeout as exc:
            if not started:
                await _send_json(send, 408, exc.detail, close=True)


class _BodyTimeout(HTTPException):
    """Raised from ``receive``; an HTTPException so that FastAPI's body parsing passes it on (408)."""

    def __init__(self, detail: str) -> None:
        super().__init__(status_code=408, detail=detail, headers={"Connection": "close"})


def check_size(nbytes: int, limit: int, what: str) -> None:
    """Raise TooLarge if an array of ``nbytes`` would exceed ``limit`` bytes."""
    if nbytes > limit:
        raise TooLarge(f"{what} would need {nbytes / 2**20:.1f} MiB, more than the server allows "
                       f"({limit / 2**20:.1f} MiB)")


def memory_limit_bytes(fraction: float = 0.25) -> int:
    """``fraction`` of physical memory (nnInteractive refuses target buffers above 25 %)."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        total = 16 * 2**30
    return int(total * fraction)


# ----------------------------------------------------------------------------- data dir
def resolve_data_path(data_dir: Path | None, relative: str) -> Path:
    """A file (or DICOM folder) named relative to ``data_dir``, never outside it.

    Rejects absolute paths, ``..``, NUL and symlinks that lead out of ``data_dir``
    (the resolved path must lie inside the resolved folder).
    """
    if data_dir is None:
        raise BadRequest("this server has no --data-dir: upload the file instead")
    rel = str(relative or "").replace("\\", "/")
    if not rel or "\x00" in rel:
        raise BadRequest("empty or malformed path")
    pure = PurePosixPath(rel)
    if pure.is_absolute() or ".." in pure.parts or (len(rel) > 1 and rel[1] == ":"):
        raise BadRequest(f"path {relative!r} must be relative to --data-dir without '..'")
    root = Path(data_dir).resolve()
    try:
        target = (root / Path(*pure.parts)).resolve(strict=True)
    except (FileNotFoundError, NotADirectoryError):
        raise NotFound(f"{relative!r} does not exist under --data-dir") from None
    except (OSError, RuntimeError) as exc:  # symlink loops, permissions
        raise BadRequest(f"{relative!r}: {exc.__class__.__name__}") from None
    if target != root and root not in target.parents:
        raise BadRequest(f"{relative!r} leads outside --data-dir")
    return target
