"""Interactive 2D segmentation with SAM ViT-B, SAM-Med2D or SAM-UNet, each with its official
pre/post-processing (:mod:`voxprompt.preprocess.image2d`).

Coordinates
-----------
2D prompts follow the 2D tools' (and SAM's) convention: pixel coordinates of the **original
image**, ``(x, y)`` = (column, row); boxes ``(x0, y0, x1, y1)`` with the top-left corner first.
A box around pixels ``r0..r1`` x ``c0..c1`` (inclusive) is ``(c0, r0, c1 + 1, r1 + 1)``, as
SAM-Med2D's ``get_boxes_from_mask``. Masks are ``(H, W)`` bool arrays of the original size.

Prompt semantics (per object)
-----------------------------
* Points accumulate; a new box replaces the previous box; every call sends all points, the box
  and the previous mask: for SAM and SAM-UNet the previous **raw low-res logits**, for SAM-Med2D
  their **sigmoid** (``utils.generate_point``). The first call of an object sends no mask.
* Multimask: SAM's default is three candidates for a single point without a box, else one;
  SAM-Med2D always decodes three and keeps the highest predicted IoU (``test.py``); SAM-UNet
  predicts one mask without a score. The chosen candidate is the object's mask; the others are in
  :attr:`Prediction2D.candidates` (:meth:`Session2D.select_candidate` switches).
* ``mask = logits > 0`` at the original size (= ``sigmoid > 0.5``, SAM-Med2D).

Objects and undo are the 3D :class:`voxprompt.session.Session`'s (:mod:`voxprompt.session.objects`).
"""
from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from ..errors import PromptError, UsageError
from ..io.image2d import Image2D, image2d_from_array, read_image2d
from ..masks import bbox_of
from ..models.family import policy_for
from ..preprocess.image2d import Frame2D, Policy2D, Window, mask_prior, parse_window, preprocess_image, rgb_uint8
from .objects import MASK_PRIOR_LOGIT, ObjectsMixin

log = logging.getLogger(__name__)

ImageLike2D = Image2D | np.ndarray | str | os.PathLike
Slices2D = tuple[slice, slice]


# ----------------------------------------------------------------------------- stateless predictor
@dataclass
class Decoded:
    """One decoder call: every candidate's raw low-res logits ``(1, M, L, L)``, scores, the pick."""

    low_res: torch.Tensor
    scores: np.ndarray | None  # (M,) predicted IoU, None for SAM-UNet
    selected: int

    @property
    def best(self) -> torch.Tensor:
        """The selected candidate's low-res logits ``(1, 1, L, L)``."""
        return self.low_res[:, self.selected:self.selected + 1]

    @property
    def score(self) -> float | None:
        return None if self.scores is None else float(self.scores[self.selected])


class Predictor2D:
    """One image's embedding and decoder calls, in original-image coordinates; no prompt state."""

    def __init__(self, model: torch.nn.Module, policy: Policy2D | None = None,
                 device: str | torch.device | None = None) -> None:
        self.model = model
        self.policy = policy or policy_for(model)
        if self.policy.size != int(model.img_size):
            raise UsageError(f"policy size {self.policy.size} differs from the model input {model.img_size}")
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.low_res_size = int(model.low_res_size)
        self.frame: Frame2D | None = None
        self.embedding: torch.Tensor | dict | None = None

    def set_image(self, rgb: np.ndarray) -> None:
        """Encode an (H, W, 3) uint8 RGB image (see :func:`~voxprompt.preprocess.image2d.rgb_uint8`)."""
        x, frame = preprocess_image(rgb, self.policy)
        with torch.inference_mode():
            self.embedding = self.model.encode(x.to(self.device))
        self.frame = frame

    @property
    def shape(self) -> tuple[int, int]:
        if self.frame is None:
            raise UsageError("no image: call set_image() first")
        return self.frame.original_size

    def predict(self, points: tuple[np.ndarray, np.ndarray] | None = None,
                box: np.ndarray | None = None, mask_input: torch.Tensor | None = None,
                multimask: bool | None = None) -> Decoded:
        """Decode original-frame prompts: ``points`` = ((N, 2) x/y, (N,) labels 1/0), ``box`` XYXY,
        ``mask_input`` already in the policy's feedback form. ``multimask=None``: the official default."""
        frame = self._frame()
        n_points = 0 if points is None else len(points[1])
        if multimask is None:
            multimask = self.policy.wants_multimask(n_points, box is not None)
        if multimask and self.policy.multimask == "never":
            raise PromptError(f"{self.model.name} predicts a single mask; multimask is not available")
        pts = None
        if points is not None:
            coords = torch.from_numpy(frame.to_model(points[0])).float()[None].to(self.device)
            labels = torch.as_tensor(np.asarray(points[1]), dtype=torch.int64)[None].to(self.device)
            pts = (coords, labels)
        boxes = None if box is None else torch.from_numpy(frame.box_to_model(box)).float()[None].to(self.device)
        if mask_input is not None:
            mask_input = mask_input.to(self.device)
        with torch.inference_mode():
            low, iou = self.model.decode(self.embedding, points=pts, boxes=boxes, mask_input=mask_input,
                                         multimask=bool(multimask))
        low = low.float()
        scores = None if iou is None else iou[0].float().cpu().numpy()
        selected = 0 if scores is None else int(np.argmax(scores))
        return Decoded(low, scores, selected)

    def to_original(self, low_res: torch.Tensor) -> torch.Tensor:
        """Low-res logits ``(1, M, L, L)`` -> original-size logits ``(M, H, W)`` (CPU float32)."""
        with torch.inference_mode():
            return self._frame().logits_to_original(low_res)[0].cpu()

    def prior(self, mask: np.ndarray) -> torch.Tensor:
        """An original-size mask as a ``mask_input`` in the policy's feedback form."""
        return mask_prior(mask, self._frame(), self.low_res_size, self.policy, MASK_PRIOR_LOGIT)

    def _frame(self) -> Frame2D:
        if self.frame is None or self.embedding is None:
            raise UsageError("no image: call set_image() before prompting")
        return self.frame


