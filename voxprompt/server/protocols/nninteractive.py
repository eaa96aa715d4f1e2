"""nnInteractive v2 remote protocol (the subset 3D Slicer's nnInteractive extension uses).

Clients: ``nninteractive-client``'s ``nnInteractiveRemoteInferenceSession`` (what SlicerNNInteractive
runs in Remote mode). Each ``/claim`` gets a lease with its own :class:`~voxprompt.session.Session`.

Axis order (explicit, and deliberately a no-op): the protocol has no affine, only an array
``[C, X, Y, Z]`` plus spacing. Its three spatial axes are taken **as given**: the Session holds
``image[0]`` in the client's axis order, ``spacing`` is per array axis in that order, and points
(``coordinates``) and boxes (``bbox_coords``) are indices of that same array. Slicer sends
``arrayFromVolume(volume)[None]`` = numpy (k, j, i), spacing reversed to (k, j, i), points as
``ijk[::-1]`` = (k, j, i) and boxes as ``[[k0, k1+1], [j0, j1+1], [i0, i1+1]]``, so everything
lines up without conversion. The world orientation is unknown to the server, so ROIs are
resampled in that index space (the orientation SAM-Med3D canonicalises cannot be recovered).

Mapping onto the Session API:

* ``set_image`` -> ``Session.set_image(image[0], spacing=...)`` (one channel only).
* ``set_target_buffer`` records the client's buffer shape and dtype; the server's copy of the
  buffer is the current object's mask (``Session.mask``), which starts empty: a lease whose
  object already has a mask is reset so that both sides agree on a zero buffer.
* ``add_point_interaction`` -> ``Session.add_point(coordinates, positive=include_interaction)``.
* ``add_bbox_interaction`` -> ``Session.add_box(lo, hi)`` (positive boxes only; the 2D box Slicer
  sends asks for the 3D object shown in it, as nnInteractive reads it; boxes are made of clicks, see
  :mod:`voxprompt.session`, and the Session has no negative box: a negative box gets 400
  and the capabilities say ``supports_negative_bbox: false``, voxprompt's addition).
* ``add_scribble_interaction`` -> ``Session.add_scribble(voxels, positive=include_interaction)`` and
  ``add_lasso_interaction`` -> ``Session.add_lasso_region(voxels, ...)`` (the client sends the lasso
  filled). The body is an NNIA array whose nonzero voxels are the interaction; ``X-Meta`` holds
  ``include_interaction``, ``run_prediction`` and ``interaction_bbox`` (``[[lo, hi] x 3]``, half-open:
  where the array lies in the image, its shape ``hi - lo``; null: the array is the whole image, as the
  official session reads it). The Session turns them into clicks and mask prompts by its rules
  (:mod:`voxprompt.session.strokes`: by default a scribble is clicks spread along it, a lasso clicks
  spread over its inside); an empty one gets 400.
* ``run_prediction=false`` on a point, box, scribble or lasso queues it (checked at once, answered with
  ``ran_prediction: false``); the next interaction with ``run_prediction=true``, or ``/predict``,
  applies the queue in order and then itself, each a model step of its own, and answers with the
  union of the regions they changed. ``/undo`` drops the last queued interaction first;
  ``reset_interactions``, ``set_image``, ``set_target_buffer`` and an initial segmentation (which
  replaces the mask, as the official session resets its interactions) drop the queue. At most
  ``--max-points`` interactions wait in a queue.
* ``add_initial_seg_interaction`` -> ``Session.add_mask(seg)`` (``run_prediction`` must be false).
* ``undo`` -> ``Session.undo()``; ``reset_interactions`` -> ``Session.reset()``.
* ``set_do_autozoom`` switches :class:`voxprompt.session.autozoom.AutoZoomPlanner` for this lease.

Prediction responses carry the current object's mask inside ``Prediction.changed_bbox`` (the
region that changed), cast to the client's buffer dtype and NNIA-packed; ``X-Meta`` holds
``{"ran_prediction", "bbox": [[lo, hi] x 3] | null, "dtype", "shape", "low_confidence", "warning"}``.
``low_confidence`` (bool) and ``warning`` (a sentence or null) are voxprompt's additions: the
Session's flag on the result (a low predicted IoU, an empty mask after a positive prompt, the last
positive click outside the mask; :class:`~voxprompt.session.Prediction`). Official clients read
the keys they know (``meta.get``) and ignore these.

Label policy (voxprompt's additions, under ``/voxprompt/``; official clients never call them and
ignore ``supports_label_policy`` in the capabilities): the protocol has one target buffer, the
current object. ``POST /voxprompt/new_object`` with ``{"lock_current": true}`` keeps the current
object on the server, locked, and makes a new, empty object the target (the client starts a zeroed
buffer for it; queued interactions are dropped); ``POST /voxprompt/lock_object`` with
``{"object_id": id, "locked": true|false}`` (``object_id`` omitted: the current object) locks or
unlocks one; ``POST /voxprompt/label_policy`` with ``{"others_negative": true|false}`` switches
others-as-negatives; ``GET /voxprompt/objects`` lists them. Each answers ``{"object_id", "objects",
"locked", "others_negative"}``. A locked object's voxels are then never set by the target's
predictions (:class:`~voxprompt.session.objects.ObjectsMixin`), so the buffer the client receives
already leaves them out. ``set_target_buffer`` and ``reset_interactions`` reset the current object
only; ``set_image`` drops every object and lock.

Capabilities advertise points, 2D and 3D boxes, scribbles, lassos, initial labels and undo;
zero-shot label refinement is false (an initial segmentation is taken as the mask, not refined).
``channel_mapping``, ``num_interaction_channels``, ``interaction_decay`` and
``preferred_scribble_thickness`` are placeholders that matter only to nnInteractive's internals.

Model steps take the shared (first come, first served) model lock one at a time, so a flushed queue
lets other users' clicks through between its steps; each step's boundary refinement runs after
the lock is released (:meth:`~voxprompt.server.context.ServerContext.prompt_step`), and the response
carries the refined mask.
"""
from __future__ import annotations

