"""A 2D model on a 3D volume: prompt on slices, propagate slice by slice, one 3D mask.

Prompts are 3D array indices (the volume's own axis order, as :class:`voxprompt.session.Session`);
``axis`` picks the slice direction. A prompted slice becomes an *anchor*: a
:class:`~voxprompt.session.image2d.Session2D` on that slice (points accumulate, the previous mask is fed
back). A click on a slice that already has a mask (e.g. propagated) seeds the anchor with that
mask, its box and the click, so a click refines rather than restarts.

After each prompt the anchor's mask is propagated to both sides (:mod:`voxprompt.session.propagate`).
Each non-anchor slice belongs to the anchor that produced it; an anchor re-propagates over its own
slices and over those of another anchor that lie nearer to it than to their own anchor, and stops
at anchor slices. ``propagate=False`` segments the prompted slices only. :meth:`SliceSession.undo`
reverts a whole call (anchor and propagated slices).

Several objects per volume, as :class:`~voxprompt.session.Session`: :meth:`new_object`,
:meth:`select_object`, :meth:`label_map`; each object has its own anchors, slices and undo
history, and the slice embeddings are shared. The label policy (``lock_object``,
``others_negative``; :class:`~voxprompt.session.objects.ObjectsMixin`) cuts each slice written; the
anchors and the propagation keep the model's own masks.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import PromptError, UsageError
from ..io.image import Image
from ..models.family import policy_for
from ..preprocess.image2d import Policy2D, Window, parse_window
from .image2d import Session2D
from .objects import ObjectsMixin, box_corners, point_index, unshared_mask
from .propagate import PropagationConfig, SliceEncoder, SliceStack, box_of, inplane, propagate, slice_region

log = logging.getLogger(__name__)


@dataclass
class VolumePrediction:
    """Result of one :class:`SliceSession` call: the (read-only) 3D mask, the slices it changed,
    the anchor slice, its predicted IoU and each propagated slice's score."""

    mask: np.ndarray
    anchor: int
    score: float | None
    slices: list  # indices written or cleared by this call
    scores: dict = field(default_factory=dict)  # propagated slice -> predicted IoU (or None)
    stopped: dict = field(default_factory=dict)  # direction (+1 / -1) -> reason
    object_id: int = 1


@dataclass
class _SliceStep:
    anchor: int
    new_anchor: bool
    anchor_calls: int
    old: dict  # slice -> (old mask slice, old owner)
    prompts: int = 0  # entries this call added to the object's prompts


@dataclass
class _SliceObject:
    mask: np.ndarray
    owner: np.ndarray  # per slice: anchor slice that produced it, -1 = none
    anchors: dict = field(default_factory=dict)  # anchor slice -> Session2D
    prompts: list = field(default_factory=list)  # [(kind, data)], array indices, oldest first
    history: list = field(default_factory=list)  # _SliceStep per call


