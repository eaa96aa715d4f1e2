"""Saved sessions: one file holding a 3D :class:`~voxprompt.session.Session`'s state, and the image it fits.

``Session.save(path)`` writes it and ``Session.load_state(path)`` (after ``set_image``) puts it back;
``voxprompt segment --prompts FILE`` replays the prompts it holds (:func:`saved_prompts`).

The file is a NumPy ``.npz`` (a zip of ``.npy`` members, compressed) read with ``allow_pickle=False``,
so loading one never runs code. Member ``manifest`` holds UTF-8 JSON (as uint8 bytes)::

    {"format": "voxprompt-session", "version": 1, "voxprompt": "...",
     "image": {"shape": [z, y, x], "dtype": "float32", "spacing": [...], "origin": [...],
               "direction": [9 values], "sha256": "<hash of the C-order voxel bytes>"},
     "model": {"img_size": 64, "low_res_size": 16, "roi_spacing_mm": 2.25},
     "current": 1, "locked": [1], "others_negative": false,
     "objects": [{"id": 1, "mask": "o1_mask", <state>, "history": [{<state>, "bbox": [[a, b] x3] | null,
                                                                     "old_block": "o1_h0" | null}]}]}

where ``<state>`` is ``roi`` (the :class:`~voxprompt.preprocess.Roi` fields, or null), ``points_roi``
(``[[a0, a1, a2, label], ...]``: the clicks in ROI coordinates fed to the decoder), ``prompts``
(``{"type": "point", "at": [z, y, x], "positive": true}``, ``{"type": "box", "lo": [...], "hi": [...]}``,
``{"type": "mask"}``, ``{"type": "scribble" | "lasso", "voxels": "<member>", "positive": true,
"rule": "points", "clicks": [[z, y, x, label], ...]}`` with the stroke's ``(N, 3)`` voxels as an int32
member named by their hash, so every step that holds the stroke shares it; array indices), ``logits``
(the member holding the low-res logits fed back with the next prompt, shared between steps, or null;
``logits_dtype`` names a torch dtype stored as its bits) and ``score``. Masks and undo blocks are
bit-packed bool arrays (``np.packbits``, C order). Floats go through JSON exactly (shortest repr), so
the next prompt after loading gives bitwise what it would have given.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError, SessionFileError, SessionTooLarge, VoxpromptError
from ..io.image import Image
from ..preprocess import Roi
from .strokes import KINDS as STROKE_KINDS
from .strokes import LASSO_RULES, SCRIBBLE_RULES, Stroke

FORMAT = "voxprompt-session"
FORMAT_VERSION = 1
SUFFIX = ".vps"
_ZIP_MAGIC = b"PK\x03\x04"


# ----------------------------------------------------------------------------- file
def is_saved_session(path: str | Path) -> bool:
    """Whether ``path`` looks like a saved session (a zip file) rather than a text prompts file."""
    try:
        with open(path, "rb") as f:
            return f.read(4) == _ZIP_MAGIC
    except OSError:
        return False


def state_bytes(manifest: dict, arrays: dict[str, np.ndarray]) -> bytes:
    """The manifest and arrays as the bytes of one compressed ``.npz`` (what :func:`write_state` writes)."""
    doc = {"format": FORMAT, "version": FORMAT_VERSION, **manifest}
    members = {"manifest": np.frombuffer(json.dumps(doc).encode("utf-8"), dtype=np.uint8), **arrays}
    buf = io.BytesIO()
    np.savez_compressed(buf, **members)
    return buf.getvalue()


def write_state(path: str | Path, manifest: dict, arrays: dict[str, np.ndarray]) -> Path:
    """Write the manifest and arrays as one compressed ``.npz`` (atomically: a temporary file, then renamed)."""
    out = Path(path)
    tmp = out.with_name(out.name + ".tmp")
    try:
        tmp.write_bytes(state_bytes(manifest, arrays))
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    return out


def read_state(source: str | Path | bytes, max_bytes: int | None = None) -> tuple[dict, dict[str, np.ndarray]]:
    """The manifest and arrays of a saved session, from a file or from its bytes (an upload);
    :class:`SessionFileError` for one that is missing, truncated, corrupt, not a saved session or of
    another format version. ``max_bytes`` bounds what its members declare they unpack to, checked
    before anything is unpacked (:class:`SessionTooLarge`), so a small upload cannot claim a lot of memory."""
    if isinstance(source, (bytes, bytearray)):
        name, data = "the uploaded session state", bytes(source)
    else:
        name = str(source)
        try:
            with open(source, "rb") as f:
                data = f.read()
        except OSError as exc:
            raise SessionFileError(f"{name}: cannot read ({exc.strerror or exc})") from None
    try:
        if max_bytes is not None:
            with zipfile.ZipFile(io.BytesIO(data)) as z:
                declared = sum(i.file_size for i in z.infolist())
            if declared > max_bytes:
                raise SessionTooLarge(f"{name} unpacks to {declared / 2**20:.1f} MiB, more than the "
                                      f"{max_bytes / 2**20:.0f} MiB allowed")
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}  # reads (and CRC-checks) every member now
        raw = arrays.pop("manifest")
        manifest = json.loads(bytes(raw.astype(np.uint8)).decode("utf-8"))
    except KeyError:
        raise SessionFileError(f"{name}: not a saved session (no manifest)") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, UnicodeDecodeError) as exc:
        raise SessionFileError(f"{name}: not a readable saved session (truncated or corrupt: {exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise SessionFileError(f"{name}: not a saved session (format {manifest.get('format')!r})"
                               if isinstance(manifest, dict) else f"{name}: not a saved session")
    if manifest.get("version") != FORMAT_VERSION:
        raise SessionFileError(f"{name}: saved session format version {manifest.get('version')!r}; this voxprompt "
                               f"reads version {FORMAT_VERSION}")
    return manifest, arrays


# ----------------------------------------------------------------------------- the image
def image_identity(image: Image) -> dict:
    """What a saved session records of its image: shape, voxel type, geometry and a hash of the voxels."""
    arr = np.ascontiguousarray(image.array)
    return {"shape": list(image.shape), "dtype": str(arr.dtype), "spacing": [float(v) for v in image.spacing],
            "origin": [float(v) for v in image.origin],
            "direction": [float(v) for v in np.asarray(image.direction).ravel()],
            "sha256": hashlib.sha256(memoryview(arr).cast("B")).hexdigest()}


def check_image(saved: Any, image: Image, name: str) -> None:
    """:class:`InputError` naming what differs when ``image`` is not the one the session was saved on."""
    if not isinstance(saved, dict):
        raise SessionFileError(f"{name}: the saved session does not record its image")
    here = image_identity(image)
    try:
        for key in ("shape", "dtype"):
            there = list(saved[key]) if key == "shape" else saved[key]
            if there != here[key]:
                raise InputError(f"{name} was saved on another image: {key} {_shown(saved[key])} there, "
                                 f"{_shown(here[key])} here")
        for key in ("spacing", "origin", "direction"):
            if not np.allclose(np.asarray(saved[key], dtype=np.float64), here[key], rtol=0, atol=1e-6):
                raise InputError(f"{name} was saved on an image with another {key}: {_shown(saved[key])} there, "
                                 f"{_shown(here[key])} here")
        if saved["sha256"] != here["sha256"]:
            raise InputError(f"{name} was saved on another image: same size and geometry, other voxel values "
                             "(sha256 differs)")
    except VoxpromptError:
        raise
    except (KeyError, TypeError, ValueError):
        raise SessionFileError(f"{name}: the saved session's image record is malformed") from None


def _shown(v: Any) -> str:
    return str(tuple(v)) if isinstance(v, (list, tuple)) else str(v)


# ----------------------------------------------------------------------------- pieces of the state
def pack_mask(mask: np.ndarray) -> np.ndarray:
    return np.packbits(np.ascontiguousarray(mask, dtype=bool), axis=None)


def unpack_mask(packed: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    n = int(np.prod(shape))
    if packed.dtype != np.uint8 or packed.ndim != 1 or packed.size != (n + 7) // 8:
        raise ValueError(f"a packed mask of {packed.size} bytes does not fit shape {tuple(shape)}")
    return np.unpackbits(packed, count=n).reshape(shape).astype(bool)


def roi_to_json(roi: Roi | None) -> dict | None:
    if roi is None:
        return None
    return {"start": [int(v) for v in roi.start], "size": [int(v) for v in roi.size],
            "grid_shape": [int(v) for v in roi.grid_shape],
            "grid_affine": np.asarray(roi.grid_affine, dtype=np.float64).tolist(),
            "source_affine_lps": np.asarray(roi.source_affine_lps, dtype=np.float64).tolist(),
            "source_shape": [int(v) for v in roi.source_shape]}


def roi_from_json(doc: dict | None) -> Roi | None:
    if doc is None:
        return None
    ints = {k: tuple(int(v) for v in doc[k]) for k in ("start", "size", "grid_shape", "source_shape")}
    mats = {k: np.asarray(doc[k], dtype=np.float64) for k in ("grid_affine", "source_affine_lps")}
    if any(len(v) != 3 for v in ints.values()) or any(m.shape != (4, 4) for m in mats.values()):
        raise ValueError("a ROI needs 3 values per extent and 4x4 affines")
    return Roi(**ints, **mats)


def prompts_to_json(prompts: list, arrays: dict[str, np.ndarray] | None = None) -> list[dict]:
    """Prompts as JSON; a stroke's voxels go to ``arrays`` (a member per distinct set), or inline without it."""
    out = []
    for kind, data in prompts:
        if isinstance(data, Stroke):
            item: dict[str, Any] = {"type": kind, "positive": bool(data.positive), "rule": data.rule,
                                    "clicks": [[int(v) for v in idx] + [int(lab)] for idx, lab in data.clicks]}
            if arrays is None:
                item["voxels"] = data.voxels.tolist()
            else:
                vox = np.ascontiguousarray(data.voxels, dtype=np.int32)
                name = f"stroke_{hashlib.sha256(vox.tobytes()).hexdigest()[:20]}"
                arrays.setdefault(name, vox)
                item["voxels"] = name
            out.append(item)
        elif kind == "point":
            out.append({"type": "point", "at": [int(v) for v in data[0]], "positive": bool(data[1])})
        elif kind == "box":
            out.append({"type": "box", "lo": [int(v) for v in data[0]], "hi": [int(v) for v in data[1]]})
        else:
            out.append({"type": "mask"})
    return out