import json
import logging
from typing import Any

import numpy as np
from fastapi import APIRouter, Depends, Header, Request, Response
from pydantic import BaseModel, ConfigDict, Field, StrictBool

from ...masks import Slices, union_box
from ...session import Prediction, Session
from ...session.strokes import voxels_of
from ...version import __version__
from ..context import ServerContext
from ..errors import BadRequest
from ..lease_routes import objects_json
from ..leases import Lease
from ..model_host import autozoom_on, set_autozoom
from ..security import check_size
from . import nnia

log = logging.getLogger(__name__)

KIND = "nninteractive"
META_HEADER = "X-Meta"
LEASE_HEADER = "X-Lease-Token"
OCTET = "application/octet-stream"
BUFFER_DTYPES = frozenset(["bool", "uint8", "int8", "uint16", "int16", "uint32", "int32"])


# ----------------------------------------------------------------------------- request bodies
class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class TargetBufferBody(_Body):
    shape: list[int]
    dtype: str


class AutozoomBody(_Body):
    do_autozoom: StrictBool


class PointBody(_Body):
    coordinates: list[float] = Field(min_length=3, max_length=3)
    include_interaction: StrictBool
    run_prediction: StrictBool = True
    override_capability_checks: StrictBool = False


class PredictBody(_Body):
    force_full_refine: StrictBool = False  # nnInteractive's; voxprompt has nothing to refine further


class NewObjectBody(_Body):
    lock_current: StrictBool = False


class LockBody(_Body):
    object_id: int | None = None
    locked: StrictBool = True


class PolicyBody(_Body):
    others_negative: StrictBool


class BboxBody(_Body):
    bbox_coords: list[list[int]] = Field(min_length=3, max_length=3)
    include_interaction: StrictBool
    run_prediction: StrictBool = True
    override_capability_checks: StrictBool = False


# ----------------------------------------------------------------------------- helpers
def capabilities(ctx: ServerContext) -> dict[str, Any]:
    """What this server really supports (see the module docstring for the placeholders)."""
    roi = ctx.host.roi_size
    return {
        "supported_interactions": {"points": True, "bbox2d": True, "bbox3d": True, "scribble": True,
                                   "lasso": True},
        "channel_mapping": {"prev_seg": 0, "points": [1, 2], "bbox2d": [3, 4]},
        "num_interaction_channels": 5,
        "supports_initial_label": True,
        "supports_zero_shot_label_refinement": False,
        "preferred_scribble_thickness": [1, 1, 1],
        "interaction_decay": None,
        "patch_size": [roi, roi, roi],
        "do_autozoom": bool(ctx.host.autozoom_default and ctx.host.autozoom_available),
        "inference_session_version": f"voxprompt-{__version__}",
        "supports_undo": True,
        "supports_negative_bbox": False,  # voxprompt's addition: the Session has no negative box
        "supports_label_policy": True,  # voxprompt's addition: the /voxprompt/ object endpoints
        "model": ctx.host.name,
    }


