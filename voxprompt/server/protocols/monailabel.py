"""MONAI Label REST subset for 3D Slicer's MONAILabel module (Deepgrow/SmartEdit click workflow).

Endpoints: ``GET /info/``, ``GET /auth/``, ``POST /auth/token``, ``PUT /session/``,
``GET|DELETE /session/{id}``, ``POST /infer/{model}``. The loaded model is advertised as type
``deepgrow``, ``dimension`` 3.

Axis order: Slicer sends points as IJK from ``RASToIJK`` (``[i, j, k]``, i fastest). The uploaded
volume is read with SimpleITK, whose array is numpy (k, j, i), so each point is reversed with
:func:`~voxprompt.session.from_slicer_ijk` before it reaches the Session. The label volume goes
back as NIfTI with the input's spacing, origin and direction (Slicer imports it by geometry).

Click semantics: MONAI Label is stateless per request (the full ``foreground``/``background``
lists travel every time), SAM-Med3D is a click loop. Each MONAI session keeps one Session and one
object per ``label`` name; when a request's lists extend the points already applied to that label,
only the new points are added (the official refinement chain); otherwise (a point was moved or
deleted, or ``reset_state`` is true) the object is reset and every point is replayed, foreground
points first. A ``label`` file part (the client's ``label_in``, on the image's grid) seeds the object:
its nonzero voxels become the object's mask (``Session.add_mask``) before every point is applied, and
stay its starting mask for later replays until ``reset_state``. ``roi`` is ignored. The response
label has value 1 for the object. The response's ``params`` carry voxprompt's own ``voxprompt``
entry: ``score``, and ``low_confidence`` / ``warning`` (a sentence or null) when the result looks
poor (:class:`~voxprompt.session.Prediction`; points in the sentence are array indices (k, j, i),
the reverse of IJK).

Label policy (voxprompt's params; :class:`~voxprompt.session.objects.ObjectsMixin`):
``"locked_labels": [names]`` locks the objects of exactly these labels of the session (the others are
unlocked; a name with no object yet is ignored), so the request's label never takes their voxels;
``"others_negative": true|false`` keeps every other label's voxels out of the request's label. Both
apply before the request's points and stay for later requests until changed; the reply's
``params.voxprompt`` lists ``locked_labels`` and ``others_negative``.

Sharing the model: a request's points are applied one model step at a time, each step taking the
(first come, first served) model lock on its own, so other users' clicks run between the steps of a
long request; at most ``--max-points`` points per request (400 above), and a request whose client
disconnected stops before its next step (the points applied so far stay recorded).

Images come from ``session_id`` (the Slicer module's way), else from an uploaded ``file`` part
(one-off: it holds a session slot while it runs, 503 when every slot is taken), else ``image`` names a
file under ``--data-dir``: kept in a session of its own, with the normal ``--idle-timeout``, whose id
the reply gives as ``params.voxprompt.session_id`` (``DELETE /session/{id}`` releases it). One such
session per file, shared by every client that names the file.
"""
from __future__ import annotations

import json
import logging
import secrets
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import JSONResponse

from ...io.image import Image
from ...io.read import read_image
from ...session import Prediction, Session, from_slicer_ijk
from ...version import __version__
from ..context import ServerContext
from ..errors import BadRequest, ClientGone, LeaseGone, NotFound, Unauthorized
from ..leases import Lease
from ..security import check_api_key, resolve_data_path
from ..volumes import label_mask, label_nifti_bytes, read_uploaded, safe_filename

log = logging.getLogger(__name__)

KIND = "monailabel"
MAX_EXPIRY_S = 7 * 24 * 3600


def info(ctx: ServerContext) -> dict[str, Any]:
    """``/info/``: one deepgrow model; no top-level ``config`` (Slicer would refuse the server)."""
    name = ctx.host.name
    return {
        "name": "voxprompt",
        "description": "voxprompt promptable 3D segmentation (SAM-Med3D family)",
        "version": __version__,
        "labels": [],
        "models": {name: {"type": "deepgrow", "labels": [], "dimension": 3,
                          "description": f"{name}: click-based 3D segmentation (positive and negative points)",
                          "config": {}}},
        "trainers": {}, "strategies": {}, "scoring": {}, "train_stats": {},
        "datastore": {"total": 0, "completed": 0},
    }


# ----------------------------------------------------------------------------- params
def _params(raw: str | None) -> dict[str, Any]:
    if raw is None or raw == "":
        return {}
    try:
        params = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise BadRequest(f"params is not valid JSON: {exc.msg}") from None
    if not isinstance(params, dict):
        raise BadRequest("params must be a JSON object")
    return params


