"""Browser viewer: a NiiVue page at ``/`` and its small JSON API under ``/api/viewer``.

The page (``voxprompt/server/static/``: ``index.html`` plus ``viewer.js``, NiiVue bundled by
``make web`` from ``web/``) opens a volume (an upload, or a file under ``--data-dir``), shows it with NiiVue,
turns clicks into positive/negative points, overlays the label map after every change and
downloads it as NIfTI. Each opened volume is a lease of kind ``web`` (idle and liveness time-outs;
the page heartbeats), addressed by its token in the URL.

Axis order: the page receives the volume as NIfTI written by SimpleITK from the Session's image, so
the file's voxel axes are (i, j, k) and the Session's array is (k, j, i). NiiVue reports clicks in
world mm (its voxel indices are in a RAS-reoriented grid, not the file's); the page converts mm to
the file's (i, j, k) with the inverse of the file's affine (``mmToFileVoxel`` in ``web/src``,
mirrored by :func:`voxprompt.server.volumes.ras_to_file_ijk`) and sends ``{"ijk": [i, j, k]}``; the
server reverses it with :func:`~voxprompt.session.from_slicer_ijk`. ``{"mm": [x, y, z]}`` (RAS) is
accepted as well and converted on the server.

A click answers at once with the model's mask (``POST /{token}/point``, summary ``refining: true``
while its boundary refinement runs in the background); ``POST /{token}/refined`` then waits for the
refinement (up to :data:`REFINED_WAIT_S`, taking the lease's lock only briefly at a time so that
the user's next click gets through and cancels it) and answers the summary after it
(``refined``: whether one landed). The page shows the first mask, then the refined one. The label
map's download (``labels.nii.gz?download=true``) waits for a refinement still running.

Label policy (:class:`~voxprompt.session.objects.ObjectsMixin`): ``POST /{token}/objects/{id}/lock``
with ``{"locked": true|false}`` locks or unlocks an object, ``POST /{token}/policy`` with
``{"others_negative": true|false}`` switches others-as-negatives; every summary lists ``locked``
(ids) and ``others_negative``.

Annotation tools: ``POST /{token}/box`` with ``{"ijk": [[i, j, k], [i, j, k]]}`` (two opposite corners,
inclusive file voxels; equal on one axis for a box drawn on a slice) is the current object's box
prompt (``Session.add_box``). ``POST /{token}/scribble`` with ``{"ijk": [[i, j, k], ...], "positive":
true|false}`` is a freehand path (real file-voxel vertices, rasterised by
:func:`~voxprompt.session.strokes.path_voxels`; ``Session.add_scribble``) and ``POST /{token}/lasso``
the same with a closed outline on one slice (``Session.add_lasso``). Every summary lists the current
object's ``clicks``, ``boxes`` and ``strokes`` in file voxels, for the page's markers.
``POST /{token}/objects/{id}/name`` names an object (``names`` in the summary; the DICOM SEG's
segment labels).

Saving and recovery: ``GET /{token}/labels.dcm`` is the label map as a DICOM SEG (one segment per
object) when the volume was DICOM (a zip of a series, or a ``.dcm`` file; the instances' headers are
kept with the lease for this), 400 otherwise. ``POST /{token}/masks`` (multipart ``file``: a label
NIfTI on the image's grid) makes label ``v`` object ``v``'s mask (``Session.add_mask``; objects are
created up to the largest label): the page keeps the last label map it showed and re-sends it into a
new session when its own is gone for good.

Partial overlay updates: every summary's ``changed_bbox_kji`` (``[[k0, k1], [j0, j1], [i0, i1]]``, half-open
array indices, or null) bounds every change of the label map since the previous summary: the answered
prompt's, and that of a background refinement which finished meanwhile (applied first by
:func:`_settled`, whichever request comes next, so that no session call applies it unannounced).
``GET /{token}/labels/block?k0=&k1=&j0=&j1=&i0=&i1=`` answers the label map inside such a box as raw
little-endian voxels in the NIfTI file's order (i fastest, then j, then k: the C order of the (k, j, i)
block) and dtype (``X-Label-Dtype``: ``uint8``, or ``uint16`` when a label exceeds 255, as
:func:`~voxprompt.io.write.write_mask` writes ``labels.nii.gz``), so that the page copies it straight into
its overlay instead of downloading the whole map after every step.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, FastAPI, Request, Response
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt

from ..io.read import file_extension, read_image
from ..masks import union_box
from ..session import Prediction, Session, from_slicer_ijk
from ..session.strokes import path_voxels
from .context import ServerContext
from .errors import BadRequest, NotFound, TooLarge
from .leases import Lease
from .security import resolve_data_path
from .volumes import (
    Upload,
    dicom_header_copies,
    dicom_seg_bytes,
    grid_labels,
    image_nifti_bytes,
    label_nifti_bytes,
    list_volumes,
    nifti_affine,
    ras_to_file_ijk,
    read_upload,
    read_uploaded,
    safe_filename,
    unzip_upload,
)

log = logging.getLogger(__name__)

KIND = "web"
STATIC_DIR = Path(__file__).resolve().parent / "static"  # the built page (`make web` from web/)
NO_CACHE = {"Cache-Control": "no-store"}
REFINED_WAIT_S = 60.0  # longest a /refined request waits; the page asks again if still refining
REFINED_POLL_S = 0.1  # the lease lock is held at most this long at a time while waiting
TOOLS = ("point", "box", "scribble", "lasso")  # the page's prompt tools (its buttons)
MAX_VERTICES = 4096  # of a scribble path or a lasso outline
MAX_PATH_STEPS = 100_000  # voxel steps along a scribble path (bounds its rasterised voxels)
MAX_SHOWN_STROKE_VOXELS = 4096  # of a scribble, listed in the summary for the page to draw
MAX_OBJECTS = 255  # labels a re-sent label map may hold (one full-size mask per object)
MAX_NAME = 64  # characters of an object's name (a DICOM segment label holds 64)


class PointBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ijk: list[float] | None = Field(default=None, min_length=3, max_length=3)
    mm: list[float] | None = Field(default=None, min_length=3, max_length=3)
    positive: StrictBool = True


Corner = list[StrictInt]


class BoxBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ijk: list[Annotated[Corner, Field(min_length=3, max_length=3)]] = Field(min_length=2, max_length=2)


class StrokeBody(BaseModel):
    """A scribble path or a lasso outline: real file-voxel (i, j, k) vertices, and the sign."""

    model_config = ConfigDict(extra="forbid")
    ijk: list[Annotated[list[float], Field(min_length=3, max_length=3)]] = Field(min_length=1,
                                                                                max_length=MAX_VERTICES)
    positive: StrictBool = True

    def array_vertices(self) -> np.ndarray:
        """The vertices as array indices (k, j, i); 400 for non-finite ones."""
        v = np.asarray(self.ijk, dtype=np.float64)[:, ::-1]
        if not np.isfinite(v).all():
            raise BadRequest("stroke vertices must be finite numbers")
        return v


class NameBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(max_length=MAX_NAME)


class LockBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    locked: StrictBool = True


class PolicyBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    others_negative: StrictBool


def _ijk(index) -> list[int]:
    """An array index (k, j, i) as file voxel [i, j, k]."""
    return [int(v) for v in index[::-1]]


def _marks(prompts: list) -> tuple[list[dict], list[dict], list[dict]]:
    """The current object's points, boxes and strokes in file voxels (i, j, k), for the page's markers:
    a stroke lists the clicks its rule made and (a scribble) its first voxels."""
    clicks, boxes, strokes = [], [], []
    for kind, value in prompts:
        if kind == "point":
            index, positive = value
            clicks.append({"ijk": _ijk(index), "positive": bool(positive)})
        elif kind == "box":
            lo, hi = value
            boxes.append({"lo_ijk": _ijk(lo), "hi_ijk": [v - 1 for v in _ijk(hi)]})
        elif kind in ("scribble", "lasso"):
            shown = value.voxels[:MAX_SHOWN_STROKE_VOXELS] if kind == "scribble" else value.voxels[:0]
            strokes.append({"kind": kind, "positive": bool(value.positive),
                            "clicks": [{"ijk": _ijk(index), "positive": bool(label)} for index, label in value.clicks],
                            "voxels": [_ijk(v) for v in shown.tolist()]})
    return clicks, boxes, strokes


def _settled(lease: Lease, timeout: float | None = 0) -> None:
    """Apply a finished background refinement now (waiting up to ``timeout`` s, None: until it is done) and keep
    its changed box for the next summary: the session would otherwise apply it inside its next call without
    saying where, and the page updates only the blocks it is told of. (The lease's lock is held.)"""
    done = lease.session.wait_refined(timeout=timeout)
    if done is not None and done.changed_bbox is not None:
        lease.state["unreported_bbox"] = union_box(lease.state.get("unreported_bbox"), done.changed_bbox)


def _block_region(shape: tuple[int, ...], bounds: dict[str, tuple[int, int]]) -> tuple[slice, ...]:
    """The (k, j, i) slices of a half-open block given per axis as ``{"k": (k0, k1), ...}``; 400 unless it is
    a non-empty box inside the volume."""
    region = []
    for (axis, (lo, hi)), n in zip(bounds.items(), shape):
        if not 0 <= lo < hi <= n:
            raise BadRequest(f"block {axis}0={lo}, {axis}1={hi} is empty or outside the volume: need "
                             f"0 <= {axis}0 < {axis}1 <= {n} (the volume is (k, j, i) = {list(shape)})")
        region.append(slice(lo, hi))
    return tuple(region)


def _summary(lease: Lease, pred: Prediction | None = None) -> dict[str, Any]:
    s: Session = lease.session
    _settled(lease)  # before the session's properties below could apply it unannounced
    changed = union_box(None if pred is None else pred.changed_bbox, lease.state.pop("unreported_bbox", None))
    lease.state["version"] = lease.state.get("version", 0) + 1
    clicks, boxes, strokes = _marks(s.prompts)
    names = lease.state.get("names", {})
    return {
        "object_id": s.object_id, "objects": s.object_ids, "can_undo": s.can_undo,
        "locked": s.locked_objects, "others_negative": bool(s.others_negative),
        "names": {str(k): v for k, v in names.items() if k in s.object_ids},
        "clicks": clicks, "boxes": boxes, "strokes": strokes, "dicom": bool(lease.state.get("dicom_headers")),
        "voxels": int(np.count_nonzero(s.mask)), "version": lease.state["version"],
        "score": None if pred is None or pred.score is None else round(float(pred.score), 4),
        "low_confidence": bool(pred is not None and pred.low_confidence),
        "warning": None if pred is None else pred.warning,
        "refining": bool(s.refining),
        "changed_bbox_kji": None if changed is None else [[int(b.start), int(b.stop)] for b in changed],
    }


def install(app: FastAPI, ctx: ServerContext) -> None:
    """Serve the page at ``/``, its assets at ``/web/`` and the viewer API (API key required)."""
    if not (STATIC_DIR / "index.html").is_file():
        log.warning("browser viewer files are missing in %s (run `make web`)", STATIC_DIR)
        return
    app.mount("/web", StaticFiles(directory=STATIC_DIR), name="web")

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers=NO_CACHE)

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon() -> Response:
        return Response(status_code=204)

    app.include_router(make_router(ctx))