def _meta(request: Request) -> dict[str, Any]:
    raw = request.headers.get(META_HEADER)
    if raw is None:
        return {}
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise BadRequest(f"bad {META_HEADER} header: {exc.msg}") from None
    if not isinstance(meta, dict):
        raise BadRequest(f"{META_HEADER} must be a JSON object")
    return meta


def _flag(meta: dict, key: str, default: bool) -> bool:
    value = meta.get(key, default)
    if not isinstance(value, bool):
        raise BadRequest(f"{META_HEADER}.{key} must be true or false, got {value!r}")
    return value


def _spacing(meta: dict) -> list[float] | None:
    props = meta.get("image_properties") or {}
    if not isinstance(props, dict):
        raise BadRequest("image_properties must be a JSON object")
    sp = props.get("spacing")
    if sp is None:
        return None
    if (not isinstance(sp, (list, tuple)) or len(sp) != 3
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in sp)):
        raise BadRequest(f"image_properties.spacing must be three numbers (mm per array axis), got {sp!r}")
    return [float(v) for v in sp]


def _bbox_json(bbox: Slices | None) -> list[list[int]] | None:
    return None if bbox is None else [[int(s.start), int(s.stop)] for s in bbox]


_CHANGED = object()  # prediction_response: take the bbox from the prediction


def prediction_response(lease: Lease, ran: bool, pred: Prediction | None, changed: Any = _CHANGED) -> Response:
    """200 octet-stream: the target buffer's new contents inside the changed bbox (or nothing).

    ``changed``: the region to send when several steps ran (their union), else ``pred.changed_bbox``.
    """
    buf = lease.state.get("buffer")
    if changed is _CHANGED:
        changed = pred.changed_bbox if pred is not None else None
    bbox = changed if (ran and pred is not None) else None
    meta: dict[str, Any] = {"ran_prediction": bool(ran), "bbox": None,
                            "low_confidence": bool(pred is not None and pred.low_confidence),
                            "warning": None if pred is None else pred.warning}
    body = b""
    if bbox is not None and buf is not None:
        sub = np.ascontiguousarray(pred.mask[bbox]).astype(buf[1])
        meta.update(bbox=_bbox_json(bbox), dtype=sub.dtype.name, shape=list(sub.shape))
        body = nnia.pack(sub)
    return Response(content=body, media_type=OCTET, headers={META_HEADER: json.dumps(meta, separators=(",", ":"))})


def _check_point(session: Session, coordinates: list[float]) -> None:
    """400 now for a point that would fail later (a queued one runs with a later request)."""
    idx = np.floor(np.asarray(coordinates, dtype=np.float64) + 0.5)
    if not np.isfinite(idx).all() or np.any(idx < 0) or np.any(idx >= np.asarray(session.shape)):
        raise BadRequest(f"point {list(coordinates)} is outside the volume of shape {list(session.shape)}")


def _check_box(session: Session, lo: list[int], hi: list[int]) -> None:
    if any(b <= a for a, b in zip(lo, hi)):
        raise BadRequest(f"box [{lo}, {hi}) is empty (need lo < hi on every axis; a 2D box spans one slice)")
    if any(a < 0 for a in lo) or any(b > n for b, n in zip(hi, session.shape)):
        raise BadRequest(f"box [{lo}, {hi}) is outside the volume of shape {list(session.shape)}")


def _interaction_origin(bbox: Any, shape: tuple[int, ...], image_shape: tuple[int, ...], what: str) -> list[int]:
    """Where a scribble or lasso array lies in the image (``interaction_bbox``'s lower corner; null: the
    array is the whole image); 400 unless the box fits the array and the image."""
    if len(shape) != 3:
        raise BadRequest(f"the {what} must be a 3D array, got shape {list(shape)}")
    if bbox is None:
        if tuple(shape) != tuple(image_shape):
            raise BadRequest(f"the {what} has shape {list(shape)}, the image {list(image_shape)}: send "
                             "interaction_bbox with a crop")
        return [0, 0, 0]
    ok = (isinstance(bbox, list) and len(bbox) == 3
          and all(isinstance(b, list) and len(b) == 2 and all(type(v) is int for v in b) for b in bbox))
    if not ok:
        raise BadRequest(f"{META_HEADER}.interaction_bbox must be [[lo, hi] x 3] (integers, half-open), got {bbox!r}")
    if [hi - lo for lo, hi in bbox] != list(shape):
        raise BadRequest(f"the {what} has shape {list(shape)}, its interaction_bbox {bbox} a size of "
                         f"{[hi - lo for lo, hi in bbox]}")
    if any(lo < 0 or hi > n for (lo, hi), n in zip(bbox, image_shape)):
        raise BadRequest(f"interaction_bbox {bbox} is outside the volume of shape {list(image_shape)}")
    return [lo for lo, _ in bbox]


