"""Prompt files: an ordered list of points, boxes, masks, scribbles and lassos, replayed through a Session.

``voxprompt segment IMAGE -o OUT --prompts FILE`` and :func:`apply_prompts` replay a file in order, each
entry as one ``Session.add_point`` / ``add_box`` / ``add_mask`` / ``add_scribble`` / ``add_lasso`` /
``add_lasso_region``; :func:`save_prompts` writes a session's
prompts (every object, each in the order given) to the same JSON, so a saved interaction can be re-run.

JSON (``version`` 1)::

    {"version": 1, "frame": "ijk",
     "prompts": [
       {"type": "mask", "path": "prior.nii.gz"},
       {"type": "box", "lo": [8, 10, 4], "hi": [28, 30, 12]},
       {"type": "point", "at": [18, 20, 8]},
       {"type": "point", "at": [10, 12, 8], "positive": false},
       {"type": "point", "at": [-12.5, 4.0, 30.0], "frame": "lps", "object": 2},
       {"type": "scribble", "voxels": [[18, 20, 8], [19, 20, 8], [20, 21, 8]], "positive": false},
       {"type": "lasso", "polygon": [[8, 10, 8], [28, 10, 8], [18, 30, 8]], "rule": "box"}
     ]}

CSV: a header row naming some of ``type,x,y,z,positive,x2,y2,z2,path,object,frame`` (``type`` required),
one prompt per row; a point is ``x,y,z`` (+ ``positive``), a box ``x,y,z`` (lo) and ``x2,y2,z2`` (hi), a
mask ``path``; empty cells take the defaults, blank lines and lines starting with ``#`` are skipped.

* ``frame``: ``ijk`` (default) is the voxel order ``--point`` takes, (i, j, k) = (x, y, z), the reverse of
  numpy's (z, y, x), integers; ``lps`` / ``ras`` are world mm, mapped through the image geometry
  (``Session.point_from_world``) and rounded to the nearest voxel. A file-level ``frame`` (JSON) is the
  default of its entries; an entry's ``frame`` overrides it.
* point: ``at`` (3 values), ``positive`` (true/false, CSV also ``+``/``-``/``1``/``0``; default true).
* box: ``lo``, ``hi``. In IJK the half-open range of ``--box`` (lo < hi on every axis). In mm two opposite
  corners (any order); the box covers the voxels whose centres lie between them.
* mask: ``path`` of a mask with the image's size (nonzero = object), relative to the prompts file.
* scribble: ``voxels`` (a list of 3-value voxels; mm are rounded to the nearest voxel), ``positive``,
  optional ``rule`` (one of ``voxprompt.session.strokes.SCRIBBLE_RULES``; default: the session's).
* lasso: ``polygon`` (3 or more vertices on one slice, filled by ``strokes.lasso_region``; mm vertices are
  mapped to real voxel indices, not rounded) or ``voxels`` (a lasso already filled), ``positive``,
  optional ``rule`` (``LASSO_RULES``). Scribbles and lassos are JSON only (a CSV row holds one voxel).
* ``object`` (default 1): the Session object the entry applies to; a new id makes new objects (ids
  max + 1, as ``Session.new_object``) until it exists, an earlier one is selected again.

Errors name the entry (``prompts[2]`` in JSON, ``line 4`` in CSV) in one line: a malformed file or entry
(unknown type or key, wrong number of values, NaN, a missing mask file) is a :class:`PromptFileError`
(a ``UsageError``, CLI exit 2); a prompt that does not fit the image (outside it, a mask of another
size) is a :class:`~voxprompt.errors.PromptError` (exit 3).

A saved session (``Session.save``, :mod:`voxprompt.session.saved`; recognised by its content, not its name)
is read as a prompts file too: its objects' prompts in id order, each in the order given, masks recovered
from its undo history, all in the array indices of the image it was saved on. Replaying it on another image
is refused (:class:`~voxprompt.errors.InputError` naming what differs, exit 3).
"""
from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import PromptError, UsageError
from .strokes import KINDS as STROKE_KINDS
from .strokes import LASSO_RULES, SCRIBBLE_RULES, lasso_region, stroke_voxels

