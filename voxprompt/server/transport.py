"""uvicorn's HTTP/1.1 protocol with a header time-out: a request's headers must arrive in time.

uvicorn (h11) bounds only the idle time between requests (``timeout_keep_alive``); a client that
connects and then sends nothing, or half its headers, would hold the connection forever. Here the
headers of each request must be complete within ``header_timeout_s`` of the connection opening (or
of the request's first byte on a kept-alive connection); otherwise the server answers 408 and
closes the connection. Request bodies are bounded by
:class:`~voxprompt.server.security.RequestGuardMiddleware` (``--body-timeout``).
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger(__name__)

_TIMEOUT_REPLY = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain\r\ncontent-length: 38\r\n"
                  b"connection: close\r\n\r\nrequest headers not received in time\r\n")


class HeaderTimeoutH11Protocol(H11Protocol):
    header_timeout_s: float = 30.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timer: asyncio.TimerHandle | None = None

    def _arm_header_timer(self) -> None:
        self._cancel_header_timer()
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._headers_timed_out)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_timer()

    def data_received(self, data: bytes) -> None:
        before = self.cycle
        if self._header_timer is None and (before is None or before.response_complete):
            self._arm_header_timer()  # the first bytes of a new request on a kept-alive connection
        super().data_received(data)
        if self.cycle is not before:  # h11 parsed a complete request head
            self._cancel_header_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if (not self.transport.is_closing() and (self.cycle is None or self.cycle.response_complete)
                and self.conn.trailing_data[0]):  # part of a pipelined request is already buffered
            self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)

    def _headers_timed_out(self) -> None:
        self._header_timer = None
        if self.transport.is_closing() or (self.cycle is not None and not self.cycle.response_complete):
            return
        client = f"{self.client[0]}:{self.client[1]}" if self.client else "a client"
        log.warning("%s: request headers not complete within %g s (--header-timeout); answered 408 and "
                    "closed the connection", client, self.header_timeout_s)
        self._unset_keepalive_if_required()
        self.transport.write(_TIMEOUT_REPLY)
        self.transport.close()


def http_protocol(header_timeout_s: float) -> type[H11Protocol]:
    """The protocol class to give uvicorn (``uvicorn.run(app, http=...)``)."""
    return type("HeaderTimeoutH11Protocol", (HeaderTimeoutH11Protocol,), {"header_timeout_s": float(header_timeout_s)})