# ----------------------------------------------------------------------------- results and state
@dataclass
class Prediction2D:
    """Result of one :class:`Session2D` call.

    ``mask``: the current object's (H, W) bool mask. ``probabilities``: sigmoid of the selected
    candidate's logits at the original size (None after add_mask/reset). ``score``: its predicted
    IoU (None for SAM-UNet and masks). ``candidates``/``scores``: all multimask candidates (bool
    (M, H, W), (M,)) when several were decoded, with ``selected`` the index shown.
    ``changed_bbox``: (rows, cols) slices of the region whose mask changed, or None.
    """

    mask: np.ndarray
    probabilities: np.ndarray | None
    score: float | None
    changed_bbox: Slices2D | None
    object_id: int
    candidates: np.ndarray | None = None
    scores: np.ndarray | None = None
    selected: int = 0
    low_res: torch.Tensor | None = None  # (1, 1, L, L) raw logits of the selected candidate


@dataclass
class _Object2D:
    mask: np.ndarray
    points: tuple = ()  # ((x, y), label) in original pixels
    box: tuple | None = None
    prompts: tuple = ()  # ("point", ((x, y), positive)) | ("box", xyxy) | ("mask", None)
    low_res: torch.Tensor | None = None  # selected raw low-res logits (or a mask prior's logits)
    feedback: torch.Tensor | None = None  # the next call's mask_input
    score: float | None = None
    decoded: Decoded | None = None  # the last decoder output (candidates)
    history: list = field(default_factory=list)

    def snapshot(self) -> _Object2D:
        return replace(self, history=[])


def load_image2d(image: ImageLike2D, window: str | Window | None = None,
                 value_range: tuple[float, float] | None = None) -> tuple[np.ndarray, Image2D]:
    """A path, :class:`Image2D` or array -> ((H, W, 3) uint8 RGB, the Image2D)."""
    if isinstance(image, Image2D):
        img = image
    elif isinstance(image, (str, os.PathLike)):
        img = read_image2d(image)
    else:
        img = image2d_from_array(image)
    win = parse_window(window) if isinstance(window, str) else window
    return rgb_uint8(img.array, win, value_range), img