if TYPE_CHECKING:
    from ..io.image import Image
    from .volume import Prediction, Session

FORMAT_VERSION = 1
FRAMES = ("ijk", "lps", "ras")
KINDS = ("point", "box", "mask", "scribble", "lasso")
_KEYS = {"point": {"type", "at", "positive", "object", "frame"},
         "box": {"type", "lo", "hi", "object", "frame"},
         "mask": {"type", "path", "object"},
         "scribble": {"type", "voxels", "positive", "rule", "object", "frame"},
         "lasso": {"type", "polygon", "voxels", "positive", "rule", "object", "frame"}}
CSV_COLUMNS = ("type", "x", "y", "z", "positive", "x2", "y2", "z2", "path", "object", "frame")
_CSV_USES = {"point": {"x", "y", "z", "positive"}, "box": {"x", "y", "z", "x2", "y2", "z2"}, "mask": {"path"}}
_TRUE, _FALSE = ("true", "1", "+", "yes"), ("false", "0", "-", "no")


class PromptFileError(UsageError):
    """A prompts file or entry that is malformed (CLI exit 2)."""


@dataclass(frozen=True)
class PromptEntry:
    """One prompt as the file gives it: ``values`` are 3 (point: at), 6 (box: lo + hi) or 3 per voxel or
    vertex (scribble, lasso) numbers in ``frame``."""

    kind: str
    where: str  # "FILE prompts[2]" / "FILE line 4": the entry, for messages
    values: tuple[float, ...] = ()
    positive: bool = True
    path: Path | None = None  # mask file (resolved against the prompts file's folder)
    object: int = 1
    frame: str = "ijk"
    rule: str | None = None  # scribble / lasso: the conversion rule (None: the session's)
    filled: bool = False  # lasso: ``values`` are its filled voxels, not a polygon


@dataclass(frozen=True)
class ResolvedPrompt:
    """A prompt in the session's array indices (z, y, x); ``mask`` a bool array of the image's shape."""

    kind: str
    where: str
    index: tuple[int, ...] = ()  # point
    lo: tuple[int, ...] = ()  # box [lo, hi)
    hi: tuple[int, ...] = ()
    mask: np.ndarray | None = None
    positive: bool = True
    object: int = 1
    saved_image: dict | None = field(default=None, repr=False, compare=False)  # from a saved session: its image
    voxels: np.ndarray | None = field(default=None, repr=False, compare=False)  # scribble / lasso: (N, 3) filled
    rule: str | None = None

    def apply(self, session: Session) -> Prediction:
        _select(session, self.object, self.where)
        if self.kind == "point":
            return session.add_point(self.index, positive=self.positive)
        if self.kind == "box":
            return session.add_box(self.lo, self.hi)
        if self.kind == "scribble":
            return session.add_scribble(self.voxels, positive=self.positive, rule=self.rule)
        if self.kind == "lasso":
            return session.add_lasso_region(self.voxels, positive=self.positive, rule=self.rule)
        return session.add_mask(self.mask)


# ----------------------------------------------------------------------------- parsing
def _err(where: str, msg: str) -> PromptFileError:
    return PromptFileError(f"{where}: {msg}")


def _frame(value: Any, where: str) -> str:
    if not isinstance(value, str) or value.lower() not in FRAMES:
        raise _err(where, f"frame {value!r} is not one of {', '.join(FRAMES)}")
    return value.lower()


def _number(value: Any, where: str, name: str, integer: bool) -> float:
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise _err(where, f"{name} {value!r} is not a number") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _err(where, f"{name} {value!r} is not a number")
    if not math.isfinite(value):
        raise _err(where, f"{name} is {value} (values must be finite)")
    if integer and value != int(value):
        raise _err(where, f"{name} {value!r} is not an integer (IJK voxel indices are integers; "
                          "world mm need frame lps or ras)")
    return int(value) if integer else float(value)