def _points(params: dict, key: str) -> list[tuple[float, float, float]]:
    raw = params.get(key) or []
    if not isinstance(raw, list):
        raise BadRequest(f"params.{key} must be a list of [i, j, k] points")
    out = []
    for p in raw:
        if (not isinstance(p, (list, tuple)) or len(p) != 3
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) for v in p)):
            raise BadRequest(f"params.{key}: each point must be three numbers [i, j, k], got {p!r}")
        out.append(tuple(float(v) for v in p))
    return out


def _check_inside(points: list, shape: tuple[int, ...], key: str) -> None:
    size_ijk = shape[::-1]
    for p in points:
        idx = np.floor(np.asarray(p) + 0.5)
        if np.any(idx < 0) or np.any(idx >= np.asarray(size_ijk)):
            raise BadRequest(f"params.{key}: point {list(p)} (IJK) is outside the volume of size "
                             f"{list(size_ijk)} (I, J, K)")


# ----------------------------------------------------------------------------- click replay
Step = Callable[[Callable[[], Prediction]], Prediction]


def _policy_params(params: dict) -> tuple[list[str] | None, bool | None]:
    """``locked_labels`` and ``others_negative`` from the infer params (None: not given)."""
    locked = params.get("locked_labels")
    if locked is not None and (not isinstance(locked, list) or not all(isinstance(v, str) for v in locked)):
        raise BadRequest(f"params.locked_labels must be a list of label names, got {locked!r}")
    negative = params.get("others_negative")
    if negative is not None and not isinstance(negative, bool):
        raise BadRequest(f"params.others_negative must be true or false, got {negative!r}")
    return locked, negative


def apply_policy(session: Session, labels: dict, locked: list[str] | None, others_negative: bool | None) -> None:
    """Lock exactly the objects of the ``locked`` labels (None: keep the locks) and set ``others_negative``."""
    if others_negative is not None:
        session.others_negative = others_negative
    if locked is not None:
        for name, entry in labels.items():
            session.lock_object(entry["object"], name in locked)


def policy_json(session: Session, labels: dict) -> dict[str, Any]:
    locked = set(session.locked_objects)
    return {"locked_labels": sorted(name for name, e in labels.items() if e["object"] in locked),
            "others_negative": bool(session.others_negative)}


def _direct(fn: Callable[[], Prediction]) -> Prediction:
    return fn()


def apply_points(session: Session, labels: dict, label: str, fg: list, bg: list, reset: bool,
                 step: Step = _direct, initial: np.ndarray | None = None) -> dict[str, Any]:
    """Bring ``label``'s object to the state of (fg, bg); returns what was done.

    ``labels`` maps label name -> {"object": id, "fg": [...], "bg": [...]} (points already applied).
    ``step`` runs each model call (the server: one model-lock turn per point, stopping for a client
    that went away); the entry records every point applied, so an interrupted request leaves a state
    that the next request extends. ``initial`` (the client's ``label_in``, a bool mask): the object is
    reset, the mask becomes its mask (``Session.add_mask``) and every point is applied on top; the mask
    is kept (bit-packed) and applied again whenever the object's points are replayed, until
    ``reset_state``.
    """
    entry = labels.get(label)
    if entry is None:
        oid = 1 if not labels else session.new_object()
        entry = labels[label] = {"object": oid, "fg": [], "bg": []}
    session.select_object(entry["object"])
    if initial is not None:
        entry["initial"] = (np.packbits(initial.ravel()), initial.shape)
    elif reset:
        entry.pop("initial", None)
    done_fg, done_bg = entry["fg"], entry["bg"]
    incremental = (initial is None and not reset and fg[:len(done_fg)] == done_fg
                   and bg[:len(done_bg)] == done_bg)
    if not incremental:
        session.reset()
        done_fg, done_bg = [], []
        entry["fg"], entry["bg"] = [], []
        if entry.get("initial") is not None:
            bits, shape = entry["initial"]
            mask = np.unpackbits(bits, count=int(np.prod(shape))).reshape(shape).astype(bool)
            step(lambda: session.add_mask(mask))
    new = [(p, True) for p in fg[len(done_fg):]] + [(p, False) for p in bg[len(done_bg):]]
    pred = None
    entry["fg"], entry["bg"] = list(done_fg), list(done_bg)
    for p, positive in new:
        index = from_slicer_ijk(p)  # IJK -> array (k, j, i)
        pred = step(lambda index=index, positive=positive: session.add_point(index, positive=positive))
        (entry["fg"] if positive else entry["bg"]).append(p)
    return {"object_id": entry["object"], "points_added": len(new), "replayed": not incremental,
            "label_in": initial is not None,
            "score": None if pred is None else pred.score,
            "low_confidence": bool(pred is not None and pred.low_confidence),
            "warning": None if pred is None else pred.warning}