def _apply(session: Session, op: tuple) -> Prediction:
    if op[0] == "point":
        return session.add_point(op[1], positive=op[2])
    if op[0] == "scribble":
        return session.add_scribble(op[1], positive=op[2])
    if op[0] == "lasso":
        return session.add_lasso_region(op[1], positive=op[2])
    return session.add_box(op[1], op[2])


def _need_image(session: Session) -> None:
    if session.image is None:
        raise BadRequest("no image: call set_image first")


def _buffer_matches_image(lease: Lease) -> None:
    buf = lease.state.get("buffer")
    img = lease.session.image
    if buf is not None and img is not None and tuple(buf[0]) != tuple(img.shape):
        raise BadRequest(f"target buffer shape {list(buf[0])} does not match the image's spatial shape "
                         f"{list(img.shape)}; call set_target_buffer again")


# ----------------------------------------------------------------------------- router
def make_router(ctx: ServerContext) -> APIRouter:
    """All nnInteractive endpoints; every one but ``/healthz`` needs the API key (if set)."""
    auth = [Depends(ctx.auth)]
    r = APIRouter(tags=["nnInteractive v2"])
    caps = capabilities(ctx)

    def active(x_lease_token: str | None = Header(None, alias=LEASE_HEADER)) -> Lease:
        return ctx.leases.get(x_lease_token, kind=KIND, active=True)

    @r.get("/healthz")
    def healthz() -> dict:
        return {"ok": True}

    @r.get("/capabilities", dependencies=auth)
    def get_capabilities() -> dict:
        return caps

    @r.post("/claim", dependencies=auth)
    def claim() -> dict:
        s = ctx.settings
        lease = ctx.leases.claim(KIND, s.idle_timeout_s, s.liveness_timeout_s)
        lease.state.update(buffer=None, autozoom=autozoom_on(lease.session), pending=[])
        return {"lease_token": lease.token, "idle_timeout_seconds": s.idle_timeout_s,
                "liveness_timeout_seconds": s.liveness_timeout_s, "max_sessions": ctx.leases.max_sessions}

    @r.post("/release", dependencies=auth)
    def release(x_lease_token: str | None = Header(None, alias=LEASE_HEADER)) -> dict:
        ctx.leases.release(x_lease_token)
        return {"released": True}

    @r.post("/heartbeat", dependencies=auth)
    def heartbeat(lease: Lease = Depends(active)) -> dict:  # an open client keeps its work (idle clock too)
        return {"remaining_seconds": lease.remaining(ctx.leases.now())}

    @r.get("/lease_status", dependencies=auth)
    def lease_status(x_lease_token: str | None = Header(None, alias=LEASE_HEADER)) -> dict:
        lease = ctx.leases.peek(x_lease_token, kind=KIND)
        return {"remaining_seconds": lease.remaining(ctx.leases.now()),
                "idle_timeout_seconds": lease.idle_timeout}

    @r.post("/set_image", dependencies=auth)
    async def set_image(request: Request, lease: Lease = Depends(active)) -> dict:
        meta = _meta(request)
        spacing = _spacing(meta)
        body = await request.body()

        def do() -> dict:
            arr = nnia.unpack(body, ctx.array_limit_bytes, "the image")
            if arr.ndim != 4 or arr.shape[0] != 1:
                raise BadRequest(f"image must be [1, X, Y, Z] (one channel), got shape {list(arr.shape)}")
            ctx.check_image_bytes(arr[0].nbytes)
            lease.session.set_image(arr[0], spacing=spacing)
            lease.state["pending"] = []
            buf = lease.state.get("buffer")
            if buf is not None and tuple(buf[0]) != tuple(arr.shape[1:]):
                lease.state["buffer"] = None
            log.info("lease %s…: image %s %s spacing %s", lease.token[:8], list(arr.shape), arr.dtype, spacing)
            return {"original_image_shape": list(arr.shape)}

        return await ctx.run_locked(lease, do)

    @r.post("/set_target_buffer", dependencies=auth)
    async def set_target_buffer(body: TargetBufferBody, lease: Lease = Depends(active)) -> dict:
        if len(body.shape) != 3 or any(n <= 0 for n in body.shape):
            raise BadRequest(f"target buffer shape must be three positive sizes, got {body.shape}")
        if body.dtype not in BUFFER_DTYPES:
            raise BadRequest(f"target buffer dtype must be bool or an integer type up to 32 bits, got "
                             f"{body.dtype!r}")
        dtype = np.dtype(body.dtype)
        check_size(int(np.prod(body.shape, dtype=object)) * dtype.itemsize, ctx.array_limit_bytes,
                   "the target buffer")

        def do() -> dict:
            session = lease.session
            if session.image is not None and tuple(body.shape) != session.shape:
                raise BadRequest(f"target buffer shape {body.shape} does not match the image's spatial "
                                 f"shape {list(session.shape)}")
            lease.state["buffer"] = (tuple(body.shape), dtype)
            lease.state["pending"] = []
            if session.image is not None and session.mask.any():
                session.reset()  # the client's new buffer is zeros: start the object afresh
            return {}

        return await ctx.run_locked(lease, do)

    @r.post("/set_do_autozoom", dependencies=auth)
    async def set_do_autozoom(body: AutozoomBody, lease: Lease = Depends(active)) -> dict:
        def do() -> dict:
            lease.state["autozoom"] = set_autozoom(lease.session, body.do_autozoom)
            if body.do_autozoom and not lease.state["autozoom"]:
                log.info("lease %s…: auto-zoom requested but this session's planner cannot switch", lease.token[:8])
            return {}

        return await ctx.run_locked(lease, do)

    @r.post("/reset_interactions", dependencies=auth)
    async def reset_interactions(lease: Lease = Depends(active)) -> dict:
        def do() -> dict:
            lease.state["pending"] = []
            if lease.session.image is not None:
                lease.session.reset()
            return {}

        return await ctx.run_locked(lease, do)

    def interact(lease: Lease, op: tuple, run_prediction: bool) -> Response:
        """Queue ``op`` or run the queue and ``op`` (caller holds the lease lock)."""
        _need_image(lease.session)
        _buffer_matches_image(lease)
        if op[0] == "point":
            _check_point(lease.session, op[1])
        elif op[0] == "box":
            _check_box(lease.session, op[1], op[2])
        pending: list = lease.state["pending"]
        if not run_prediction:
            if len(pending) >= ctx.settings.max_points:
                raise BadRequest(f"{len(pending)} interactions already wait for a prediction, the most this "
                                 "server queues (--max-points): send one with run_prediction=true")
            pending.append(op)
            return prediction_response(lease, False, None)
        return run_queue(lease, [op])

    def run_queue(lease: Lease, extra: list) -> Response:
        ops, lease.state["pending"] = lease.state["pending"] + extra, []
        pred, changed = None, None
        for op in ops:
            pred = ctx.prompt_step(lease.session, lambda op=op: _apply(lease.session, op))
            changed = union_box(changed, pred.changed_bbox)
        return prediction_response(lease, pred is not None, pred, changed)

    @r.post("/add_point_interaction", dependencies=auth)
    async def add_point(body: PointBody, lease: Lease = Depends(active)) -> Response:
        op = ("point", [float(v) for v in body.coordinates], body.include_interaction)
        return await ctx.run_locked(lease, lambda: interact(lease, op, body.run_prediction))

    @r.post("/add_bbox_interaction", dependencies=auth)
    async def add_bbox(body: BboxBody, lease: Lease = Depends(active)) -> Response:
        if not body.include_interaction:
            raise BadRequest("negative boxes are not supported (SAM-Med3D has no box prompt; boxes are made "
                             "of clicks; capabilities: supports_negative_bbox = false): use negative points")
        if any(len(b) != 2 for b in body.bbox_coords):
            raise BadRequest(f"bbox_coords must be [[lo, hi] x 3] (half-open), got {body.bbox_coords}")
        op = ("box", [b[0] for b in body.bbox_coords], [b[1] for b in body.bbox_coords])
        return await ctx.run_locked(lease, lambda: interact(lease, op, body.run_prediction))

    @r.post("/predict", dependencies=auth)
    async def predict(body: PredictBody, lease: Lease = Depends(active)) -> Response:
        """Run the queued interactions (``ran_prediction`` false when none wait)."""
        def do() -> Response:
            _need_image(lease.session)
            _buffer_matches_image(lease)
            return run_queue(lease, [])

        return await ctx.run_locked(lease, do)

    @r.post("/add_initial_seg_interaction", dependencies=auth)
    async def add_initial_seg(request: Request, lease: Lease = Depends(active)) -> Response:
        meta = _meta(request)
        if _flag(meta, "run_prediction", False):
            raise BadRequest("run_prediction=true is not supported for initial segmentations "
                             "(supports_zero_shot_label_refinement is false); send false and click to refine")
        body = await request.body()

        def do() -> Response:
            _need_image(lease.session)
            seg = nnia.unpack(body, ctx.array_limit_bytes, "the initial segmentation")
            if seg.dtype.kind == "f":
                raise BadRequest(f"initial segmentation must be bool or integer, got {seg.dtype}")
            lease.state["pending"] = []  # the segmentation replaces the mask they would have changed
            lease.session.add_mask(seg)  # shape checked by the Session
            return prediction_response(lease, False, None)  # the client already mirrored the seg

        return await ctx.run_locked(lease, do, model=True)

    @r.post("/undo", dependencies=auth)
    async def undo(lease: Lease = Depends(active)) -> Response:
        def do() -> Response:
            _need_image(lease.session)
            if lease.state["pending"]:  # a queued interaction is undone by dropping it (nothing to redraw)
                lease.state["pending"].pop()
                return Response(content=b"", media_type=OCTET,
                                headers={META_HEADER: json.dumps({"ran_prediction": True, "bbox": None})})
            if not lease.session.can_undo:
                return prediction_response(lease, False, None)
            return prediction_response(lease, True, lease.session.undo())

        return await ctx.run_locked(lease, do)

    # ------------------------------------------------------------------ voxprompt's additions: label policy
    @r.get("/voxprompt/objects", dependencies=auth)
    async def list_objects(lease: Lease = Depends(active)) -> dict:
        def do() -> dict:
            _need_image(lease.session)
            return objects_json(lease.session)

        return await ctx.run_locked(lease, do)

    @r.post("/voxprompt/new_object", dependencies=auth)
    async def new_object(body: NewObjectBody, lease: Lease = Depends(active)) -> dict:
        def do() -> dict:
            session = lease.session
            _need_image(session)
            if body.lock_current:
                session.lock_object(session.object_id)
            session.new_object()
            lease.state["pending"] = []  # they were meant for the previous target
            return objects_json(session)

        return await ctx.run_locked(lease, do)

    @r.post("/voxprompt/lock_object", dependencies=auth)
    async def lock_object(body: LockBody, lease: Lease = Depends(active)) -> dict:
        def do() -> dict:
            session = lease.session
            _need_image(session)
            session.lock_object(session.object_id if body.object_id is None else body.object_id, body.locked)
            return objects_json(session)

        return await ctx.run_locked(lease, do)

    @r.post("/voxprompt/label_policy", dependencies=auth)
    async def label_policy(body: PolicyBody, lease: Lease = Depends(active)) -> dict:
        def do() -> dict:
            lease.session.others_negative = body.others_negative
            return objects_json(lease.session)

        return await ctx.run_locked(lease, do)

    async def add_stroke(kind: str, request: Request, lease: Lease) -> Response:
        """A scribble or lasso: an NNIA array (nonzero = the interaction), placed by ``interaction_bbox``."""
        meta = _meta(request)
        if not isinstance(meta.get("include_interaction"), bool):
            raise BadRequest(f"{META_HEADER}.include_interaction must be true or false")
        include, run = meta["include_interaction"], _flag(meta, "run_prediction", True)
        body = await request.body()

        def do() -> Response:
            session = lease.session
            _need_image(session)
            arr = nnia.unpack(body, ctx.array_limit_bytes, f"the {kind} image")
            origin = _interaction_origin(meta.get("interaction_bbox"), arr.shape, session.shape, f"{kind} image")
            voxels = voxels_of(arr, origin)
            if not len(voxels):
                raise BadRequest(f"the {kind} image holds no voxel (nonzero = the {kind})")
            return interact(lease, (kind, voxels, include), run)

        return await ctx.run_locked(lease, do)

    @r.post("/add_scribble_interaction", dependencies=auth)
    async def add_scribble(request: Request, lease: Lease = Depends(active)) -> Response:
        return await add_stroke("scribble", request, lease)

    @r.post("/add_lasso_interaction", dependencies=auth)
    async def add_lasso(request: Request, lease: Lease = Depends(active)) -> Response:
        return await add_stroke("lasso", request, lease)

    return r