def make_router(ctx: ServerContext) -> APIRouter:
    r = APIRouter(prefix="/api/viewer", tags=["browser viewer"])
    auth = [Depends(ctx.auth)]
    s = ctx.settings

    def lease_of(token: str, active: bool = True) -> Lease:
        return ctx.leases.get(token, kind=KIND, active=active)

    async def settled_run(lease: Lease, fn: Callable[[], Any]) -> Any:
        """``ctx.run_locked``, a background refinement that finished meanwhile applied and reported first."""
        def run() -> Any:
            _settled(lease)
            return fn()

        return await ctx.run_locked(lease, run)

    def prompt(lease: Lease, call: Callable[[], Prediction]) -> Prediction:
        """One prompt under the model lock, a refinement that finished before it applied (and reported) first
        (here, not before the model lock: another user's step may run meanwhile)."""
        def run() -> Prediction:
            _settled(lease)
            return call()

        return ctx.model_step(run)

    @r.get("/config")
    def config() -> dict:
        return {"auth": s.api_key is not None, "data_dir": s.data_dir is not None, "model": ctx.host.name,
                "heartbeat_s": max(1.0, s.liveness_timeout_s / 2), "max_upload_mb": s.max_upload_mb,
                "tools": list(TOOLS)}

    @r.get("/files", dependencies=auth)
    async def files() -> dict:
        if s.data_dir is None:
            return {"files": []}
        return {"files": await ctx.run_blocking(lambda: list_volumes(s.data_dir))}

    @r.post("/open", dependencies=auth)
    async def open_volume(request: Request) -> dict:
        form = await request.form()
        upload, path = form.get("file"), form.get("path")
        if upload is not None and not isinstance(upload, str):
            data, name = await upload.read(), upload.filename

            def load() -> tuple[Upload, str]:
                files = ([(name, data)] if file_extension(str(name)) != ".zip"
                         else unzip_upload(name, data, s.max_upload_bytes))
                return read_upload(files, max_bytes=ctx.image_limit_bytes), safe_filename(name, "volume")
        elif isinstance(path, str) and path:
            def load() -> tuple[Upload, str]:
                p = resolve_data_path(s.data_dir, path)
                image = read_image(p, max_bytes=ctx.image_limit_bytes)
                return Upload(image, dicom_header_copies(image)), p.name
        else:
            raise BadRequest("send a multipart 'file' (the volume, or a zip of a DICOM series) or a 'path' "
                             "under --data-dir")

        def do() -> dict:
            up, fname = load()
            image = up.image
            ctx.check_image_bytes(image.array.nbytes)
            lease = ctx.leases.claim(KIND, s.idle_timeout_s, s.liveness_timeout_s)
            with lease.lock:
                lease.session.set_image(image)
                ctx.account(lease)
            lease.state.update(name=fname, dicom_headers=up.dicom_headers, names={})
            return {"token": lease.token, "name": fname, "size_ijk": list(image.shape[::-1]),
                    **_summary(lease)}

        return await ctx.run_blocking(do)

    @r.get("/{token}/volume.nii.gz", dependencies=auth)
    async def volume(token: str) -> Response:
        lease = lease_of(token)
        data = await ctx.run_locked(lease, lambda: image_nifti_bytes(lease.session.image))
        return Response(content=data, media_type="application/octet-stream", headers=NO_CACHE)

    @r.get("/{token}/labels.nii.gz", dependencies=auth)
    async def labels(token: str, download: bool = False) -> Response:
        lease = lease_of(token)

        def labels_now() -> bytes:
            if download:  # a saved file holds the refined masks, never one still being refined
                _settled(lease, timeout=None)
            return label_nifti_bytes(lease.session.label_map(), lease.session.image)

        data = await settled_run(lease, labels_now)
        headers = dict(NO_CACHE)
        if download:
            stem = lease.state["name"].split(".")[0] or "volume"
            headers["Content-Disposition"] = f'attachment; filename="{stem}_labels.nii.gz"'
        return Response(content=data, media_type="application/octet-stream", headers=headers)

    @r.get("/{token}/labels/block", dependencies=auth)
    async def labels_block(token: str, k0: int, k1: int, j0: int, j1: int, i0: int, i1: int) -> Response:
        lease = lease_of(token)

        def block() -> tuple[bytes, str]:
            region = _block_region(lease.session.shape, {"k": (k0, k1), "j": (j0, j1), "i": (i0, i1)})
            labels = lease.session.label_map()
            wide = labels.dtype != np.uint8 and int(labels.max()) > 255  # the label file's rule (write_mask)
            dtype = np.dtype("<u2" if wide else "<u1")
            return np.ascontiguousarray(labels[region], dtype=dtype).tobytes(), ("uint16" if wide else "uint8")

        data, dtype = await settled_run(lease, block)
        return Response(content=data, media_type="application/octet-stream",
                        headers={**NO_CACHE, "X-Label-Dtype": dtype})

    @r.get("/{token}/labels.dcm", dependencies=auth)
    async def labels_seg(token: str) -> Response:
        lease = lease_of(token)
        headers = lease.state.get("dicom_headers", ())
        if not headers:
            raise BadRequest("a DICOM SEG needs a DICOM volume (a zip of the series or a .dcm file); this one "
                             "was not DICOM: download the labels as NIfTI instead")

        def snapshot() -> tuple[np.ndarray, Any, dict[int, str]]:
            session = lease.session
            _settled(lease, timeout=None)  # a saved file holds the refined masks
            names = lease.state.get("names", {})
            return (session.label_map(), session.image,
                    {oid: names.get(oid, f"object {oid}") for oid in session.object_ids})

        labels, image, names = await settled_run(lease, snapshot)
        data = await ctx.run_blocking(lambda: dicom_seg_bytes(labels, image, headers, names, ctx.host.name))
        stem = lease.state["name"].split(".")[0] or "volume"
        return Response(content=data, media_type="application/dicom", headers={
            **NO_CACHE, "Content-Disposition": f'attachment; filename="{stem}_seg.dcm"'})

    @r.post("/{token}/masks", dependencies=auth)
    async def masks(token: str, request: Request) -> dict:
        lease = lease_of(token)
        upload = (await request.form()).get("file")
        if upload is None or isinstance(upload, str):
            raise BadRequest("send the label map as a multipart 'file' (NIfTI on the image's grid)")
        data, name = await upload.read(), upload.filename
        image = lease.session.image

        def read() -> np.ndarray:
            labels = grid_labels(read_uploaded([(name, data)], max_bytes=ctx.image_limit_bytes), image)
            if not np.issubdtype(labels.dtype, np.integer) and not np.array_equal(labels, np.round(labels)):
                raise BadRequest("the label map holds non-integer values; send object ids 0, 1, 2, ...")
            top, low = (int(labels.max()), int(labels.min())) if labels.size else (0, 0)
            if low < 0 or top > MAX_OBJECTS:
                raise BadRequest(f"the label map holds values {low}..{top}; object ids are 0 (background) to "
                                 f"{MAX_OBJECTS}")
            if top * labels.size > s.session_memory_bytes:
                raise TooLarge(f"{top} objects of {labels.size} voxels need more than this server's per-session "
                               f"cap of {s.session_memory_bytes / 2**20:.0f} MiB (--session-memory-mb)")
            return labels.astype(np.uint8, copy=False)  # ids 0..MAX_OBJECTS (255)

        labels = await ctx.run_blocking(read)

        def put() -> dict:
            session = lease.session
            current = session.object_id
            counts = np.bincount(labels.ravel(), minlength=int(labels.max()) + 1)
            while max(session.object_ids) < len(counts) - 1:
                session.new_object()
            for oid in range(1, len(counts)):
                session.select_object(oid)
                if counts[oid] or session.mask.any():  # an object emptied by the label map too
                    session.add_mask(labels == oid)
            session.select_object(current)
            return _summary(lease)

        return await settled_run(lease, put)

    @r.post("/{token}/point", dependencies=auth)
    async def point(token: str, body: PointBody) -> dict:
        if (body.ijk is None) == (body.mm is None):
            raise BadRequest("give exactly one of 'ijk' (file voxel i, j, k) or 'mm' (RAS world)")
        lease = lease_of(token)

        def do() -> dict:
            img = lease.session.image
            ijk = body.ijk if body.ijk is not None else ras_to_file_ijk(nifti_affine(img), body.mm)
            index = from_slicer_ijk([float(v) for v in ijk])
            pred = prompt(lease, lambda: lease.session.add_point(index, positive=body.positive))
            return _summary(lease, pred)  # the model's mask; the refined one via /refined

        return await settled_run(lease, do)

    @r.post("/{token}/box", dependencies=auth)
    async def box(token: str, body: BoxBody) -> dict:
        lease = lease_of(token)
        a, b = np.asarray(body.ijk[0]), np.asarray(body.ijk[1])
        lo, hi = np.minimum(a, b), np.maximum(a, b) + 1  # inclusive file-voxel corners -> [lo, hi)

        def do() -> dict:
            pred = prompt(lease, lambda: lease.session.add_box(lo[::-1].tolist(), hi[::-1].tolist()))
            return _summary(lease, pred)  # the model's mask; the refined one via /refined

        return await settled_run(lease, do)

    @r.post("/{token}/scribble", dependencies=auth)
    async def scribble(token: str, body: StrokeBody) -> dict:
        lease = lease_of(token)
        path = body.array_vertices()
        steps = float(np.abs(np.diff(path, axis=0)).max(axis=1).sum()) if len(path) > 1 else 0.0
        if steps > MAX_PATH_STEPS:
            raise BadRequest(f"the scribble path is {steps:.0f} voxels long, more than {MAX_PATH_STEPS}")

        def do() -> dict:
            voxels = path_voxels(path, lease.session.shape)
            pred = prompt(lease, lambda: lease.session.add_scribble(voxels, positive=body.positive))
            return _summary(lease, pred)

        return await settled_run(lease, do)

    @r.post("/{token}/lasso", dependencies=auth)
    async def lasso(token: str, body: StrokeBody) -> dict:
        lease = lease_of(token)
        polygon = body.array_vertices()

        def do() -> dict:
            pred = prompt(lease, lambda: lease.session.add_lasso(polygon, positive=body.positive))
            return _summary(lease, pred)

        return await settled_run(lease, do)

    @r.post("/{token}/refined", dependencies=auth)
    async def refined(token: str) -> dict:
        lease = lease_of(token)

        def poll() -> dict | None:
            session = lease.session
            pred = session.wait_refined(timeout=REFINED_POLL_S)
            if pred is not None:
                return {**_summary(lease, pred), "refined": True}
            if not session.refining:  # nothing pending, or cancelled by a newer prompt
                return {**_summary(lease), "refined": False}
            return None

        def wait() -> dict:
            deadline = time.monotonic() + REFINED_WAIT_S
            while True:
                answer = ctx.call_locked(lease, poll)
                if answer is not None:
                    return answer
                if time.monotonic() > deadline:
                    return {**ctx.call_locked(lease, lambda: _summary(lease)), "refined": False}
                time.sleep(0.005)  # let a waiting request of this lease take the lock

        return await ctx.run_blocking(wait)

    @r.post("/{token}/undo", dependencies=auth)
    async def undo(token: str) -> dict:
        lease = lease_of(token)

        def do() -> dict:
            if not lease.session.can_undo:
                raise BadRequest(f"nothing to undo for object {lease.session.object_id}")
            return _summary(lease, lease.session.undo())

        return await settled_run(lease, do)

    @r.post("/{token}/reset", dependencies=auth)
    async def reset(token: str) -> dict:
        lease = lease_of(token)
        return await settled_run(lease, lambda: _summary(lease, lease.session.reset()))

    @r.post("/{token}/objects", dependencies=auth)
    async def new_object(token: str) -> dict:
        lease = lease_of(token)

        def do() -> dict:
            lease.session.new_object()
            return _summary(lease)

        return await settled_run(lease, do)

    @r.post("/{token}/objects/{object_id}", dependencies=auth)
    async def select_object(token: str, object_id: int) -> dict:
        lease = lease_of(token)

        def do() -> dict:
            lease.session.select_object(object_id)
            return _summary(lease)

        return await settled_run(lease, do)

    @r.post("/{token}/objects/{object_id}/name", dependencies=auth)
    async def name_object(token: str, object_id: int, body: NameBody) -> dict:
        lease = lease_of(token)
        name = " ".join(body.name.split())  # one line: it becomes a DICOM segment label

        def do() -> dict:
            if object_id not in lease.session.object_ids:
                raise BadRequest(f"no object {object_id}; objects are {lease.session.object_ids}")
            names = lease.state.setdefault("names", {})
            if name:
                names[object_id] = name
            else:
                names.pop(object_id, None)
            return _summary(lease)

        return await settled_run(lease, do)

    @r.post("/{token}/objects/{object_id}/lock", dependencies=auth)
    async def lock_object(token: str, object_id: int, body: LockBody | None = None) -> dict:
        lease = lease_of(token)
        locked = True if body is None else body.locked

        def do() -> dict:
            lease.session.lock_object(object_id, locked=locked)
            return _summary(lease)

        return await settled_run(lease, do)

    @r.post("/{token}/policy", dependencies=auth)
    async def policy(token: str, body: PolicyBody) -> dict:
        lease = lease_of(token)

        def do() -> dict:
            lease.session.others_negative = body.others_negative
            return _summary(lease)

        return await settled_run(lease, do)

    @r.post("/{token}/heartbeat", dependencies=auth)
    def heartbeat(token: str) -> dict:
        lease = lease_of(token)  # an open page keeps its work: resets the idle clock too
        return {"remaining_seconds": lease.remaining(ctx.leases.now())}

    @r.delete("/{token}", dependencies=auth)
    def close(token: str) -> dict:
        if not ctx.leases.release(token):
            raise NotFound("no such viewer session")
        return {"closed": True}

    return r