# ----------------------------------------------------------------------------- responses
def multipart(params: dict, filename: str, data: bytes) -> Response:
    """``multipart/form-data`` with ``params`` (JSON) and the label file, as MONAI Label answers."""
    boundary = secrets.token_hex(16)
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"params\"\r\n"
            f"Content-Type: application/json\r\n\r\n{json.dumps(params)}\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{filename}\"\r\n"
            f"Content-Type: application/octet-stream\r\n\r\n").encode()
    body = head + data + f"\r\n--{boundary}--\r\n".encode()
    return Response(content=body, media_type=f"multipart/form-data; boundary={boundary}")


def _session_info(lease: Lease, now_mono: float) -> dict[str, Any]:
    st = lease.state
    return {"session_id": lease.token, "name": st["name"], "image": st["name"],
            "meta": {"size_ijk": list(lease.session.shape[::-1]), "spacing": list(st["image"].spacing)},
            "create_ts": st["create_ts"], "last_access_ts": time.time() - (now_mono - lease.last_active),
            "expiry": lease.idle_timeout}


# ----------------------------------------------------------------------------- router
def make_router(ctx: ServerContext) -> APIRouter:
    r = APIRouter(tags=["MONAI Label"])
    auth = [Depends(ctx.auth)]
    data_sessions: dict[str, str] = {}  # --data-dir relative path -> lease token
    data_mu = threading.Lock()

    def new_lease(image: Image, name: str, expiry: float) -> Lease:
        ctx.check_image_bytes(image.array.nbytes)
        lease = ctx.leases.claim(KIND, expiry, None)
        with lease.lock:
            lease.session.set_image(image)
            ctx.account(lease)
        lease.state.update(image=image, name=name, labels={}, create_ts=time.time(), source="session")
        return lease

    @r.get("/info/", dependencies=auth)
    def get_info() -> dict:
        return info(ctx)

    @r.get("/auth/")
    def get_auth() -> dict:
        return {"enabled": ctx.settings.api_key is not None}

    @r.post("/auth/token")
    async def token(request: Request) -> dict:
        if ctx.settings.api_key is None:
            raise BadRequest("authentication is not enabled on this server")
        form = await request.form()
        password = form.get("password")
        if not isinstance(password, str):
            raise Unauthorized("send the API key as the password")
        check_api_key(ctx.settings.api_key, f"Bearer {password}")
        return {"access_token": ctx.settings.api_key, "token_type": "bearer"}

    @r.put("/session/", dependencies=auth)
    async def create_session(request: Request, uncompress: bool = False, expiry: int = 0) -> dict:
        if uncompress:
            raise BadRequest("uncompress=true is not supported: upload the volume file(s) themselves")
        if expiry < 0 or expiry > MAX_EXPIRY_S:
            raise BadRequest(f"expiry must be 0..{MAX_EXPIRY_S} seconds, got {expiry}")
        form = await request.form(max_files=5000)
        uploads = [f for f in form.getlist("files") if not isinstance(f, str)]
        if not uploads:
            raise BadRequest("no volume: send one or more multipart parts named 'files'")
        files = [(f.filename, await f.read()) for f in uploads]
        name = safe_filename(uploads[0].filename, "image")

        def do() -> dict:
            image = read_uploaded(files, max_bytes=ctx.image_limit_bytes)
            lease = new_lease(image, name, float(expiry or ctx.settings.monai_session_expiry_s))
            return {"session_id": lease.token, "session_info": _session_info(lease, ctx.leases.now())}

        return await ctx.run_blocking(do)

    def session_lease(session_id: str) -> Lease:
        try:
            return ctx.leases.get(session_id, kind=KIND, active=True)
        except LeaseGone as exc:  # 404, as Slicer's module expects; the sentence says if it can be restored
            raise NotFound(f"session {session_id!r} not found or expired: {exc.detail}") from None

    @r.get("/session/{session_id}", dependencies=auth)
    def get_session(session_id: str) -> dict:
        return _session_info(session_lease(session_id), ctx.leases.now())

    @r.delete("/session/{session_id}", dependencies=auth)
    def delete_session(session_id: str) -> dict:
        lease = session_lease(session_id)
        out = _session_info(lease, ctx.leases.now())
        ctx.leases.release(session_id)
        return out

    def data_lease(image_id: str) -> Lease:
        path = resolve_data_path(ctx.settings.data_dir, image_id)
        with data_mu:
            token = data_sessions.get(image_id)
            if token is not None:
                try:
                    return ctx.leases.get(token, kind=KIND, active=True)
                except LeaseGone:
                    data_sessions.pop(image_id, None)
            lease = new_lease(read_image(path, max_bytes=ctx.image_limit_bytes), path.name,
                              ctx.settings.idle_timeout_s)
            lease.state["source"] = "data-dir"
            data_sessions[image_id] = lease.token
            return lease

    @r.post("/infer/{model}", dependencies=auth)
    async def infer(model: str, request: Request, image: str = Query(""), session_id: str | None = None,
                    output: str | None = None) -> Response:
        if model != ctx.host.name:
            raise NotFound(f"model {model!r} not found; this server has {ctx.host.name!r}")
        if output not in (None, "", "all", "image", "json"):
            raise BadRequest(f"output={output!r} is not supported; use image, json or all (default)")
        form = await request.form()
        params = _params(form.get("params") if isinstance(form.get("params"), str) else None)
        upload = form.get("file")
        upload_bytes = await upload.read() if upload is not None and not isinstance(upload, str) else None
        label_part = form.get("label")  # the client's label_in
        label_in = ((label_part.filename, await label_part.read())
                    if label_part is not None and not isinstance(label_part, str) else None)
        label = str(params.get("label") or "label")
        fg, bg = _points(params, "foreground"), _points(params, "background")
        reset = bool(params.get("reset_state", False))
        locked_labels, others_negative = _policy_params(params)
        cap = ctx.settings.max_points
        if len(fg) + len(bg) > cap:
            raise BadRequest(f"{len(fg) + len(bg)} points in one request; this server runs at most {cap} "
                             "(--max-points): reset the segment and click again, or ask for a larger cap")
        t0 = time.perf_counter()

        async with ctx.disconnect_event(request) as gone:
            def run(session: Session, img: Image, labels: dict) -> tuple[dict, np.ndarray]:
                _check_inside(fg, img.shape, "foreground")
                _check_inside(bg, img.shape, "background")
                initial = None
                if label_in is not None:
                    initial = label_mask(read_uploaded([label_in], max_bytes=ctx.image_limit_bytes), img)
                apply_policy(session, labels, locked_labels, others_negative)
                done = apply_points(session, labels, label, fg, bg, reset,
                                    step=lambda fn: ctx.prompt_step(session, fn, gone), initial=initial)
                if locked_labels is not None and label in locked_labels:
                    apply_policy(session, labels, locked_labels, None)  # the label's object is new
                done.update(policy_json(session, labels))
                return done, np.asarray(session.mask, dtype=np.uint8)

            try:
                if session_id:
                    lease = session_lease(session_id)
                    done, mask = await ctx.run_locked(lease, lambda: run(lease.session, lease.state["image"],
                                                                         lease.state["labels"]))
                    img, name = lease.state["image"], lease.state["name"]
                elif upload_bytes is not None:
                    def one_off() -> tuple[dict, np.ndarray, Image]:
                        lease = ctx.leases.claim(KIND, ctx.settings.idle_timeout_s)  # a slot while it runs
                        lease.state["source"] = "upload"
                        try:
                            im = read_uploaded([(upload.filename, upload_bytes)], max_bytes=ctx.image_limit_bytes)
                            ctx.check_image_bytes(im.array.nbytes)
                            with lease.lock:
                                lease.session.set_image(im)
                                ctx.account(lease)
                                d, m = run(lease.session, im, {})
                            return d, m, im
                        finally:
                            ctx.leases.release(lease.token)

                    done, mask, img = await ctx.run_blocking(one_off)
                    name = safe_filename(upload.filename, "image")
                elif image:
                    lease = await ctx.run_blocking(lambda: data_lease(image))
                    done, mask = await ctx.run_locked(lease, lambda: run(lease.session, lease.state["image"],
                                                                         lease.state["labels"]))
                    img, name = lease.state["image"], lease.state["name"]
                    done["session_id"] = lease.token  # DELETE /session/{id} releases it
                else:
                    raise BadRequest("no image: give session_id (PUT /session/ first), a 'file' part, or "
                                     "image=<path under --data-dir>")
            except ClientGone:
                log.info("infer %s: the client disconnected; stopped after the points applied so far", label)
                raise

        data = await ctx.run_blocking(lambda: label_nifti_bytes(mask, img))
        out = {"label_names": {label: 1}, "latencies": {"infer": round(time.perf_counter() - t0, 4)},
               "voxprompt": done}
        if output == "json":
            return JSONResponse(out)
        filename = f"{safe_filename(name, 'image').split('.')[0]}_{label_safe(label)}.nii.gz"
        if output == "image":
            return Response(content=data, media_type="application/octet-stream",
                            headers={"Content-Disposition": f'attachment; filename="{filename}"'})
        return multipart(out, filename, data)

    return r


def label_safe(label: str) -> str:
    return safe_filename(label, "label")[:40]