def _triple(value: Any, where: str, name: str, frame: str) -> tuple[float, ...]:
    if not isinstance(value, (list, tuple)) or len(value) != 3:
        n = len(value) if isinstance(value, (list, tuple)) else "not a list"
        raise _err(where, f"{name} needs 3 values ({'i, j, k' if frame == 'ijk' else 'x, y, z mm'}), got {n}")
    return tuple(_number(v, where, name, frame == "ijk") for v in value)


def _flag(value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
        return value.strip().lower() in _TRUE
    raise _err(where, f"positive {value!r} is not true or false")


def _object(value: Any, where: str) -> int:
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            raise _err(where, f"object {value!r} is not a positive integer") from None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _err(where, f"object {value!r} is not a positive integer")
    return value


def parse_entry(raw: dict, where: str, base: Path, frame: str = "ijk") -> PromptEntry:
    """One entry (a dict of JSON values, or CSV strings) -> :class:`PromptEntry`; ``base``: folder of mask paths."""
    kind = raw.get("type")
    if kind not in KINDS:
        raise _err(where, f"type {kind!r} is not one of {', '.join(KINDS)}")
    where = f"{where} ({kind})"
    unknown = sorted(set(raw) - _KEYS[kind])
    if unknown:
        raise _err(where, f"unknown key(s) {', '.join(map(repr, unknown))}; a {kind} takes "
                          f"{', '.join(sorted(_KEYS[kind] - {'type'}))}")
    frame = _frame(raw["frame"], where) if "frame" in raw else frame
    obj = _object(raw.get("object", 1), where)
    if kind == "mask":
        path = raw.get("path")
        if not isinstance(path, str) or not path.strip():
            raise _err(where, "a mask needs a path")
        full = base / path.strip()
        if not full.is_file():
            raise _err(where, f"mask {path!r}: no such file ({full})")
        return PromptEntry("mask", where, path=full, object=obj)
    if kind in STROKE_KINDS:
        return _stroke_entry(raw, kind, where, frame, obj)
    names = ("at",) if kind == "point" else ("lo", "hi")
    for name in names:
        if name not in raw:
            raise _err(where, f"a {kind} needs {' and '.join(names)}")
    values = sum((_triple(raw[n], where, n, frame) for n in names), ())
    if kind == "box" and frame == "ijk" and any(b <= a for a, b in zip(values[:3], values[3:])):
        raise _err(where, f"box {list(values[:3])}..{list(values[3:])} is empty: need lo < hi on every axis "
                          "(half-open IJK, as --box)")
    positive = _flag(raw.get("positive", True), where) if kind == "point" else True
    return PromptEntry(kind, where, values=values, positive=positive, object=obj, frame=frame)


def _stroke_entry(raw: dict, kind: str, where: str, frame: str, obj: int) -> PromptEntry:
    """A scribble (``voxels``) or lasso (``polygon`` or ``voxels``) entry."""
    given = [k for k in ("polygon", "voxels") if k in raw]
    if kind == "scribble" and not given:
        raise _err(where, "a scribble needs voxels (a list of [i, j, k])")
    if kind == "lasso" and len(given) != 1:
        raise _err(where, "a lasso needs polygon (its vertices on one slice) or voxels (filled), not both")
    name = given[0]
    items = raw[name]
    least = 3 if name == "polygon" else 1
    if not isinstance(items, list) or len(items) < least:
        raise _err(where, f"{name} needs a list of at least {least} [i, j, k] values")
    values = sum((_triple(v, where, f"{name}[{i}]", frame) for i, v in enumerate(items)), ())
    rule = raw.get("rule")
    if rule is not None:
        rules = SCRIBBLE_RULES if kind == "scribble" else LASSO_RULES
        if rule not in rules:
            raise _err(where, f"rule {rule!r} is not one of {', '.join(rules)}")
    return PromptEntry(kind, where, values=values, positive=_flag(raw.get("positive", True), where), object=obj,
                       frame=frame, rule=rule, filled=name == "voxels")


def parse_json(text: str, name: str = "prompts", base: str | Path = ".") -> list[PromptEntry]:
    """Entries of a JSON prompts document (see the module docstring), in order."""
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise PromptFileError(f"{name}: not valid JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise PromptFileError(f"{name}: expected a JSON object with \"version\" and \"prompts\"")
    unknown = sorted(set(doc) - {"version", "frame", "prompts"})
    if unknown:
        raise PromptFileError(f"{name}: unknown key(s) {', '.join(map(repr, unknown))}; "
                              "expected version, frame, prompts")
    if doc.get("version", FORMAT_VERSION) != FORMAT_VERSION:
        raise PromptFileError(f"{name}: version {doc['version']!r} is not supported (this voxprompt reads "
                              f"version {FORMAT_VERSION})")
    frame = _frame(doc.get("frame", "ijk"), name)
    items = doc.get("prompts")
    if not isinstance(items, list) or not items:
        raise PromptFileError(f"{name}: \"prompts\" must be a non-empty list")
    out = []
    for i, raw in enumerate(items):
        where = f"{name} prompts[{i}]"
        if not isinstance(raw, dict):
            raise _err(where, f"expected an object like {{\"type\": \"point\", \"at\": [i, j, k]}}, got {raw!r}")
        out.append(parse_entry(raw, where, Path(base), frame))
    return out


def parse_csv(text: str, name: str = "prompts", base: str | Path = ".") -> list[PromptEntry]:
    """Entries of a CSV prompts table (header row; see the module docstring), in order."""
    lines = [(n, line) for n, line in enumerate(text.splitlines(), 1)
             if line.strip() and not line.lstrip().startswith("#")]
    if not lines:
        raise PromptFileError(f"{name}: empty (expected a header row such as type,x,y,z,positive)")
    rows = list(csv.reader([line for _, line in lines]))
    header = [h.strip().lower() for h in rows[0]]
    unknown = [h for h in header if h not in CSV_COLUMNS]
    if unknown or "type" not in header or len(set(header)) != len(header):
        raise PromptFileError(f"{name} line {lines[0][0]}: header {','.join(rows[0])!r} must name distinct "
                              f"columns of {','.join(CSV_COLUMNS)}, type included")
    out = []
    for (lineno, _), row in zip(lines[1:], rows[1:]):
        where = f"{name} line {lineno}"
        if len(row) != len(header):
            raise _err(where, f"{len(row)} values for {len(header)} columns ({','.join(header)})")
        cells = {h: c.strip() for h, c in zip(header, row) if c.strip()}
        kind = cells.get("type", "").lower()
        if kind in STROKE_KINDS:
            raise _err(where, f"a {kind} lists many voxels: write it in a JSON prompts file")
        if kind in _CSV_USES:
            stray = sorted(set(cells) - _CSV_USES[kind] - {"type", "object", "frame"})
            if stray:
                raise _err(f"{where} ({kind})", f"a {kind} takes no {', '.join(stray)}")
        raw: dict[str, Any] = {"type": kind or None}
        if "object" in cells:
            raw["object"] = cells["object"]
        if "frame" in cells:
            raw["frame"] = cells["frame"]
        if kind == "mask" and "path" in cells:
            raw["path"] = cells["path"]
        elif kind == "point":
            raw["at"] = [cells[c] for c in ("x", "y", "z") if c in cells]
            if "positive" in cells:
                raw["positive"] = cells["positive"]
        elif kind == "box":
            raw["lo"] = [cells[c] for c in ("x", "y", "z") if c in cells]
            raw["hi"] = [cells[c] for c in ("x2", "y2", "z2") if c in cells]
        out.append(parse_entry(raw, where, Path(base)))
    if not out:
        raise PromptFileError(f"{name}: no prompts after the header")
    return out


def load_prompts(path: str | Path) -> list[PromptEntry | ResolvedPrompt]:
    """Read a prompts file: a saved session (:func:`saved_prompts`), ``.csv`` as CSV, anything else as JSON.
    Mask paths are relative to its folder."""
    from .saved import is_saved_session

    p = Path(path)
    if is_saved_session(p):
        return saved_prompts(p)
    try:
        text = p.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise PromptFileError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise PromptFileError(f"{path}: not a text file (expected JSON or CSV)") from None
    parse = parse_csv if p.suffix.lower() == ".csv" else parse_json
    return parse(text, str(path), p.parent)


def saved_prompts(path: str | Path) -> list[ResolvedPrompt]:
    """The prompts of a saved session (``Session.save``): every object in id order, each in the order given,
    each mask prompt's mask as it was right after it (from the undo history). They carry the saved image's
    identity: :func:`resolve_prompts` refuses another image."""
    from .saved import decode_objects, mask_after, read_state

    name = str(path)
    manifest, arrays = read_state(path)
    image = manifest.get("image")
    try:
        image = {**image, "file": name}  # for check_image's messages
        shape = tuple(int(n) for n in image["shape"])
        if len(shape) != 3:
            raise ValueError
    except (KeyError, TypeError, ValueError):
        from ..errors import SessionFileError

        raise SessionFileError(f"{name}: the saved session does not record its image's shape") from None
    out = []
    for obj in decode_objects(manifest, arrays, shape, name):
        oid, prompts = obj["id"], obj["prompts"]
        if any(kind == "mask" for kind, _ in prompts) and len(obj["history"]) != len(prompts):
            raise UsageError(f"{name}: object {oid}: its undo history does not match its prompts; "
                             "cannot recover its masks")
        for k, (kind, data) in enumerate(prompts):
            where = f"{name} object {oid} prompt {k + 1} ({kind})"
            if kind in STROKE_KINDS:
                out.append(ResolvedPrompt(kind, where, voxels=data.voxels, positive=data.positive, rule=data.rule,
                                          object=oid, saved_image=image))
            elif kind == "point":
                out.append(ResolvedPrompt("point", where, index=data[0], positive=data[1], object=oid,
                                          saved_image=image))
            elif kind == "box":
                out.append(ResolvedPrompt("box", where, lo=data[0], hi=data[1], object=oid, saved_image=image))
            else:
                out.append(ResolvedPrompt("mask", where, mask=mask_after(obj["mask"], obj["history"], k),
                                          object=oid, saved_image=image))
    if not out:
        raise PromptFileError(f"{name}: the saved session holds no prompts")
    return out


# ----------------------------------------------------------------------------- against an image
def _size(shape: Sequence[int]) -> str:
    return "x".join(str(n) for n in shape[::-1])


def resolve_prompts(entries: Sequence[PromptEntry | ResolvedPrompt], image: Image) -> list[ResolvedPrompt]:
    """Entries -> array indices of ``image`` (z, y, x), masks read; PromptError for one that does not fit.
    Prompts already resolved pass through; those of a saved session only on the image it was saved on
    (InputError naming what differs)."""
    shape = np.asarray(image.shape)
    out: list[ResolvedPrompt] = []
    checked: list[dict] = []
    for e in entries:
        if isinstance(e, ResolvedPrompt):
            if e.saved_image is not None:
                if not any(e.saved_image is c for c in checked):
                    from .saved import check_image

                    check_image(e.saved_image, image, e.saved_image.get("file", e.where))
                    checked.append(e.saved_image)
                e = replace(e, saved_image=None)
            out.append(e)
            continue
        if e.kind == "mask":
            from ..io.read import read_image

            m = read_image(e.path)
            if m.shape != image.shape:
                raise PromptError(f"{e.where}: mask {e.path.name} has size {_size(m.shape)} (IJK), the image "
                                  f"{_size(image.shape)}")
            out.append(ResolvedPrompt("mask", e.where, mask=m.array != 0, object=e.object))
            continue
        pts = np.asarray(e.values, dtype=np.float64).reshape(-1, 3)
        if e.frame == "ijk":
            zyx = pts[:, ::-1]
        else:
            zyx = np.atleast_2d(image.world_to_index(pts, frame=e.frame.upper()))
        shown = f"{list(e.values)} ({e.frame.upper()})"
        if e.kind in STROKE_KINDS:
            out.append(_resolve_stroke(e, zyx, image))
            continue
        if e.kind == "point":
            idx = np.floor(zyx[0] + 0.5).astype(int)
            if np.any(idx < 0) or np.any(idx >= shape):
                ijk = "" if e.frame == "ijk" else f" = IJK {','.join(map(str, idx[::-1]))}"
                raise PromptError(f"{e.where}: {shown}{ijk} is outside the volume of size "
                                  f"{_size(image.shape)} (IJK)")
            out.append(ResolvedPrompt("point", e.where, index=tuple(int(v) for v in idx), positive=e.positive,
                                      object=e.object))
            continue
        if e.frame == "ijk":
            lo, hi = zyx[0].astype(int), zyx[1].astype(int)
        else:  # the voxels whose centres lie between the corners
            a, b = np.minimum(zyx[0], zyx[1]), np.maximum(zyx[0], zyx[1])
            lo, hi = np.ceil(a - 1e-6).astype(int), np.floor(b + 1e-6).astype(int) + 1
            if np.any(hi <= lo):
                raise PromptError(f"{e.where}: box {shown} holds no voxel centre")
        if np.any(lo < 0) or np.any(hi > shape):
            raise PromptError(f"{e.where}: box {shown} = IJK {','.join(map(str, lo[::-1]))}.."
                              f"{','.join(map(str, hi[::-1]))} is outside the volume of size "
                              f"{_size(image.shape)} (IJK)")
        out.append(ResolvedPrompt("box", e.where, lo=tuple(int(v) for v in lo), hi=tuple(int(v) for v in hi),
                                  object=e.object))
    return out


def _resolve_stroke(e: PromptEntry, zyx: np.ndarray, image: Image) -> ResolvedPrompt:
    """A scribble or lasso entry on ``image``: its voxels (a polygon filled), PromptError naming the entry."""
    try:
        if e.kind == "lasso" and not e.filled:
            voxels = lasso_region(zyx, image.shape)
        else:
            voxels = stroke_voxels(np.floor(zyx + 0.5), image.shape, e.kind)
    except PromptError as exc:
        raise PromptError(f"{e.where}: {exc} (indices in array order k, j, i; the image is "
                          f"{_size(image.shape)} IJK)") from None
    return ResolvedPrompt(e.kind, e.where, voxels=voxels, positive=e.positive, object=e.object, rule=e.rule)


def _select(session: Session, object_id: int, where: str) -> None:
    """Make ``object_id`` current: select it, or make new objects (max + 1 each) until it exists."""
    if object_id == session.object_id:
        return
    if object_id in session.object_ids:
        session.select_object(object_id)
        return
    while max(session.object_ids) < object_id:
        session.new_object()


def apply_prompts(session: Session, prompts: Sequence[PromptEntry | ResolvedPrompt]) -> Prediction | None:
    """Replay prompts in order on ``session`` (its image set); returns the last Prediction (None if empty).

    Entries are resolved against the session's image first, so nothing runs unless every entry fits.
    """
    pred = None
    for step in resolve_prompts(prompts, session.image):
        pred = step.apply(session)
    return pred


# ----------------------------------------------------------------------------- CLI
def prompts_from_args(args: Any) -> list[PromptEntry | ResolvedPrompt] | None:
    """``segment --prompts FILE``: the entries (None without it); refuses other prompt flags and objects > 1."""
    path = getattr(args, "prompts", None)
    if path is None:
        return None
    given = [flag for flag, dest in (("--point", "point"), ("--point-mm", "point_mm"), ("--box", "box"),
                                     ("--mask-in", "mask_in")) if getattr(args, dest, None)]
    if given:
        raise UsageError(f"--prompts replays a whole interaction; it cannot be combined with {', '.join(given)} "
                         "(add them to the file)")
    entries = load_prompts(path)
    for e in entries:
        if e.object != 1:
            raise _err(e.where, f"object {e.object}: segment writes one mask, so its prompts file holds "
                                "object 1 only (replay several objects in Python: "
                                "voxprompt.session.prompts.apply_prompts and Session.label_map)")
    return entries


# ----------------------------------------------------------------------------- export
def _mask_after(obj: Any, k: int) -> np.ndarray:
    """The object's mask right after its prompt ``k``: the current mask with later steps undone."""
    mask = obj.mask.copy()
    for step in reversed(obj.history[k + 1:]):
        if step.bbox is not None:
            mask[step.bbox] = step.old_block
    return mask


def session_prompts(session: Session, frame: str = "ijk", mask_files: Sequence[str] | None = None) -> dict:
    """A session's prompts as a JSON-ready document (every object in id order, each in the order given).

    Mask prompts need ``mask_files``: one name per mask prompt, in order (``save_prompts`` writes them).
    """
    frame = _frame(frame, "frame")
    image = session.image
    if image is None:
        raise UsageError("no image: the session has no prompts to export")
    masks = list(mask_files or [])
    items: list[dict] = []
    for oid in session.object_ids:
        for kind, data in session._objects[oid].prompts:
            item: dict[str, Any] = {"type": kind}
            if kind in STROKE_KINDS:
                item["voxels"] = [_export_point(image, v, frame) for v in data.voxels]
                item["positive"] = bool(data.positive)
                item["rule"] = data.rule
            elif kind == "point":
                item["at"] = _export_point(image, data[0], frame)
                item["positive"] = bool(data[1])
            elif kind == "box":
                lo, hi = np.asarray(data[0]), np.asarray(data[1])
                if frame == "ijk":
                    item["lo"], item["hi"] = [int(v) for v in lo[::-1]], [int(v) for v in hi[::-1]]
                else:  # the box's outer corners (voxel edges) in mm
                    item["lo"] = _export_point(image, lo - 0.5, frame)
                    item["hi"] = _export_point(image, hi - 0.5, frame)
            else:
                if not masks:
                    raise UsageError("the session holds a mask prompt: give a file name for each mask "
                                     "(save_prompts writes them)")
                item["path"] = masks.pop(0)
            if oid != 1:
                item["object"] = oid
            items.append(item)
    if not items:
        raise UsageError("the session has no prompts to export")
    return {"version": FORMAT_VERSION, "frame": frame, "prompts": items}


def _export_point(image: Image, zyx: Sequence[float], frame: str) -> list:
    if frame == "ijk":
        return [int(v) for v in list(zyx)[::-1]]
    return [float(v) for v in image.index_to_world(np.asarray(zyx, dtype=np.float64), frame=frame.upper())]


def save_prompts(session: Session, path: str | Path, frame: str = "ijk") -> Path:
    """Write ``session``'s prompts as a JSON prompts file; each mask prompt's mask goes beside it
    (``NAME.mask1.nii.gz``, ...; recovered from the undo history). Replay with :func:`apply_prompts`
    or ``voxprompt segment --prompts`` (object 1 only)."""
    from ..io.write import write_mask

    out = Path(path)
    names, files = [], []
    for oid in session.object_ids:
        obj = session._objects[oid]
        kinds = [kind for kind, _ in obj.prompts]
        if "mask" in kinds and len(obj.history) != len(kinds):
            raise UsageError(f"object {oid}: its undo history does not match its prompts; cannot recover its masks")
        for k, kind in enumerate(kinds):
            if kind == "mask":
                name = f"{out.name.split('.')[0]}.mask{len(names) + 1}.nii.gz"
                names.append(name)
                files.append((out.parent / name, _mask_after(obj, k)))
    doc = session_prompts(session, frame, names)
    for file, mask in files:
        write_mask(mask.astype(np.uint8), session.image, file)
    out.write_text(json.dumps(doc, indent=1) + "\n")
    return out


__all__ = ["FORMAT_VERSION", "PromptEntry", "PromptFileError", "ResolvedPrompt", "apply_prompts", "load_prompts",
           "parse_csv", "parse_json", "prompts_from_args", "resolve_prompts", "save_prompts", "saved_prompts",
           "session_prompts"]
