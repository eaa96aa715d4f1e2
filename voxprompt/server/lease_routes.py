"""Routes over the lease table that every protocol shares: ``POST /restore``, ``GET``/``POST /state``
and ``GET /status``.

``POST /restore`` with header ``X-Lease-Token: <token>`` (an nnInteractive lease token, a MONAI Label
session id or a viewer token) puts an expired lease back under the same token, with its image and
masks, while its restore grace (``--restore-grace``) lasts and a slot is free (503 otherwise). The
410 (MONAI Label: 404) that a request for an expired lease gets says whether it can be restored.

``GET /state`` with ``X-Lease-Token`` exports the lease's Session state as a saved session
(``application/octet-stream``, the ``.vps`` format of :mod:`voxprompt.session.saved`: every object's
mask, prompts and undo history, the locks), after a refinement still running has landed; it opens in
Python (``Session.load``), in ``voxprompt segment --prompts`` and here again. ``POST /state`` with
the same header and such a file as the raw body imports it into the lease, whose image must be the one
it was saved on (400 naming what differs otherwise, 400 for a corrupt file, 413 when its members declare
more than the per-session memory cap, checked before unpacking); it answers the objects and locks.
An nnInteractive client's target buffer is its own and does not see an imported mask; the viewer and
MONAI Label read masks from the server (download, next inference).

``GET /status`` (behind the API key when one is set) is for the person running the server: every
lease with its kind, age, idle time and memory (``Session.memory_bytes()``), the expired ones still
restorable, and the totals. Leases are named by the first 8 digits of their token, as in the log;
tokens themselves never appear.
"""
from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Header, Request, Response

from ..session import Session
from ..version import __version__
from .context import ServerContext
from .leases import Lease

LEASE_HEADER = "X-Lease-Token"


def objects_json(session: Session) -> dict[str, Any]:
    """A session's objects and label policy, as the routes that change them answer."""
    return {"object_id": session.object_id, "objects": session.object_ids, "locked": session.locked_objects,
            "others_negative": bool(session.others_negative)}


def _memory(lease: Lease) -> tuple[int, bool]:
    """(bytes, busy): measured now when nobody uses the lease, else its last estimate."""
    if not lease.lock.acquire(blocking=False):
        return lease.memory_bytes, True
    try:
        lease.memory_bytes = lease.session.memory_bytes()
        return lease.memory_bytes, False
    finally:
        lease.lock.release()


def status(ctx: ServerContext) -> dict[str, Any]:
    """The lease table for the operator (no tokens: ids are their first 8 digits)."""
    now = ctx.leases.now()
    live = []
    for lease in ctx.leases.leases():
        memory, busy = _memory(lease)
        live.append({"id": lease.token[:8], "kind": lease.kind, "source": lease.state.get("source"),
                     "age_s": round(now - lease.created, 1), "idle_s": round(now - lease.last_active, 1),
                     "since_last_request_s": round(now - lease.last_seen, 1),
                     "remaining_s": round(lease.remaining(now), 1), "memory_bytes": memory, "busy": busy})
    expired = [{"id": x.token[:8], "kind": x.kind, "age_s": round(now - x.created, 1),
                "expired_s_ago": round(now - (x.expired_at or now), 1), "why": x.expired_why,
                "restorable_for_s": round(max(0.0, ctx.leases.grace_s - (now - (x.expired_at or now))), 1),
                "memory_bytes": x.memory_bytes} for x in ctx.leases.expired_leases()]
    s = ctx.settings
    return {"version": __version__, "model": ctx.host.name, "device": s.device,
            "sessions": len(live), "max_sessions": ctx.leases.max_sessions,
            "memory_bytes": sum(x["memory_bytes"] for x in live + expired),
            "max_memory_bytes": s.max_memory_bytes, "model_queue": ctx.host.lock.waiting,
            "leases": live, "expired": expired}


def make_router(ctx: ServerContext) -> APIRouter:
    r = APIRouter(tags=["leases"])
    auth = [Depends(ctx.auth)]

    @r.post("/restore", dependencies=auth)
    def restore(x_lease_token: str | None = Header(None, alias=LEASE_HEADER)) -> dict[str, Any]:
        lease = ctx.leases.restore(x_lease_token)
        return {"restored": True, "kind": lease.kind, "remaining_seconds": lease.remaining(ctx.leases.now()),
                "idle_timeout_seconds": lease.idle_timeout}

    @r.get("/state", dependencies=auth)
    async def export_state(x_lease_token: str | None = Header(None, alias=LEASE_HEADER)) -> Response:
        lease = ctx.leases.get(x_lease_token)
        data = await ctx.run_locked(lease, lease.session.state_bytes)
        return Response(data, media_type="application/octet-stream",
                        headers={"Content-Disposition": 'attachment; filename="voxprompt-session.vps"'})

    @r.post("/state", dependencies=auth)
    async def import_state(request: Request,
                           x_lease_token: str | None = Header(None, alias=LEASE_HEADER)) -> dict[str, Any]:
        lease = ctx.leases.get(x_lease_token, active=True)
        data = await request.body()
        cap = ctx.settings.session_memory_bytes

        def load() -> dict[str, Any]:
            lease.session.load_state(data, max_bytes=cap)
            return objects_json(lease.session)

        return await ctx.run_locked(lease, load)

    @r.get("/status", dependencies=auth)
    def get_status() -> dict[str, Any]:
        return status(ctx)

    return r