def _stroke_from_json(item: dict, shape: tuple[int, ...], arrays: dict[str, np.ndarray] | None) -> Stroke:
    kind, ref = item["type"], item["voxels"]
    vox = np.asarray(arrays[ref] if isinstance(ref, str) and arrays is not None else ref)
    if vox.ndim != 2 or vox.shape[1] != len(shape) or len(vox) == 0 or vox.dtype.kind not in "iu":
        raise ValueError(f"{kind} voxels must be a non-empty (N, {len(shape)}) integer array")
    vox = vox.astype(np.int64)
    if np.any((vox < 0) | (vox >= np.asarray(shape))):
        raise ValueError(f"a {kind} voxel is outside the image {shape}")
    vox.flags.writeable = False
    rule = item["rule"]
    if rule not in (SCRIBBLE_RULES if kind == "scribble" else LASSO_RULES):
        raise ValueError(f"unknown {kind} rule {rule!r}")
    clicks = []
    for c in item["clicks"]:
        idx, lab = tuple(int(v) for v in c[:-1]), int(c[-1])
        if len(idx) != len(shape) or not all(0 <= a < n for a, n in zip(idx, shape)) or lab not in (0, 1):
            raise ValueError(f"{kind} click {c} does not fit the image {shape}")
        clicks.append((idx, lab))
    if not clicks:
        raise ValueError(f"a {kind} needs its clicks")
    return Stroke(vox, bool(item["positive"]), rule, tuple(clicks))