class Session2D(ObjectsMixin):
    """Per-user interactive 2D segmentation around a shared, stateless 2D model.

    ``policy`` defaults to the model's official one; ``channel_order`` overrides its colour order
    (SAM-Med2D defaults to ``"bgr"``, what its weights were trained on).

    Label policy (``lock_object``, ``others_negative``; :class:`~voxprompt.session.objects.ObjectsMixin`):
    each new mask of the current object is cut by the protected objects; the candidates and the mask
    fed back stay the model's.
    """

    _object_type = _Object2D

    def __init__(self, model: torch.nn.Module, device: str | torch.device | None = None,
                 policy: Policy2D | None = None, channel_order: str | None = None) -> None:
        if model.spatial_dims != 2:
            raise UsageError(f"Session2D needs a 2D model, got spatial_dims={model.spatial_dims}; use Session")
        pol = policy or policy_for(model, channel_order)
        if policy is not None and channel_order is not None:
            pol = replace(pol, channel_order=channel_order)
        self.predictor = Predictor2D(model, pol, device)
        self.image: Image2D | None = None
        self.rgb: np.ndarray | None = None
        self._objects: dict[int, _Object2D] = {}
        self._current = 1

    @property
    def policy(self) -> Policy2D:
        return self.predictor.policy

    @property
    def model(self) -> torch.nn.Module:
        return self.predictor.model

    # ------------------------------------------------------------------ image
    def set_image(self, image: ImageLike2D, window: str | Window | None = None,
                  value_range: tuple[float, float] | None = None) -> None:
        """Set the image (path, Image2D, or (H, W) / (H, W, 3) array) and encode it; clears all objects.

        Non-8-bit images are mapped to 0..255 by ``window`` (CT preset or (W, L)), ``value_range``,
        or their min..max; grey becomes three equal channels.
        """
        rgb, img = load_image2d(image, window, value_range)
        self.predictor.set_image(rgb)
        self._start(img, rgb)

    def attach(self, predictor: Predictor2D, rgb: np.ndarray) -> None:
        """Use an already encoded ``predictor`` (same model and policy) for the image ``rgb``
        (e.g. a slice whose embedding is cached); clears all objects."""
        if predictor.model is not self.model or predictor.policy != self.policy:
            raise UsageError("attach: the predictor's model or policy differs from the session's")
        if predictor.shape != tuple(rgb.shape[:2]):
            raise UsageError(f"attach: image shape {rgb.shape[:2]} differs from the encoded {predictor.shape}")
        self.predictor = predictor
        self._start(image2d_from_array(rgb), rgb)

    def _start(self, img: Image2D, rgb: np.ndarray) -> None:
        self.image, self.rgb = img, rgb
        self._clear_objects(rgb.shape[:2])

    @property
    def shape(self) -> tuple[int, int]:
        return self.predictor.shape

    # ------------------------------------------------------------------ validation
    def _xy(self, xy: Sequence[float]) -> tuple[float, float]:
        h, w = self.shape
        try:
            p = np.asarray(xy, dtype=np.float64)
        except (TypeError, ValueError):
            raise PromptError(f"point {xy!r} is not numeric") from None
        if p.shape != (2,):
            raise PromptError(f"a 2D point needs two values (x = column, y = row), got {xy!r}")
        if not np.isfinite(p).all():
            raise PromptError(f"point {xy!r} is not finite")
        if not (0 <= p[0] < w and 0 <= p[1] < h):
            raise PromptError(f"point (x={p[0]:g}, y={p[1]:g}) is outside the image of {w}x{h} (width x height)")
        return float(p[0]), float(p[1])

    def _xyxy(self, box: Sequence[float]) -> tuple[float, float, float, float]:
        h, w = self.shape
        try:
            b = np.asarray(box, dtype=np.float64)
        except (TypeError, ValueError):
            raise PromptError(f"box {box!r} is not numeric") from None
        if b.shape != (4,) or not np.isfinite(b).all():
            raise PromptError(f"a 2D box needs four finite values (x0, y0, x1, y1), got {box!r}")
        x0, y0, x1, y1 = (float(v) for v in b)
        if x1 <= x0 or y1 <= y0:
            raise PromptError(f"box ({x0:g}, {y0:g}, {x1:g}, {y1:g}) is empty or in the wrong order: give "
                              "(x0, y0, x1, y1) with the top-left corner first (x0 < x1, y0 < y1)")
        if x0 < 0 or y0 < 0 or x1 > w or y1 > h:
            raise PromptError(f"box ({x0:g}, {y0:g}, {x1:g}, {y1:g}) is outside the image of {w}x{h} "
                              "(width x height)")
        return x0, y0, x1, y1

    # ------------------------------------------------------------------ decoding
    def _decode(self, obj: _Object2D, multimask: bool | None) -> Decoded:
        pts = None
        if obj.points:
            pts = (np.asarray([p for p, _ in obj.points], np.float64), np.asarray([lab for _, lab in obj.points]))
        box = None if obj.box is None else np.asarray(obj.box, np.float64)
        return self.predictor.predict(pts, box, obj.feedback, multimask)

    def _apply(self, obj: _Object2D, decoded: Decoded) -> Prediction2D:
        logits = self.predictor.to_original(decoded.low_res)  # (M, H, W)
        masks = (logits > 0).numpy()
        new = self._protect(masks[decoded.selected])  # label policy; the candidates stay the model's
        changed = bbox_of(obj.mask != new)
        obj.mask = new
        obj.low_res = decoded.best
        obj.feedback = self.policy.feedback(decoded.best)
        obj.score, obj.decoded = decoded.score, decoded
        prob = torch.sigmoid(logits[decoded.selected]).numpy()
        many = masks.shape[0] > 1
        return Prediction2D(self.mask, prob, obj.score, changed, self._current,
                            masks if many else None, decoded.scores if many else None, decoded.selected,
                            decoded.best)

    def _run(self, change: dict, multimask: bool | None) -> Prediction2D:
        obj = self._obj
        obj.history.append(obj.snapshot())
        try:
            for k, v in change.items():
                setattr(obj, k, v)
            return self._apply(obj, self._decode(obj, multimask))
        except BaseException:
            self._restore(obj, obj.history.pop())
            raise

    # ------------------------------------------------------------------ prompts
    def add_point(self, xy: Sequence[float], positive: bool = True, multimask: bool | None = None) -> Prediction2D:
        """Click at original pixel ``(x, y)``; refines the current object."""
        return self.add_prompts([xy], [positive], multimask=multimask)

    def add_points(self, points_xy: Sequence[Sequence[float]], positive: Sequence[bool],
                   multimask: bool | None = None) -> Prediction2D:
        """Several clicks at once (one decoder call), e.g. SAM-Med2D's non-iterative N points."""
        if not len(points_xy):
            raise PromptError("add_points needs at least one point")
        return self.add_prompts(points_xy, positive, multimask=multimask)

    def add_box(self, box_xyxy: Sequence[float], multimask: bool | None = None) -> Prediction2D:
        """Box ``(x0, y0, x1, y1)`` in original pixels; replaces the object's previous box."""
        return self.add_prompts(box=box_xyxy, multimask=multimask)

    def add_prompts(self, points_xy: Sequence[Sequence[float]] = (), positive: Sequence[bool] = (),
                    box: Sequence[float] | None = None, multimask: bool | None = None) -> Prediction2D:
        """Points and/or a box in one decoder call (one undo step)."""
        pts = [self._xy(p) for p in points_xy]
        if len(pts) != len(positive):
            raise PromptError(f"{len(pts)} point(s) but {len(positive)} label(s); give one label per point")
        if not pts and box is None:
            raise PromptError("no prompt: give points and/or a box")
        obj = self._obj
        change: dict = {}
        prompts = obj.prompts
        if box is not None:
            change["box"] = self._xyxy(box)
            prompts = prompts + (("box", change["box"]),)
        if pts:
            change["points"] = obj.points + tuple((p, 1 if s else 0) for p, s in zip(pts, positive))
            prompts = prompts + tuple(("point", (p, bool(s))) for p, s in zip(pts, positive))
        change["prompts"] = prompts
        return self._run(change, multimask)

    def add_mask(self, mask: np.ndarray) -> Prediction2D:
        """Make ``mask`` (nonzero = object, (H, W)) the object's mask and the next ``mask_input``;
        the object's points and box are cleared (later prompts refine this mask)."""
        m = self._protect(self._mask_prompt(mask))
        obj = self._obj
        obj.history.append(obj.snapshot())
        prior = self.predictor.prior(m)
        changed = bbox_of(obj.mask != m)
        obj.mask, obj.points, obj.box, obj.score, obj.decoded = m, (), None, None, None
        obj.feedback = prior
        obj.low_res = prior if self.policy.mask_feedback == "logits" else None
        obj.prompts = obj.prompts + (("mask", None),)
        return Prediction2D(self.mask, None, None, changed, self._current)

    def select_candidate(self, index: int) -> Prediction2D:
        """Show multimask candidate ``index`` of the last call instead (and feed it back next)."""
        obj = self._obj
        if obj.decoded is None or obj.decoded.low_res.shape[1] < 2:
            raise UsageError("the last prediction of this object has no other candidates")
        m = obj.decoded.low_res.shape[1]
        if not 0 <= index < m:
            raise UsageError(f"candidate {index} does not exist; choose 0..{m - 1}")
        obj.history.append(obj.snapshot())
        return self._apply(obj, replace(obj.decoded, selected=int(index)))

    # ------------------------------------------------------------------ history
    def _restore(self, obj: _Object2D, state: _Object2D) -> Slices2D | None:
        changed = bbox_of(obj.mask != state.mask)
        history = obj.history
        self._objects[self._current] = replace(state, history=history)
        return changed

    def undo(self) -> Prediction2D:
        """Revert the current object's last call exactly (mask, prompts, fed-back mask)."""
        changed = self._undo_last()
        o = self._obj
        return Prediction2D(self.mask, None, o.score, changed, self._current, low_res=o.low_res)

    def reset(self) -> Prediction2D:
        """Clear the current object (mask, prompts and undo history)."""
        changed = self._clear_current()
        return Prediction2D(self.mask, None, None, changed, self._current)


__all__ = ["Decoded", "Prediction2D", "Predictor2D", "Session2D", "load_image2d"]
