"""What every protocol router shares: settings, the model host, the lease table, auth."""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TypeVar

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from ..masks import union_box
from ..session import Prediction, Session
from .errors import ClientGone, LeaseGone, TooLarge
from .leases import Lease, LeaseManager
from .model_host import ModelHost
from .security import check_api_key, memory_limit_bytes
from .settings import ServerSettings

T = TypeVar("T")
log = logging.getLogger(__name__)


async def watch_disconnect(request: Request, gone: threading.Event) -> None:
    """Set ``gone`` when the client disconnects. Call after the body was read: the next message
    the server receives for this request is then the disconnect."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            gone.set()
            return


@dataclass
class ServerContext:
    settings: ServerSettings
    host: ModelHost
    leases: LeaseManager

    @property
    def array_limit_bytes(self) -> int:
        """Largest array (decompressed upload or buffer) the server accepts: 25 % of RAM."""
        return memory_limit_bytes(0.25)

    @property
    def image_limit_bytes(self) -> int:
        """Largest voxel data a volume file may declare: the per-session cap (and the array limit)."""
        return min(self.settings.session_memory_bytes, self.array_limit_bytes)

    def check_image_bytes(self, nbytes: int) -> None:
        """413 when an image alone exceeds the per-session memory cap."""
        cap = self.settings.session_memory_bytes
        if int(nbytes) > cap:
            raise TooLarge(f"the image needs {int(nbytes) / 2**20:.1f} MiB, more than this server's "
                           f"per-session cap of {cap / 2**20:.0f} MiB (--session-memory-mb)")

    def account(self, lease: Lease) -> None:
        """Apply the memory caps after ``lease`` changed (caller holds its lock)."""
        self.leases.account(lease, self.settings.session_memory_bytes, self.settings.max_memory_bytes)

    def auth(self, request: Request) -> None:
        """FastAPI dependency: 401 unless the request carries the API key (when one is set)."""
        check_api_key(self.settings.api_key, request.headers.get("authorization"))

    async def run_locked(self, lease: Lease, fn: Callable[[], T], model: bool = False) -> T:
        """Run ``fn`` in a worker thread under the lease's lock (and the model lock if ``model``).

        Order is always lease lock, then model lock, so two leases never deadlock; heartbeats
        are served meanwhile because the event loop stays free.
        """
        return await run_in_threadpool(lambda: self.call_locked(lease, fn, model))

    def call_locked(self, lease: Lease, fn: Callable[[], T], model: bool = False) -> T:
        """:meth:`run_locked` in the calling thread."""
        with lease.lock:
            if lease.closed:
                raise LeaseGone("lease expired or unknown")
            try:
                if not model:
                    return fn()
                with self.host.lock:
                    return fn()
            finally:
                self.account(lease)

    def model_step(self, fn: Callable[[], T], gone: threading.Event | None = None) -> T:
        """Run one model step (one prompt) under the model lock, taken for this step only.

        Requests that run several steps call this once per step, so other users' clicks queue
        between them (the lock is first come, first served); ``gone`` set (the client went away)
        stops the work before the next step with ClientGone.
        """
        if gone is not None and gone.is_set():
            raise ClientGone("the client disconnected; the remaining steps were not run")
        with self.host.lock:
            return fn()

    def prompt_step(self, session: Session, fn: Callable[[], Prediction],
                    gone: threading.Event | None = None) -> Prediction:
        """One prompt: its model step (:meth:`model_step`), then its boundary refinement, which the
        sessions run in the background (``ModelHost.new_session``) and which is awaited here with
        the model lock released, so other users' model steps run meanwhile. Returns the refined
        prediction, its ``changed_bbox`` covering both parts."""
        pred = self.model_step(fn, gone)
        if not pred.refining:
            return pred
        done = session.wait_refined()
        if done is None:
            return pred
        return dataclasses.replace(done, changed_bbox=union_box(pred.changed_bbox, done.changed_bbox))

    @asynccontextmanager
    async def disconnect_event(self, request: Request) -> AsyncIterator[threading.Event]:
        """An Event set when the client of ``request`` disconnects (watched while the block runs)."""
        gone = threading.Event()
        task = asyncio.ensure_future(watch_disconnect(request, gone))
        try:
            yield gone
        finally:
            task.cancel()

    async def run_blocking(self, fn: Callable[[], T]) -> T:
        """Run blocking work (file reading, NIfTI writing) in a worker thread, no lock held."""
        return await run_in_threadpool(fn)