class SliceSession(ObjectsMixin):
    """Interactive segmentation of a volume with a 2D model (one or several objects)."""

    def __init__(self, model: torch.nn.Module, axis: int = 0, config: PropagationConfig = PropagationConfig(),
                 propagate: bool = True, window: str | Window | None = None,
                 device: str | torch.device | None = None, policy: Policy2D | None = None) -> None:
        if model.spatial_dims != 2:
            raise UsageError(f"SliceSession needs a 2D model; {model.name} is 3D (use Session)")
        if axis not in (0, 1, 2):
            raise UsageError(f"slice axis must be 0, 1 or 2, got {axis!r}")
        self.model, self.axis, self.config, self.do_propagate = model, axis, config, propagate
        self.window = parse_window(window) if isinstance(window, str) else window
        self.device = device
        self.policy = policy or policy_for(model)
        self.image: Image | None = None
        self.encoder: SliceEncoder | None = None
        self._objects: dict[int, _SliceObject] = {}
        self._current = 1

    # ------------------------------------------------------------------ image
    def set_image(self, image: Image | np.ndarray, value_range: tuple[float, float] | None = None) -> None:
        """Set the volume (an Image or a 3D array); starts over with one empty object (id 1)."""
        arr = image.array if isinstance(image, Image) else np.asarray(image)
        stack = SliceStack(arr, self.axis, self.window, value_range)
        self.image = image if isinstance(image, Image) else None
        self.encoder = SliceEncoder(self.model, stack, self.policy, self.device)
        self._clear_objects(arr.shape)

    def _blank(self, shape: tuple[int, ...]) -> _SliceObject:
        return _SliceObject(mask=np.zeros(shape, bool), owner=np.full(shape[self.axis], -1, np.int64))

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(n) for n in self._stack().volume.shape)

    def _stack(self) -> SliceStack:
        if self.encoder is None:
            raise UsageError("no image: call set_image() before prompting")
        return self.encoder.stack

    @property
    def anchors(self) -> list[int]:
        """The current object's anchor slices."""
        return sorted(self._obj.anchors)

    # ------------------------------------------------------------------ prompts
    def _index(self, index: Sequence[float], what: str = "point") -> np.ndarray:
        return point_index(index, self.shape, what)

    def add_point(self, index: Sequence[float], positive: bool = True) -> VolumePrediction:
        """Click at a 3D array index; its slice along ``axis`` is prompted, then propagated."""
        return self.add_prompts(points=[(index, positive)])

    def add_box(self, lo: Sequence[int], hi: Sequence[int], slice_index: int | None = None) -> VolumePrediction:
        """Box [lo, hi) in array indices. One slice thick along ``axis``: a 2D box on that slice.
        Thicker: the in-plane box on ``slice_index`` (default the middle slice), and propagation
        is limited to the box's slice range."""
        return self.add_prompts(box=(lo, hi), slice_index=slice_index)

    def add_prompts(self, points: Sequence[tuple] = (), box: tuple | None = None,
                    slice_index: int | None = None) -> VolumePrediction:
        """Points ``[(index, positive), ...]`` and/or a box ``(lo, hi)`` on one slice, one decoder
        call (one undo step). The slice is ``slice_index``, else the points' / the box's."""
        idx = [(self._index(p), bool(pos)) for p, pos in points]
        limits, xyxy, s = None, None, slice_index
        if box is not None:
            a, b = self._box(*box)
            lo_s, hi_s = int(a[self.axis]), int(b[self.axis])
            if s is None:
                on = {int(p[self.axis]) for p, _ in idx}
                s = on.pop() if len(on) == 1 else (lo_s + hi_s - 1) // 2
            if not lo_s <= s < hi_s:
                raise PromptError(f"slice {s} is outside the box's slice range [{lo_s}, {hi_s})")
            r0, c0 = inplane(tuple(a), self.axis)
            r1, c1 = inplane(tuple(b), self.axis)
            xyxy = (c0, r0, c1, r1)
            limits = None if hi_s - lo_s == 1 else (lo_s, hi_s)
        if not idx and xyxy is None:
            raise PromptError("no prompt: give points and/or a box")
        on = {int(p[self.axis]) for p, _ in idx}
        if s is None:
            s = on.pop() if len(on) == 1 else -1
        if s < 0 or any(v != s for v in on):
            raise PromptError(f"the points lie on slices {sorted({int(p[self.axis]) for p, _ in idx})} along axis "
                              f"{self.axis}; 2D prompts of one call must share one slice")
        if not 0 <= s < self.shape[self.axis]:
            raise PromptError(f"slice {s} is outside 0..{self.shape[self.axis] - 1} along axis {self.axis}")
        xy = [inplane(tuple(p), self.axis)[::-1] for p, _ in idx]
        given = [("point", (tuple(int(v) for v in p), pos)) for p, pos in idx]
        if box is not None:
            given.append(("box", (tuple(int(v) for v in a), tuple(int(v) for v in b))))
        return self._prompt(s, xy, [pos for _, pos in idx], xyxy, limits, given)

    def _box(self, lo: Sequence[int], hi: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        return box_corners(lo, hi, self.shape)

    def _prompt(self, s: int, points: list, positive: list, box: tuple | None,
                limits: tuple[int, int] | None, prompts: list) -> VolumePrediction:
        enc, obj = self.encoder, self._obj
        unshared_mask(obj)  # copy-on-write: masks handed out earlier never change
        step = _SliceStep(s, s not in obj.anchors, 0, {})
        with torch.inference_mode():
            try:
                anchor = obj.anchors.get(s)
                if anchor is None:
                    anchor = Session2D(self.model, device=self.device, policy=self.policy)
                    anchor.attach(enc(s), enc.stack.rgb(s))
                    obj.anchors[s] = anchor
                    current = obj.mask[slice_region(self.axis, s)]
                    if current.any() and points:  # refine what is shown on this slice
                        anchor.add_mask(current)
                        step.anchor_calls += 1
                        box = box_of(current)
                pred = anchor.add_prompts(points, positive, box=box)
                step.anchor_calls += 1
                self._write(step, s, pred.mask, s)
                result = VolumePrediction(self.mask, s, pred.score, [], object_id=self._current)
                if self.do_propagate:
                    self._propagate(step, s, pred.mask, pred.low_res, limits, result)
            except BaseException:
                self._undo_step(step)
                raise
        obj.prompts.extend(prompts)
        step.prompts = len(prompts)
        obj.history.append(step)
        result.mask, result.slices = self.mask, sorted(step.old)
        return result

    def _write(self, step: _SliceStep, i: int, mask2d: np.ndarray | None, owner: int) -> None:
        obj, region = self._obj, slice_region(self.axis, i)
        if i not in step.old:
            step.old[i] = (obj.mask[region].copy(), int(obj.owner[i]))
        obj.mask[region] = False if mask2d is None else self._protect(mask2d, region)  # label policy
        obj.owner[i] = owner

    def _may_claim(self, anchor: int):
        obj = self._obj

        def ok(i: int) -> bool:
            if i in obj.anchors:
                return False
            other = int(obj.owner[i])
            return other in (-1, anchor) or other not in obj.anchors or abs(i - anchor) < abs(i - other)
        return ok

    def _propagate(self, step: _SliceStep, s: int, mask: np.ndarray, low_res: torch.Tensor | None,
                   limits: tuple[int, int] | None, result: VolumePrediction) -> None:
        for i in np.flatnonzero(self._obj.owner == s):
            if int(i) != s:
                self._write(step, int(i), None, -1)
        res = propagate(self.encoder, s, mask, self.config, low_res, limits, self._may_claim(s))
        for i, r in res.slices.items():
            self._write(step, i, r.mask, s)
        result.scores = {i: r.score for i, r in res.slices.items()}
        result.stopped = dict(res.stopped)

    # ------------------------------------------------------------------ history
    def _undo_step(self, step: _SliceStep) -> None:
        obj = self._obj
        unshared_mask(obj)
        for i, (old, owner) in step.old.items():
            obj.mask[slice_region(self.axis, i)] = old
            obj.owner[i] = owner
        anchor = obj.anchors.get(step.anchor)
        if anchor is not None:
            if step.new_anchor:
                del obj.anchors[step.anchor]
            else:
                for _ in range(step.anchor_calls):
                    anchor.undo()

    def _restore(self, obj: _SliceObject, step: _SliceStep) -> None:
        self._undo_step(step)
        del obj.prompts[len(obj.prompts) - step.prompts:]

    def undo(self) -> VolumePrediction:
        """Revert the current object's last call (the anchor's prompt and every slice it changed)."""
        obj = self._obj
        if not obj.history:
            raise UsageError(f"nothing to undo for object {self._current}")
        step = obj.history.pop()
        self._restore(obj, step)
        return VolumePrediction(self.mask, step.anchor, None, sorted(step.old), object_id=self._current)

    @property
    def can_undo(self) -> bool:
        return self.encoder is not None and bool(self._obj.history)

    def reset(self) -> VolumePrediction:
        """Clear the current object (mask, anchors, prompts and undo history); anchor -1."""
        other = tuple(a for a in range(3) if a != self.axis)
        cleared = np.flatnonzero(self._obj.mask.any(axis=other)).tolist()
        self._clear_current()
        return VolumePrediction(self.mask, -1, None, cleared, object_id=self._current)


__all__ = ["SliceSession", "VolumePrediction"]