def prompts_from_json(items: list, shape: tuple[int, ...], arrays: dict[str, np.ndarray] | None = None) -> list:
    out: list = []
    for item in items:
        kind = item["type"]
        if kind in STROKE_KINDS:
            out.append((kind, _stroke_from_json(item, shape, arrays)))
        elif kind == "point":
            at = tuple(int(v) for v in item["at"])
            if len(at) != len(shape) or not all(0 <= a < n for a, n in zip(at, shape)):
                raise ValueError(f"point {at} is outside the image {shape}")
            out.append(("point", (at, bool(item["positive"]))))
        elif kind == "box":
            lo, hi = tuple(int(v) for v in item["lo"]), tuple(int(v) for v in item["hi"])
            if len(lo) != len(shape) or len(hi) != len(shape):
                raise ValueError(f"box {lo}..{hi} does not fit the image {shape}")
            out.append(("box", (lo, hi)))
        elif kind == "mask":
            out.append(("mask", None))
        else:
            raise ValueError(f"unknown prompt type {kind!r}")
    return out


def points_to_json(points_roi: list) -> list[list[float]]:
    return [[float(v) for v in np.asarray(p, dtype=np.float64)] + [int(lab)] for p, lab in points_roi]


def points_from_json(items: list) -> list:
    out = []
    for item in items:
        if len(item) != 4:
            raise ValueError("a ROI point needs 3 coordinates and a label")
        out.append((np.asarray(item[:3], dtype=np.float64), int(item[3])))
    return out


