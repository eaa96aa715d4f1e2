"""Routes over the lease table that every protocol shares: ``POST /restore``.

``POST /restore`` with header ``X-Lease-Token: <token>`` (an nnInteractive lease token, a MONAI Label
session id or a viewer token) puts an expired lease back under the same token, with its image and
masks, while its restore grace (``--restore-grace``) lasts and a slot is free (503 otherwise). The
410 (MONAI Label: 404) that a request for an expired lease gets says whether it can be restored.
"""
from __future__ import annotations

from typing import Any, Optional

from fastapi import APIRouter, Depends, Header

from .context import ServerContext

LEASE_HEADER = "X-Lease-Token"


def make_router(ctx: ServerContext) -> APIRouter:
    r = APIRouter(tags=["leases"])
    auth = [Depends(ctx.auth)]

    @r.post("/restore", dependencies=auth)
    def restore(x_lease_token: Optional[str] = Header(None, alias=LEASE_HEADER)) -> dict[str, Any]:
        lease = ctx.leases.restore(x_lease_token)
        return {"restored": True, "kind": lease.kind, "remaining_seconds": lease.remaining(ctx.leases.now()),
                "idle_timeout_seconds": lease.idle_timeout}

    return r
