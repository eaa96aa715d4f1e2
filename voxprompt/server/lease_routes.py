"""Routes over the lease table that every protocol shares: ``POST /restore`` and ``GET /status``.

``POST /restore`` with header ``X-Lease-Token: <token>`` (an nnInteractive lease token, a MONAI Label
session id or a viewer token) puts an expired lease back under the same token, with its image and
masks, while its restore grace (``--restore-grace``) lasts and a slot is free (503 otherwise). The
410 (MONAI Label: 404) that a request for an expired lease gets says whether it can be restored.

``GET /status`` (behind the API key when one is set) is for the person running the server: every
lease with its kind, age, idle time and memory (``Session.memory_bytes()``), the expired ones still
restorable, and the totals. Leases are named by the first 8 digits of their token, as in the log;
tokens themselves never appear.
"""
from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Header

from ..version import __version__
from .context import ServerContext
from .leases import Lease

LEASE_HEADER = "X-Lease-Token"


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

    @r.get("/status", dependencies=auth)
    def get_status() -> dict[str, Any]:
        return status(ctx)

    return r