def bbox_to_json(bbox: tuple[slice, ...] | None) -> list | None:
    return None if bbox is None else [[int(s.start), int(s.stop)] for s in bbox]


def bbox_from_json(doc: list | None, shape: tuple[int, ...]) -> tuple[slice, ...] | None:
    if doc is None:
        return None
    box = tuple(slice(int(a), int(b)) for a, b in doc)
    if len(box) != len(shape) or not all(0 <= s.start < s.stop <= n for s, n in zip(box, shape)):
        raise ValueError(f"undo box {doc} does not fit the image {shape}")
    return box


def decode_objects(manifest: dict, arrays: dict[str, np.ndarray], shape: tuple[int, ...], name: str) -> list[dict]:
    """The saved objects as plain fields (``id``, ``mask``, the state, ``history`` of step dicts); logits
    stay NumPy (``logits`` array or None, ``logits_dtype``). :class:`SessionFileError` if malformed."""
    def state(doc: dict) -> dict:
        key = doc.get("logits")
        logits = None if key is None else arrays[key]
        score = doc.get("score")
        return {"roi": roi_from_json(doc.get("roi")), "points_roi": points_from_json(doc.get("points_roi", [])),
                "prompts": prompts_from_json(doc.get("prompts", []), shape, arrays), "logits": logits,
                "logits_dtype": doc.get("logits_dtype"), "score": None if score is None else float(score)}

    try:
        out = []
        for doc in manifest["objects"]:
            obj = {"id": int(doc["id"]), "mask": unpack_mask(arrays[doc["mask"]], shape), **state(doc), "history": []}
            for step in doc["history"]:
                bbox = bbox_from_json(step.get("bbox"), shape)
                old = None
                if bbox is not None:
                    old = unpack_mask(arrays[step["old_block"]], tuple(s.stop - s.start for s in bbox))
                obj["history"].append({**state(step), "bbox": bbox, "old_block": old})
            out.append(obj)
    except VoxpromptError:
        raise
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
        raise SessionFileError(f"{name}: the saved session is malformed ({type(exc).__name__}: {exc})") from None
    ids = [o["id"] for o in out]
    if not ids or len(set(ids)) != len(ids) or min(ids) < 1:
        raise SessionFileError(f"{name}: the saved session's object ids {ids} are not distinct positive ids")
    return out


def mask_after(mask: np.ndarray, history: list, k: int) -> np.ndarray:
    """An object's mask right after its step ``k``: ``mask`` (its current one) with the later steps undone.
    ``history``: steps with ``bbox`` / ``old_block`` (objects or dicts)."""
    out = mask.copy()
    for step in reversed(history[k + 1:]):
        bbox = step["bbox"] if isinstance(step, dict) else step.bbox
        if bbox is not None:
            out[bbox] = step["old_block"] if isinstance(step, dict) else step.old_block
    return out


__all__ = ["FORMAT", "FORMAT_VERSION", "SUFFIX", "check_image", "image_identity", "is_saved_session",
           "read_state", "state_bytes", "write_state"]
