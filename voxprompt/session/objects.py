"""Objects and undo shared by :class:`~voxprompt.session.Session` and :class:`~voxprompt.session.image2d.Session2D`."""
from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import PromptError, UsageError
from ..masks import Slices, bbox_of

MASK_PRIOR_LOGIT = 10.0  # |logit| standing for a mask prompt in both sessions (sigmoid(10) = 0.99995)


def point_index(point: Sequence[float], shape: Sequence[int], what: str = "point") -> np.ndarray:
    """A prompt point (array indices, any real numbers) -> the nearest voxel, refused outside ``shape``."""
    try:
        p = np.asarray(point, dtype=np.float64)
    except (TypeError, ValueError):
        raise PromptError(f"{what} {point!r} is not numeric") from None
    if p.shape != (len(shape),):
        raise PromptError(f"{what} needs {len(shape)} coordinates (array axis order), got {p.size}: {point!r}")
    if not np.isfinite(p).all():
        raise PromptError(f"{what} {point!r} is not finite")
    idx = np.floor(p + 0.5).astype(int)
    if np.any(idx < 0) or np.any(idx >= np.asarray(shape)):
        raise PromptError(f"{what} {tuple(idx.tolist())} is outside the volume of shape {tuple(shape)}")
    return idx


def box_corners(lo: Sequence[int], hi: Sequence[int], shape: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """A prompt box [lo, hi) (integer array indices) checked against ``shape``: non-integer, empty or
    outside boxes are refused, never rounded."""
    try:
        a, b = np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64)
    except (TypeError, ValueError):
        raise PromptError(f"box corners {lo!r}, {hi!r} are not numeric") from None
    n = len(shape)
    if a.shape != (n,) or b.shape != (n,):
        raise PromptError(f"box corners need {n} coordinates each, got {lo!r} and {hi!r}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()) or np.any(a != np.round(a)) or np.any(b != np.round(b)):
        raise PromptError(f"box corners must be integer voxel indices, got {lo!r} and {hi!r}")
    a, b = a.astype(int), b.astype(int)
    if np.any(b <= a):
        raise PromptError(f"box [{tuple(a.tolist())}, {tuple(b.tolist())}) is empty or in the wrong order "
                          "(need lo < hi on every axis; a 2D box spans one slice: hi = lo + 1)")
    if np.any(a < 0) or np.any(b > np.asarray(shape)):
        raise PromptError(f"box [{tuple(a.tolist())}, {tuple(b.tolist())}) is outside the volume of "
                          f"shape {tuple(shape)}")
    return a, b


def unshared_mask(obj: Any) -> np.ndarray:
    """``obj.mask`` made safe to write in place: copied first when anything besides ``obj`` still
    refers to it (a mask handed out, or a view of it, never changes afterwards), else returned as is.
    A click on a large volume then skips a full-volume copy (a 78 MB mask at 512x512x300: about 40
    ms with its page faults) whenever the caller has dropped the previous result, as the servers
    do. Counts CPython references, calibrated at import."""
    if _mask_refs(obj) > _PRIVATE_REFS:
        obj.mask = obj.mask.copy()
    return obj.mask


def read_only(mask: np.ndarray) -> np.ndarray:
    """A read-only view of ``mask`` (what sessions hand out; copy-on-write keeps it unchanged)."""
    view = mask.view()
    view.flags.writeable = False
    return view


def _mask_refs(obj: Any) -> int:
    return sys.getrefcount(obj.mask)


class _Probe:
    def __init__(self) -> None:
        self.mask = np.zeros(1)


_PRIVATE_REFS = _mask_refs(_Probe())  # what a mask that only its object holds shows


class ObjectsMixin:
    """Several objects per image, one of them current, each with its own undo history.

    The host sets ``_object_type`` (a state dataclass built from ``mask=``, with ``prompts`` and
    ``history``), defines ``shape`` (raising :class:`UsageError` without an image) and
    ``_restore(obj, step)`` (reverts one step, returns the changed bbox), and cuts every new mask of
    the current object with :meth:`_protect` before committing it.

    Label policy (annotators' rule: a new object never overwrites a finished one):

    * :meth:`lock_object` locks an object. A prompt on any *other* object never sets a locked
      object's voxels: its new mask is cut by the union of the locked objects' masks before it is
      committed (so undo and ``changed_bbox`` see the cut mask), and :meth:`label_map` paints locked
      objects last, so no other object paints over them. A lock protects an object from the others
      only: it can still be prompted itself. Locks are flags of object ids: ``reset`` keeps them, a
      new image clears them.
    * ``others_negative`` (False by default): the current object's new mask also leaves out every
      other object's voxels, locked or not, as they are when the prompt runs (objects never overlap
      where the current object changes).

    Only the region a prompt changes is cut: voxels the object already held elsewhere stay. The
    model's own output (fed back with the next prompt) is not cut.
    """

    _object_type: type
    _objects: dict[int, Any]
    _current: int
    _locked: frozenset[int] = frozenset()
    others_negative: bool = False

    def _blank(self, shape: tuple[int, ...]) -> Any:
        return self._object_type(mask=np.zeros(shape, bool))

    def _clear_objects(self, shape: tuple[int, ...]) -> None:
        """Start over with one empty object, id 1 (a new image)."""
        self._objects = {1: self._blank(shape)}
        self._current = 1
        self._locked = frozenset()

    @property
    def object_id(self) -> int:
        """Id of the object that prompts apply to."""
        return self._current

    @property
    def object_ids(self) -> list[int]:
        return sorted(self._objects)

    def new_object(self) -> int:
        """Start a new object (id = largest so far + 1) and make it current."""
        shape = self.shape
        self._current = max(self._objects) + 1
        self._objects[self._current] = self._blank(shape)
        return self._current

    def select_object(self, object_id: int) -> None:
        """Make an existing object current."""
        self.shape  # noqa: B018 - raises without an image
        if object_id not in self._objects:
            raise UsageError(f"no object {object_id}; objects are {self.object_ids}")
        self._current = object_id

    @property
    def _obj(self) -> Any:
        self.shape  # noqa: B018
        return self._objects[self._current]

    @property
    def mask(self) -> np.ndarray:
        """Current object's mask (read-only bool, image shape; later calls never change it)."""
        return read_only(self._obj.mask)

    @property
    def prompts(self) -> list:
        """Prompts of the current object, oldest first: ("point", ...), ("box", ...), ("mask", None)."""
        return list(self._obj.prompts)

    def label_map(self) -> np.ndarray:
        """All objects as labels (uint8, uint16 past 255 ids); later ids overwrite overlaps, except that
        locked objects are painted after the unlocked ones (in id order among themselves)."""
        shape = self.shape
        dtype = np.uint8 if max(self._objects) <= 255 else np.uint16
        out = np.zeros(shape, dtype)
        for oid in sorted(self._objects, key=lambda k: (k in self._locked, k)):
            out[self._objects[oid].mask] = oid
        return out

    # ------------------------------------------------------------------ label policy
    def lock_object(self, object_id: int, locked: bool = True) -> None:
        """Lock (or, ``locked=False``, unlock) an object: prompts on other objects never take its voxels."""
        self.shape  # noqa: B018 - raises without an image
        if isinstance(object_id, bool) or not isinstance(object_id, (int, np.integer)):
            raise UsageError(f"object id must be an integer, got {object_id!r}")
        if object_id not in self._objects:
            raise UsageError(f"no object {object_id}; objects are {self.object_ids}")
        oid = int(object_id)
        self._locked = self._locked | {oid} if locked else self._locked - {oid}

    def unlock_object(self, object_id: int) -> None:
        """Unlock an object (``lock_object(object_id, locked=False)``)."""
        self.lock_object(object_id, locked=False)

    @property
    def locked_objects(self) -> list[int]:
        """Ids of the locked objects, ascending."""
        return sorted(k for k in self._locked if k in self._objects)

    def is_locked(self, object_id: int) -> bool:
        return object_id in self._locked

    def _protected(self, region: Slices | None = None, owner: int | None = None) -> np.ndarray | None:
        """Voxels (on ``region``, or the whole image) that object ``owner`` (default: the current one)
        may not take under the label policy: other objects that are locked, or all others with
        ``others_negative``; None if none."""
        owner = self._current if owner is None else owner
        ids = [k for k in sorted(self._objects)
               if k != owner and (self.others_negative or k in self._locked)]
        out = None
        for k in ids:
            m = self._objects[k].mask
            m = m if region is None else m[region]
            if out is None:
                out = m.copy()
            else:
                out |= m
        return out

    def _protect(self, block: np.ndarray, region: Slices | None = None, owner: int | None = None) -> np.ndarray:
        """``block`` (object ``owner``'s new mask on ``region``; default: the current object's) without
        the protected voxels."""
        protected = self._protected(region, owner)
        if protected is None or not (block & protected).any():
            return block
        return block & ~protected

    def _mask_prompt(self, mask: np.ndarray) -> np.ndarray:
        """A mask prompt (nonzero = object, image shape) as bool; PromptError otherwise."""
        shape = self.shape
        m = np.asarray(mask)
        if m.shape != shape:
            raise PromptError(f"mask shape {m.shape} does not match the image shape {shape}")
        if not (np.issubdtype(m.dtype, np.number) or m.dtype == np.bool_):
            raise PromptError(f"mask must be bool or numeric, got {m.dtype}")
        return m != 0

    # ------------------------------------------------------------------ history
    def _undo_last(self) -> Slices | None:
        """Revert the current object's last step; the bbox it changed."""
        obj = self._obj
        if not obj.history:
            raise UsageError(f"nothing to undo for object {self._current}")
        return self._restore(obj, obj.history.pop())

    @property
    def can_undo(self) -> bool:
        return self.image is not None and bool(self._obj.history)

    def _clear_current(self) -> Slices | None:
        """Replace the current object by an empty one; the bbox its mask covered."""
        changed = bbox_of(self._obj.mask)
        self._objects[self._current] = self._blank(self.shape)
        return changed


__all__ = ["ObjectsMixin", "Slices", "bbox_of"]
