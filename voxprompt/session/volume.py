"""Interactive 3D segmentation over a stateless promptable model (SAM-Med3D).

Axis convention
---------------
Every prompt (point, box, mask) is given in voxel indices of **exactly the array the session
holds, in that array's axis order**:

* ``set_image(path)`` or ``set_image(Image)``: the array is SimpleITK's, numpy order (z, y, x).
  3D Slicer / ITK-SNAP show IJK = (i, j, k) = (x, y, z), the reverse: convert with
  :func:`from_slicer_ijk` (and back with :func:`to_slicer_ijk`).
* ``set_image(array, spacing=..., affine=...)``: the array is taken in the caller's axis order
  (nibabel's (i, j, k), numpy (z, y, x), anything); ``spacing`` lists mm per array axis in that
  order and ``affine`` (nibabel convention) maps an array index to world RAS mm. Internally the
  array becomes an :class:`~voxprompt.io.Image` whose "(z, y, x)" axes are the caller's axes.

World points convert with :meth:`Session.point_from_world` / :meth:`Session.point_to_world`.

Click semantics (official SAM-Med3D ``infer_utils``)
---------------------------------------------------
* The first click of an object opens a ROI of the model's size and ``roi_spacing_mm`` (SAM-Med3D:
  128^3 at 1.5 mm; the default model: 64^3 at 2.25 mm) in canonical RAS orientation centred on the
  click (decided by an :class:`RoiPlanner`), with a zero ``mask_input``.
* Later clicks inside the same ROI send all clicks so far plus the previous raw low-res logits.
  The ROI's image embedding is cached (keyed by ROI), so such clicks run only the decoder.
* A click outside the current ROI starts a new ROI centred on it (that click alone, zero
  ``mask_input``); the result replaces the object's mask inside the new ROI's footprint on the
  original grid and the earlier mask is kept outside it.
* Mask = ``sigmoid(trilinear_upsample(low_res, 128^3, align_corners=False)) > 0.5`` mapped to
  the original grid by nearest neighbour (:func:`~voxprompt.preprocess.postprocess_mask`).

Boxes: SAM-Med3D has no box embedding. ``add_box`` opens a ROI centred on the box, sends a
positive click at the box centre (with ``box_search``, an option: where the centre's mask does not
fill the box, at the deepest voxel of the mask, of those decoded from a 3 x 3 grid around the centre,
that fills it best, so that a C-shaped or two-lobed object whose centre lies outside it is found) and
(``box_negatives``, the official models' setting) negative clicks just outside the middle of each
box face (in-plane faces only for a one-slice 2D box), and clips the result to the box: inside the
box the object's mask becomes the clipped result, outside the box it is unchanged. A one-slice (2D)
box on a volume, as Slicer and the viewer draw it, asks for the 3D object shown in it (as
nnInteractive reads it): only its own slice is clipped to the rectangle, the other slices take the
result as it is.
Later clicks in that ROI refine as usual (the box is not applied to them).

Scribbles and lassos: ``add_scribble(voxels)`` (a set of voxels), ``add_lasso(polygon)`` (a closed
polygon on one slice, filled) and ``add_lasso_region(voxels)`` (a lasso already filled), positive or
negative, become clicks and mask prompts by a rule (``scribble_rule`` / ``lasso_rule``, or per call;
:mod:`voxprompt.session.strokes` lists them): by default a scribble is up to ``stroke_points`` clicks
spread along it in one model step, and a lasso as many clicks spread over its core, from its deepest
voxel (the ``mask`` rule feeds the mask with the region added or cut out as the mask prompt instead).
Each call is one undo step.

Masks: ``add_mask`` makes an existing segmentation the object's mask and the previous mask of the
next click: the ROI is the one the official pipeline centres on the label, and the label resampled
into it is turned into +/- ``MASK_PRIOR_LOGIT`` logits averaged down to the 32^3 low-res grid.

New ROIs: a click outside the object's current ROI opens one centred on it. Officially it starts
from nothing (that click alone, a zero mask); with ``carry_over`` (the default model's stored setting)
it starts from the object's mask resampled into it as the prior, with the object's clicks that fall in
it, so a click at the far end of a large organ extends the mask instead of starting over.

Auto-zoom: ``Session(model, planner=AutoZoomPlanner())`` (:mod:`voxprompt.session.autozoom`) follows a
prediction that touches the ROI's border with zoomed-out ROIs and tiles refined at the base spacing;
the whole multi-ROI result of one call is one undo step. The default planner is the official one.

Boundary refinement: ``Session(model, refine=True)`` (or a :class:`~voxprompt.refine.RefineConfig`;
the default ``None`` follows the model config's ``refine_band_mm``, on for the default model)
re-decides a band of ``band_mm`` around each click's new boundary on the original grid with a
random walker seeded by the model's confident interior/exterior and the clicks
(:mod:`voxprompt.refine`). The model's logits fed back to the next click are unchanged; the mask
shown (and its undo step) is the refined one. Off for the official models (published behaviour).

Mask clean-up: ``Session(model, clean=True | False)`` (the default ``None`` follows the model's
stored settings like the refinement: on for the default model, off for the official ones) keeps,
after the refinement, only the 26-connected components of each new result that hold a positive
click or box centre of the object or continue its mask outside the changed region, and fills the
holes they enclose, except holes holding a negative click (:func:`voxprompt.cleanup.clean_mask`).
When no positive prompt lies in the result, the component nearest to one is kept. ``clean=False``
keeps everything the model returned; ``add_mask`` never cleans. The cleaned mask is what is shown
and undone; the logits fed back are the model's.

Confidence: ``Prediction.low_confidence`` / ``.warning`` flag a result whose predicted IoU is below
``low_confidence_iou`` (default :data:`LOW_CONFIDENCE_IOU`, calibrated for the default model only),
whose mask is empty after a positive prompt, or that leaves out the object's last positive click.

Objects: ``new_object`` starts object 2, 3, ...; :meth:`Session.label_map` paints objects in id
order, so later objects overwrite earlier ones where they overlap, except locked ones.

Label policy (:class:`~voxprompt.session.objects.ObjectsMixin`): ``lock_object(id)`` protects an
object from the prompts of the others (their new masks are cut by it before clean-up and again
after it, and it wins in ``label_map``); ``Session(model, others_negative=True)`` (or the attribute)
keeps every other object's voxels out of the current object's new masks. ``add_mask`` is cut too.

Predictions: ``Prediction.mask`` is the current object's full-size bool mask;
``Prediction.probabilities`` covers only the model ROI (float32 ``roi.size``, ROI tensor-axis
order, see :mod:`voxprompt.preprocess.roi`), not the full image.
"""
from __future__ import annotations

import logging
import math
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from ..cleanup import clean_mask, resolve_clean
from ..errors import InputError, PromptError, SessionFileError, UsageError
from ..io.image import LPS_TO_RAS, Image
from ..io.read import read_image
from ..masks import Slices, bbox_of, box_fit, component_at, deepest_voxel, within
from ..preprocess import Roi, extract_roi_label, roi_for_label
from ..refine import RefineConfig, refine_mask, refine_reach, resolve_refine
from .background import RefineJob
from .objects import ObjectsMixin, box_corners, point_index, read_only, unshared_mask
from .planning import ROI_SPACING_MM, BaseStage, CenteredRoiPlanner, Expansion, RoiPlanner
from .roi_predictor import EMBEDDING_CACHE_SIZE, RoiPredictor, clicks_in, roi_key
from .strokes import (
    DEFAULT_LASSO_RULE,
    DEFAULT_SCRIBBLE_RULE,
    STROKE_POINTS,
    Stroke,
    box_centre,
    box_negatives,
    box_seeds,
    check_rule,
    lasso_region,
    lasso_slab,
    stroke_clicks,
    stroke_voxels,
)

log = logging.getLogger(__name__)

BOX_NEGATIVE_MARGIN = 2  # voxels outside a box face where its negative click goes
# box_search looks further than the box's centre only when the centre's mask fills the box worse than
# this (box_fit): a mask whose extent overlaps the box by less than half is not the boxed object.
BOX_FIT_ENOUGH = 0.5
# A result whose predicted IoU (the model's own score) is below this is flagged as low confidence.
# Chosen for the default model on the training structures (benchmarks/confidence.py: the largest
# threshold whose flagged first clicks have Dice < 0.3 at least 75 % of the time; re-chosen for each
# shipped stage; from 2026-12-08 without the held-out brain's subject). Its IoU head is a modest signal
# (Spearman 0.65 with Dice there, stage 21); calibrate it for any other model (an official SAM-Med3D's
# scores live on another scale).
LOW_CONFIDENCE_IOU = 0.16

ImageLike = Image | np.ndarray | str | os.PathLike


# ----------------------------------------------------------------------------- axis helpers
def from_slicer_ijk(ijk: Sequence[float]) -> tuple:
    """3D Slicer / ITK-SNAP IJK (i, j, k) -> array index (k, j, i) of a SimpleITK-read image."""
    vals = tuple(ijk)
    if len(vals) != 3:
        raise PromptError(f"IJK needs three values (i, j, k), got {len(vals)}: {ijk!r}")
    return vals[::-1]


def to_slicer_ijk(index_zyx: Sequence[float]) -> tuple:
    """Array index (z, y, x) of a SimpleITK-read image -> Slicer / ITK-SNAP IJK (i, j, k)."""
    vals = tuple(index_zyx)
    if len(vals) != 3:
        raise PromptError(f"index needs three values (z, y, x), got {len(vals)}: {index_zyx!r}")
    return vals[::-1]


def image_from_array(array: np.ndarray, spacing: Sequence[float] | None = None,
                     affine: np.ndarray | None = None) -> Image:
    """Wrap an array (caller's axis order) as an Image; ``affine``: array index -> RAS mm."""
    arr = np.asarray(array)
    if arr.ndim != 3:
        raise InputError(f"image array must be 3D, got shape {arr.shape} (add an axis for a 2D slice)")
    if arr.size == 0 or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
        raise InputError(f"image array must be non-empty and numeric, got {arr.shape} {arr.dtype}")
    if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        raise InputError("image array contains NaN or infinite values")
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8)
    if spacing is not None and affine is not None:
        raise UsageError("give spacing or affine, not both (the affine holds the spacing)")
    if affine is None:
        sp = (1.0, 1.0, 1.0) if spacing is None else tuple(float(s) for s in spacing)
        if len(sp) != 3 or not all(math.isfinite(s) and s > 0 for s in sp):
            raise UsageError(f"spacing must be three positive mm values (array axis order), got {spacing!r}")
        return Image(arr, spacing=sp[::-1], origin=(0.0, 0.0, 0.0), direction=np.eye(3))
    aff = np.asarray(affine, dtype=np.float64)
    if aff.shape != (4, 4) or not np.isfinite(aff).all():
        raise UsageError(f"affine must be a finite 4x4 matrix, got shape {aff.shape}")
    lps = LPS_TO_RAS @ aff
    cols = lps[:3, :3][:, ::-1]  # columns for sitk (i, j, k) = reversed array axes
    sp = np.linalg.norm(cols, axis=0)
    if np.any(sp <= 0):
        raise UsageError("affine has a zero-length axis")
    direction = cols / sp
    if not np.allclose(direction.T @ direction, np.eye(3), atol=1e-4):
        raise UsageError("affine has shear (non-orthogonal axes); resample the image first")
    return Image(arr, spacing=tuple(sp), origin=tuple(lps[:3, 3]), direction=direction)


# ----------------------------------------------------------------------------- results and state
@dataclass
class Prediction:
    """Result of one session call.

    ``mask``: current object's mask, bool, full image shape. ``probabilities``: sigmoid of the
    upsampled logits over the ROI only (float32 ``roi.size``, ROI tensor-axis order) or None when
    the object has no ROI. ``changed_bbox``: slices of the image region whose mask changed (None if
    nothing changed). ``score``: the model's IoU prediction (None for add_mask/reset/empty).
    With auto-zoom, ``roi``/``probabilities``/``score`` are the base ROI's; ``zooms`` and ``tiles``
    say what else ran (empty / 0 for a single-ROI call). ``low_confidence`` / ``warning``: whether
    the object's result looks poor and why, one sentence (``Session`` docstring: score below
    ``low_confidence_iou``, an empty mask after a positive prompt, the last positive click outside
    the mask); False / None otherwise.
    """

    mask: np.ndarray
    probabilities: np.ndarray | None
    changed_bbox: Slices | None
    score: float | None
    roi: Roi | None
    object_id: int
    roi_bbox: Slices | None = None  # image region covered by the ROI
    zooms: tuple[float, ...] = ()
    tiles: int = 0
    low_confidence: bool = False
    warning: str | None = None
    refining: bool = False  # the boundary refinement of this mask is still running (refine_background)


@dataclass
class _VolumeStep:
    """What undo needs: the state before a call and the part of the mask it overwrote."""

    roi: Roi | None
    points_roi: list
    prompts: list
    logits: torch.Tensor | None
    score: float | None
    bbox: Slices | None
    old_block: np.ndarray | None


@dataclass
class _Object:
    mask: np.ndarray
    roi: Roi | None = None
    points_roi: list = field(default_factory=list)  # [(roi coords (3,), label)] in the current ROI
    prompts: list = field(default_factory=list)  # [(kind, data)] everything given, array indices
    logits: torch.Tensor | None = None  # (1, 1, 32, 32, 32) raw low-res logits
    score: float | None = None
    history: list = field(default_factory=list)


@dataclass
class _Later:
    """A background refinement's inputs: the step it amends and the fast block before clip and clean."""

    obj: _Object
    step: _VolumeStep
    region: Slices
    block: np.ndarray
    clicks: list
    clip: _Clip | None
    roi: Roi | None  # set after an expansion: the committed mask becomes the next click's prior


def _since_mask(prompts: list) -> list:
    """The prompts given since the object's last mask prompt."""
    last = max((i for i, (kind, _) in enumerate(prompts) if kind == "mask"), default=-1)
    return prompts[last + 1:]


def _positive_seeds(prompts: list) -> list:
    """Voxels a positive prompt asked for since the last mask prompt: positive clicks, box centres, the
    voxels of positive scribbles and lassos."""
    seeds = []
    for kind, data in _since_mask(prompts):
        if kind == "point" and data[1]:
            seeds.append(np.asarray(data[0], dtype=int))
        elif kind == "box":
            seeds.append(box_centre(data[0], data[1]))
        elif isinstance(data, Stroke) and data.positive:
            seeds.extend(data.voxels)
    return seeds


def _point_clicks(prompts: list) -> list:
    """The clicks given since the object's last mask prompt (original indices): point prompts, and the
    clicks the rules made of scribbles and lassos."""
    clicks: list = []
    for kind, data in prompts:
        if kind == "mask":
            clicks = []
        elif kind == "point":
            clicks.append((np.asarray(data[0], dtype=float), 1 if data[1] else 0))
        elif isinstance(data, Stroke):
            clicks.extend((np.asarray(idx, dtype=float), lab) for idx, lab in data.clicks)
    return clicks


def _negative_marks(prompts: list) -> list:
    """Voxels a negative prompt marked since the last mask prompt: negative clicks (those the stroke rules
    made too) and the voxels of negative scribbles and lassos (holes holding one stay open)."""
    marks = [p for p, lab in _point_clicks(prompts) if not lab]
    for _, data in _since_mask(prompts):
        if isinstance(data, Stroke) and not data.positive:
            marks.extend(data.voxels)
    return marks


def resolve_model_setting(name: str, setting: bool | None, model_cfg: object, default_model_value: bool = True) -> bool:
    """A session switch named ``name`` (``carry_over``, ``box_negatives``): as given, or (None) the model's
    stored setting: ``default_model_value`` for the post-processed default model (the rule of
    :func:`~voxprompt.cleanup.resolve_clean`), its opposite, the published behaviour, for the official ones."""
    if setting is None:
        return default_model_value if resolve_clean(None, model_cfg) else not default_model_value
    return switch(name, setting, none_ok=True)


def switch(name: str, value: object, none_ok: bool = False) -> bool:
    """``value`` as a bool, or a :class:`UsageError` naming the switch (an int or a string is a mistake)."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise UsageError(f"{name} must be {'None or ' if none_ok else ''}a bool, got {type(value).__name__}")


@dataclass(frozen=True)
class _Clip:
    """Where a box prompt may change the object's mask: inside the box [lo, hi) (original indices); for a
    one-slice box on a volume (``plane``: the axis it is one voxel thick on) everywhere but the rest of
    its own slice."""

    lo: np.ndarray
    hi: np.ndarray
    plane: int | None = None
    seed: np.ndarray | None = None  # where the box's positive click went (kept by the clean-up)

    @classmethod
    def of_box(cls, lo: np.ndarray, hi: np.ndarray, shape: Sequence[int]) -> _Clip:
        flat = [ax for ax, n in enumerate(shape) if hi[ax] - lo[ax] == 1 and n > 1]
        return cls(lo, hi, flat[0] if len(flat) == 1 else None)

    def inner(self, region: Slices) -> Slices:
        """The box within ``region``, in ``region``'s indices."""
        return tuple(slice(*np.clip([int(a) - r.start, int(b) - r.start], 0, r.stop - r.start))
                     for r, a, b in zip(region, self.lo, self.hi))

    def apply(self, old: np.ndarray, block: np.ndarray, region: Slices) -> np.ndarray:
        """``block`` where the box may change the mask, ``old`` elsewhere in ``region``."""
        inner = self.inner(region)
        if self.plane is None:
            out = old.copy()
            out[inner] = block[inner]
            return out
        out = block.copy()
        sl = inner[self.plane]
        if sl.start < sl.stop:  # the box's slice lies in the region: the rest of it stays as it was
            plane = tuple(sl if ax == self.plane else slice(None) for ax in range(block.ndim))
            out[plane] = old[plane]
            out[inner] = block[inner]
        return out


class Session(ObjectsMixin):
    """Per-user interactive segmentation state around a shared, stateless model.

    Prompts are voxel indices of the session's array in its own axis order (module docstring).

    ``refine``: boundary refinement (None = the model's stored setting). ``clean``: keep only the
    components of a result that a positive prompt asked for, holes filled (None = the model's
    stored setting: on for the default model, off for the official ones; False keeps everything).
    ``carry_over``: a click's new ROI starts from the object's mask and clicks (None = the model's
    stored setting: on for the default model, off for the official ones). ``box_negatives``:
    :meth:`add_box` sends negative clicks just outside the box's faces (None = the model's stored
    setting: off for the default model, whose low-res cells are wider than the gap, so they cut into the
    object, ``benchmarks/box_prompt.py``; on for the official ones). ``box_search`` (off by default, every
    model): when the mask of :meth:`add_box`'s centre click does not fill the box, the click moves to
    the deepest voxel of the best-filling mask of a grid of clicks around the centre, which finds
    C-shaped and two-lobed objects; off, as the validation split and the second opinion disagree on it
    (``benchmarks/box_prompt.py``). ``retry_missed`` (off by default, every model): when the model's
    result leaves out the positive click just made (it followed its previous mask instead), decode
    again without that prior, then with the click alone, and add the first result that holds the
    click to the model's (one or two extra decoder calls, only then). ``monotone_clicks``: once the
    object has a mask, a positive click's result only adds to it, and a negative click removes only
    the connected part of what its result dropped that holds the click, so a click never undoes what
    earlier clicks settled elsewhere (a new ROI's decode from a resampled prior otherwise can); the
    boundary refinement and clean-up still act on the result
    (None = the model's stored setting: on for the default model, off for the official ones; strokes,
    boxes and masks are not affected). ``multimask_first``: an object's first click (positive, no
    prior) takes the decoder's multimask output with the highest predicted IoU, SAM's answer to an
    ambiguous single click (None = the weights' stored ``multimask_first``: set by ``voxprompt convert
    --multimask-first`` for weights trained for it; the official SAM-Med3D decodes one mask).
    ``flip_ensemble`` (1, 2, 4 or 8; None = the weights' stored ``flip_ensemble``, set by ``voxprompt
    convert --flip-ensemble``): the model runs on that many mirror images of each ROI and averages them
    (:class:`~voxprompt.session.roi_predictor.RoiPredictor`).
    ``low_confidence_iou``: a prediction whose model-predicted IoU is below it is flagged
    (``Prediction.low_confidence`` and ``.warning``; 0 turns this rule off). The default
    :data:`LOW_CONFIDENCE_IOU` = 0.16 was chosen for the default model (stage 21) on its training
    structures, where its predicted IoU is a modest signal; calibrate the threshold for other models (their IoU
    heads are not calibrated against real Dice either). A result is flagged as well when its mask
    is empty after a positive prompt (a click or a box: empty inside the box) or when the object's
    last positive click lies outside it; the sentence gives the click as an array index.

    ``refine_background``: return the model's mask at once (``Prediction.refining`` True) and refine
    its boundary in a worker thread (:mod:`voxprompt.session.background`); :meth:`wait_refined`
    returns the refined result, and ``mask``/``label_map`` show it once it is ready. The next
    prompt, undo, reset or image cancels a refinement that has not finished (that step keeps the
    model's mask). Off by default: every call then returns its final mask. Like the rest of the
    session, call it from one thread at a time.

    Label policy: :meth:`lock_object` / :meth:`unlock_object` / :attr:`locked_objects`, and
    ``others_negative`` (also a settable attribute): a prompt's new mask never takes a locked other
    object's voxels, nor, with ``others_negative``, any other object's
    (:class:`~voxprompt.session.objects.ObjectsMixin`). A background refinement applies the policy
    in force when it lands.

    ``scribble_rule`` / ``lasso_rule`` (settable attributes; one of
    :data:`~voxprompt.session.strokes.SCRIBBLE_RULES` / ``LASSO_RULES``): how :meth:`add_scribble` and
    :meth:`add_lasso` become clicks and mask prompts; ``stroke_points``: the most clicks a ``points``
    rule makes of one stroke (:mod:`voxprompt.session.strokes`).
    """

    _object_type = _Object

    def __init__(self, model: torch.nn.Module | None = None, device: str | torch.device | None = None,
                 planner: RoiPlanner | None = None, refine: bool | RefineConfig | None = None,
                 clean: bool | None = None, low_confidence_iou: float = LOW_CONFIDENCE_IOU,
                 refine_background: bool = False, others_negative: bool = False,
                 scribble_rule: str = DEFAULT_SCRIBBLE_RULE, lasso_rule: str = DEFAULT_LASSO_RULE,
                 stroke_points: int = STROKE_POINTS, carry_over: bool | None = None,
                 box_negatives: bool | None = None, box_search: bool = False, retry_missed: bool = False,
                 monotone_clicks: bool | None = None, multimask_first: bool | None = None,
                 flip_ensemble: int | None = None) -> None:
        if model is None:  # the default model, with the weights shipped in the package
            from ..models.loading import DEFAULT_MODEL, load_model, shipped_weights

            if shipped_weights(DEFAULT_MODEL) is None:
                raise UsageError(f"Session(): no weights shipped for {DEFAULT_MODEL}; pass a model")
            model = load_model(DEFAULT_MODEL, device=device or "cpu")
        if model.spatial_dims != 3:
            raise UsageError(f"Session needs a 3D model, got spatial_dims={model.spatial_dims}")
        self.model = model
        self.img_size = int(model.cfg.img_size)
        self.roi_spacing = float(getattr(model.cfg, "roi_spacing_mm", ROI_SPACING_MM))
        planner = planner or CenteredRoiPlanner(size=self.img_size, spacing=self.roi_spacing)
        self.planner: RoiPlanner = planner.bind(self.img_size, self.roi_spacing)
        self.cache_size = max(EMBEDDING_CACHE_SIZE, int(self.planner.cache_size or 0))
        self.predictor = RoiPredictor(model, device, cache_size=self.cache_size, flip_ensemble=flip_ensemble)
        self.device = self.predictor.device
        self.refine: RefineConfig | None = resolve_refine(refine, model.cfg)
        self.clean: bool = resolve_clean(clean, model.cfg)
        self.carry_over: bool = resolve_model_setting("carry_over", carry_over, model.cfg)
        self.box_negatives: bool = resolve_model_setting("box_negatives", box_negatives, model.cfg,
                                                         default_model_value=False)
        self.box_search = switch("box_search", box_search)
        self.retry_missed = switch("retry_missed", retry_missed)
        self.monotone_clicks: bool = resolve_model_setting("monotone_clicks", monotone_clicks, model.cfg)
        self.multimask_first = switch("multimask_first", bool(model.cfg.multimask_first)
                                      if multimask_first is None else multimask_first, none_ok=True)
        self.refine_background = bool(refine_background)
        self.others_negative = bool(others_negative)
        self.scribble_rule = check_rule("scribble", scribble_rule)
        self.lasso_rule = check_rule("lasso", lasso_rule)
        if isinstance(stroke_points, bool) or not isinstance(stroke_points, (int, np.integer)) or stroke_points < 1:
            raise UsageError(f"stroke_points must be a positive integer, got {stroke_points!r}")
        self.stroke_points = int(stroke_points)
        self._job: RefineJob | None = None
        try:
            self.low_confidence_iou = float(low_confidence_iou)
        except (TypeError, ValueError):
            raise UsageError(f"low_confidence_iou must be a number, got {low_confidence_iou!r}") from None
        if not 0.0 <= self.low_confidence_iou <= 1.0:
            raise UsageError(f"low_confidence_iou must be in [0, 1] (0 = no score rule), got {low_confidence_iou}")
        self.image: Image | None = None
        self._objects: dict[int, _Object] = {}
        self._current = 1

    # ------------------------------------------------------------------ image
    def set_image(self, image: ImageLike, spacing: Sequence[float] | None = None,
                  affine: np.ndarray | None = None) -> None:
        """Set the volume (path, Image, or array in the caller's axis order); clears all objects."""
        self._settle(cancel=True)
        if isinstance(image, Image):
            if spacing is not None or affine is not None:
                raise UsageError("spacing/affine apply to arrays only; an Image carries its geometry")
            img = image
        elif isinstance(image, (str, os.PathLike)):
            img = read_image(image)
        else:
            img = image_from_array(image, spacing, affine)
        if len(img.shape) != 3:
            raise InputError(f"image must be 3D, got shape {img.shape}")
        if min(img.shape) == 1:
            log.info("image %s is one slice thick; the ROI is zero-padded (a 2D model may fit better)",
                     img.shape)
        self.image = img
        self.predictor.set_image(img)
        self._clear_objects(img.shape)

    @property
    def shape(self) -> tuple[int, int, int]:
        return self._img().shape

    def _img(self) -> Image:
        if self.image is None:
            raise UsageError("no image: call set_image() before prompting")
        return self.image

    # ------------------------------------------------------------------ validation
    def _index(self, point: Sequence[float], what: str = "point") -> np.ndarray:
        return point_index(point, self._img().shape, what)

    def _box(self, lo: Sequence[int], hi: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        return box_corners(lo, hi, self._img().shape)

    # ------------------------------------------------------------------ world helpers
    def point_from_world(self, mm: Sequence[float], frame: str = "LPS") -> np.ndarray:
        """World point (mm, ``frame`` 'LPS' or 'RAS') -> continuous array index (not rounded)."""
        p = np.asarray(mm, dtype=np.float64)
        if p.shape != (3,) or not np.isfinite(p).all():
            raise PromptError(f"world point needs 3 finite mm values, got {mm!r}")
        return self._img().world_to_index(p, frame=frame)

    def point_to_world(self, index: Sequence[float], frame: str = "LPS") -> np.ndarray:
        """Array index -> world mm in ``frame``."""
        return self._img().index_to_world(np.asarray(index, dtype=np.float64), frame=frame)

    # ------------------------------------------------------------------ memory
    def memory_bytes(self) -> int:
        """Estimated bytes held: image, object masks, undo blocks and logits, cached embeddings/coverage."""
        def t(x: torch.Tensor | None) -> int:
            return 0 if x is None else int(x.element_size() * x.nelement())

        total = 0 if self.image is None else int(self.image.array.nbytes)
        for obj in self._objects.values():
            total += int(obj.mask.nbytes) + t(obj.logits)
            for step in obj.history:
                total += t(step.logits) + (0 if step.old_block is None else int(step.old_block.nbytes))
        return total + self.predictor.cache_bytes() + self.predictor.coverage_bytes()

    def cache_bytes(self) -> int:
        """Bytes of the cached image embeddings (re-computable on demand)."""
        return self.predictor.cache_bytes()

    def trim_cache(self, max_bytes: int) -> int:
        """Drop cached embeddings, least recently used first, until :meth:`memory_bytes` <= ``max_bytes``.

        Results are unchanged: a dropped embedding is re-encoded when next needed. Returns bytes freed.
        """
        freed = self.predictor.trim(self.memory_bytes() - int(max_bytes))
        if freed:
            log.debug("trimmed %d bytes of cache", freed)
        return freed

    # ------------------------------------------------------------------ model plumbing
    def _decode(self, roi: Roi, points_roi: list, logits: torch.Tensor | None,
                multimask: bool = False) -> tuple[torch.Tensor, float]:
        """The session's decoder call (the predictor's; a seam that tests replace to fix the score)."""
        return self.predictor.decode(roi, points_roi, logits, multimask)

    def _pasted(self, mask: np.ndarray, roi: Roi, mask_roi: np.ndarray,
                cache: bool = True) -> tuple[Slices | None, np.ndarray | None]:
        """The session's paste-back of a base ROI's result (the predictor's; a seam for tests), on the part
        of the ROI's footprint that can change plus what the refinement and the clean-up's ring read
        around it: the results are those of pasting over the whole footprint."""
        reach = np.ones(3, dtype=int)
        if self.refine is not None:
            reach = np.maximum(reach, refine_reach(self.refine, self._img().spacing[::-1]))
        return self.predictor.paste(mask, roi, mask_roi, cache, margin=reach)

    # ------------------------------------------------------------------ state changes
    def _push(self, obj: _Object) -> None:
        obj.history.append(_VolumeStep(obj.roi, list(obj.points_roi), list(obj.prompts), obj.logits, obj.score,
                                 None, None))

    def _commit(self, obj: _Object, new_mask_region: tuple[Slices, np.ndarray] | None,
                replace_all: np.ndarray | None = None) -> Slices | None:
        """Write a new mask (a region, or the whole mask); record the overwritten block for undo."""
        if replace_all is not None:
            bbox = bbox_of(obj.mask != replace_all)
            old = obj.mask[bbox].copy() if bbox else None
            obj.mask = replace_all.copy()
        elif new_mask_region is not None:
            region, block = new_mask_region
            diff = obj.mask[region] != block
            local = bbox_of(diff)
            if local is None:
                bbox, old = None, None
            else:
                bbox = within(region, local)
                old = obj.mask[bbox].copy()
                unshared_mask(obj)[region] = block  # copy-on-write: masks handed out never change
        else:
            bbox, old = None, None
        step = obj.history[-1]
        step.bbox, step.old_block = bbox, old
        return bbox

    def _prediction(self, obj: _Object, changed: Slices | None, prob: np.ndarray | None = None,
                    expansion: Expansion | None = None, object_id: int | None = None) -> Prediction:
        if prob is None and obj.logits is not None:
            with torch.inference_mode():
                prob = self.predictor.probabilities(obj.logits).cpu().numpy()
        roi_bbox = self.predictor.coverage(obj.roi)[0] if obj.roi is not None else None
        extra = {} if expansion is None else {"zooms": tuple(expansion.zooms), "tiles": expansion.tiles}
        warning = self._warning(obj)
        job = self._job
        return Prediction(mask=read_only(obj.mask), probabilities=prob, changed_bbox=changed, score=obj.score,
                          roi=obj.roi, object_id=self._current if object_id is None else object_id,
                          roi_bbox=roi_bbox, low_confidence=warning is not None, warning=warning,
                          refining=job is not None and job.context.obj is obj, **extra)

    def _warning(self, obj: _Object) -> str | None:
        """Why the object's current result looks poor (one sentence), or None (see the class docstring)."""
        notes = []
        if obj.score is not None and self.low_confidence_iou > 0 and obj.score < self.low_confidence_iou:
            notes.append(f"low confidence: predicted IoU {obj.score:.2f} < {self.low_confidence_iou:g}")
        positive = [(kind, data) for kind, data in _since_mask(obj.prompts)
                    if kind == "box" or (kind == "point" and data[1]) or (isinstance(data, Stroke) and data.positive)]
        if positive:
            kind, data = positive[-1]
            if isinstance(data, Stroke):
                if not obj.mask[tuple(data.voxels.T)].any():
                    notes.append(f"empty mask after a positive {kind}" if not obj.mask.any() else
                                 f"the positive {kind} is outside the result")
            elif kind == "point":
                if not obj.mask[data[0]]:
                    notes.append("empty mask after a positive click" if not obj.mask.any() else
                                 f"the positive click at {tuple(data[0])} is outside the result")
            elif not obj.mask[tuple(slice(a, b) for a, b in zip(*data))].any():
                notes.append(f"empty mask inside the box {tuple(data[0])}..{tuple(data[1])}")
        return "; ".join(notes) or None

    def _run(self, obj: _Object, roi: Roi, clicks: list,
             clip: _Clip | None = None, adds: bool | None = None) -> Prediction:
        """Decode the object's prompts in ``roi``, let the planner expand, paste on the original grid.

        ``clicks``: the object's clicks in original indices (for a multi-ROI planner); ``clip``:
        where a box prompt may change the mask; ``adds``: the result only adds to the object's mask
        (True) or only removes from it (False; ``monotone_clicks``).
        """
        ambiguous = self.multimask_first and obj.logits is None and len(obj.points_roi) == 1 and obj.points_roi[0][1]
        first = self._decoded(roi, obj.points_roi, obj.logits, multimask=ambiguous)
        logits, score, prob, mask_roi = self._retried(obj, roi, first) if self.retry_missed else first
        obj.roi, obj.logits, obj.score = roi, logits, score
        region, block = self._pasted(obj.mask, roi, mask_roi)
        if adds is not None and region is not None:
            block = self._monotone(obj.mask[region], block, region, clicks[-1][0], adds)
        expansion = None
        if self.planner.expands and region is not None:
            candidate = obj.mask.copy()
            candidate[region] = block
            expansion = self.planner.expand(self.predictor, BaseStage(roi=roi, mask_roi=mask_roi, clicks=clicks,
                                                                      mask=candidate, region=region))
            if expansion is not None:
                region, block = expansion.region, expansion.mask[expansion.region]
        later = None
        if region is not None and self.refine is not None:
            if self.refine_background:
                later = _Later(obj, obj.history[-1], region, block, clicks, clip, roi if expansion else None)
            else:
                block = self._refined(region, block, clicks)
        changed = self._finish(obj, self._current, roi, region, block, clip, expansion is not None)
        if later is not None:
            self._job = RefineJob(lambda cancel: self._refined(later.region, later.block, later.clicks, cancel), later)
        return self._prediction(obj, changed, prob.cpu().numpy(), expansion)

    @staticmethod
    def _monotone(old: np.ndarray, new: np.ndarray, region: Slices, click: np.ndarray, adds: bool) -> np.ndarray:
        """``monotone_clicks`` on ``region``: a positive click's result united with the old mask; a negative
        click's removes only the part of the old mask it dropped that is connected to the click (nothing,
        if it kept the clicked voxel), so a negative click never takes away what lies elsewhere."""
        if adds:
            return new | old
        dropped = old & ~new
        box = bbox_of(dropped)  # label only the dropped part's extent, not the whole region
        if box is None:
            return old
        corner = [r.start + b.start for r, b in zip(region, box)]
        at = np.floor(np.asarray(click, dtype=float) + 0.5).astype(int) - corner
        out = old.copy()
        out[box] &= ~component_at(dropped[box], at)
        return out

    def _decoded(self, roi: Roi, points_roi: list, logits: torch.Tensor | None, multimask: bool = False) -> tuple:
        """One decode in ``roi``: (raw low-res logits, score, upsampled probabilities, ROI mask > 0.5)."""
        logits, score = self._decode(roi, points_roi, logits, multimask)
        prob = self.predictor.probabilities(logits)
        return logits, score, prob, (prob > 0.5).cpu().numpy()

    def _retried(self, obj: _Object, roi: Roi, first: tuple) -> tuple:
        """``first`` (:meth:`_decoded`'s tuple), or, when it leaves out the object's newest prompt, a
        positive click, ``first`` united with the first retry that holds the click: without the previous
        logits, then with that click alone (``retry_missed``)."""
        kind, data = obj.prompts[-1]
        if kind != "point" or not data[1]:
            return first
        click = tuple(int(v) for v in obj.points_roi[-1][0])
        if first[3][click]:
            return first
        tries = [obj.points_roi] if obj.logits is not None else []
        if len(obj.points_roi) > 1:
            tries.append(obj.points_roi[-1:])
        for points in tries:
            logits, score, prob, mask_roi = self._decoded(roi, points, None)
            if mask_roi[click]:  # what the retry adds to the first result (a positive click only adds)
                log.debug("retry_missed: the click at %s is kept by a decode with %d click(s), no prior",
                          data[0], len(points))
                logits = torch.maximum(first[0], logits)
                prob = torch.maximum(first[2], prob)
                return logits, max(first[1], score), prob, (prob > 0.5).cpu().numpy()
        return first

    def _finish(self, obj: _Object, oid: int, roi: Roi, region: Slices | None, block: np.ndarray | None,
                clip: _Clip | None, prior: bool) -> Slices | None:
        """Clip, clean, apply the label policy and commit a new block on ``region``; the changed bbox.
        ``prior``: the logits fed to the next click become the committed mask's (after an expansion).
        The policy cuts before the clean-up (which then drops pieces cut off from what a prompt asked
        for) and after it (holes it fills never take protected voxels)."""
        if region is not None and clip is not None:
            block = clip.apply(obj.mask[region], block, region)
        if region is not None:
            block = self._protect(block, region, oid)
        if region is not None and self.clean:
            block = self._protect(self._cleaned(obj, region, block, clip), region, oid)
            if clip is not None and clip.plane is not None:  # holes filled across the box's slice
                block = clip.apply(obj.mask[region], block, region)
        changed = self._commit(obj, None if region is None else (region, block))
        if prior:  # later clicks in this ROI refine what is shown, not the cut-off logits
            obj.logits = self.predictor.prior(obj.mask, roi)
        return changed

    # ------------------------------------------------------------------ refinement after the fast mask
    def _settle(self, cancel: bool) -> Prediction | None:
        """Apply a finished background refinement (its Prediction); ``cancel``: stop one still running."""
        job = self._job
        if job is None or not (job.done or cancel):
            return None
        if not job.done:
            job.stop()
        self._job = None
        later, refined = job.context, job.result
        obj = later.obj
        oid = next((k for k, o in self._objects.items() if o is obj), None)
        if refined is None or oid is None or not obj.history or obj.history[-1] is not later.step:
            return None  # cancelled, failed, or the object has moved on
        fast = obj.mask[later.region].copy()
        if later.step.bbox is not None:  # back to the state before the step, then the step again, refined
            unshared_mask(obj)[later.step.bbox] = later.step.old_block
        self._finish(obj, oid, later.roi, later.region, refined, later.clip, later.roi is not None)
        local = bbox_of(fast != obj.mask[later.region])
        changed = None if local is None else within(later.region, local)
        return self._prediction(obj, changed, object_id=oid)

    @property
    def refining(self) -> bool:
        """Whether a background refinement is still running."""
        return self._job is not None and not self._job.done

    def wait_refined(self, timeout: float | None = None) -> Prediction | None:
        """Wait for the background refinement of the last prompt and apply it.

        Returns its Prediction (for the object it refined; ``changed_bbox`` relative to the mask
        returned at once), or None when nothing was pending, it was cancelled, or ``timeout``
        seconds passed first (``refining`` then still says True)."""
        job = self._job
        if job is None or not job.wait(timeout):
            return None
        return self._settle(cancel=False)

    @property
    def mask(self) -> np.ndarray:
        """Current object's mask (read-only bool, image shape; later calls never change it), refined
        when a background refinement has finished."""
        self._settle(cancel=False)
        return super().mask

    def label_map(self) -> np.ndarray:
        self._settle(cancel=False)
        return super().label_map()

    def new_object(self) -> int:
        self._settle(cancel=False)
        return super().new_object()

    def select_object(self, object_id: int) -> None:
        self._settle(cancel=False)
        super().select_object(object_id)

    def _cleaned(self, obj: _Object, region: Slices, block: np.ndarray,
                 clip: _Clip | None = None) -> np.ndarray:
        """``block`` (the object's new mask on ``region``) keeping only the components a prompt asked for,
        holes filled (:func:`voxprompt.cleanup.clean_mask`, seeded by the object's positive clicks and box
        centres). It sees ``region`` plus a one-voxel ring of the object's mask around it: components that
        continue the mask outside the region stay, so a multi-ROI object is not cut. Holes holding a
        negative click stay open (a cavity the user carved out). Only the part that may change does (the
        box of a ``clip``); after a mask prompt, components overlapping the object's previous mask stay
        too (the user's mask may have several parts)."""
        if not block.any():
            return block  # nothing to keep or fill
        shape = self.shape
        outer = tuple(slice(max(r.start - 1, 0), min(r.stop + 1, n)) for r, n in zip(region, shape))
        inner = tuple(slice(r.start - o.start, r.stop - o.start) for r, o in zip(region, outer))
        padded = obj.mask[outer].copy()
        padded[inner] = block
        if clip is None or clip.plane is not None:
            editable: Slices = inner
        else:  # the box within the region, in ``padded``'s indices
            editable = tuple(slice(b.start + i.start, b.stop + i.start) for b, i in zip(clip.inner(region), inner))
        anchor = padded.copy()
        anchor[editable] = False
        if any(kind == "mask" for kind, _ in obj.prompts):
            anchor |= padded & obj.mask[outer]
        start = np.array([o.start for o in outer])
        extra = [] if clip is None or clip.seed is None else [clip.seed]
        seeds = [p - start for p in _positive_seeds(obj.prompts) + extra]
        negatives = [np.asarray(p) - start for p in _negative_marks(obj.prompts)]
        cleaned = clean_mask(padded, seeds, anchor, spacing=self._img().spacing[::-1], negatives=negatives)
        padded[editable] = cleaned[editable]
        return padded[inner]

    def _refined(self, region: Slices, block: np.ndarray, clicks: list,
                 cancel: threading.Event | None = None) -> np.ndarray:
        """``block`` (the object's new mask on ``region``) with its boundary refined on the image grid."""
        img = self._img()
        start = np.array([r.start for r in region])
        points = [(np.floor(np.asarray(p, dtype=float) + 0.5).astype(int) - start, lab) for p, lab in clicks]
        return refine_mask(img.array[region], block, points, img.spacing[::-1], self.refine, cancel)

    # ------------------------------------------------------------------ prompts
    def _carried(self, obj: _Object, roi: Roi) -> tuple[list, torch.Tensor | None]:
        """How a click's new ROI starts: no clicks and a zero mask (official), or with ``carry_over``
        the object's mask resampled into it as the prior and the object's clicks that fall in it."""
        if not self.carry_over or not obj.prompts:
            return [], None
        label = extract_roi_label(self._img(), obj.mask, roi)
        if not label.any():
            return [], None
        return clicks_in(roi, _point_clicks(obj.prompts)), self.predictor.label_prior(label)

    def add_point(self, index: Sequence[float], positive: bool = True) -> Prediction:
        """Click at an array index (caller's axis order); refine in the current ROI or open one."""
        idx = self._index(index)
        self._settle(cancel=True)
        obj = self._obj
        with torch.inference_mode():
            roi = self.planner.plan(self._img(), idx.astype(float), obj.roi)
            self._push(obj)
            try:
                if obj.roi is None or roi_key(roi) != roi_key(obj.roi):
                    obj.points_roi, obj.logits = self._carried(obj, roi)
                obj.points_roi = obj.points_roi + [(self.predictor.roi_point(roi, idx), 1 if positive else 0)]
                obj.prompts = obj.prompts + [("point", (tuple(idx.tolist()), bool(positive)))]
                adds = bool(positive) if self.monotone_clicks and obj.mask.any() else None
                return self._run(obj, roi, _point_clicks(obj.prompts), adds=adds)
            except BaseException:
                self._restore(obj, obj.history.pop())
                raise

    def add_box(self, lo: Sequence[int], hi: Sequence[int]) -> Prediction:
        """Box [lo, hi) in array indices (3D, or 2D with hi = lo + 1 on one axis); see module doc."""
        a, b = self._box(lo, hi)
        self._settle(cancel=True)
        img = self._img()
        obj = self._obj
        center = box_centre(a, b)
        extent = b - a
        if (np.any(extent * np.asarray(img.spacing[::-1]) > self.img_size * self.roi_spacing)
                and not self.planner.expands):
            log.warning("box %s..%s is larger than the %d^3 ROI at %.1f mm; the ROI covers its centre only",
                        tuple(a.tolist()), tuple(b.tolist()), self.img_size, self.roi_spacing)
        negatives = ([(q.astype(float), 0) for q in box_negatives(a, b, center, img.shape, BOX_NEGATIVE_MARGIN)]
                     if self.box_negatives else [])
        clip = _Clip.of_box(a, b, img.shape)
        with torch.inference_mode():
            roi = self.planner.plan(img, center.astype(float), obj.roi, box=(a, b))
            negatives_roi = clicks_in(roi, negatives)
            seed = self._box_seed(roi, a, b, center, clip.plane, negatives_roi) if self.box_search else center
            pts = [(self.predictor.roi_point(roi, seed), 1)] + negatives_roi
            clicks: list = [(seed.astype(float), 1)] + negatives
            clip = replace(clip, seed=seed)
            self._push(obj)
            try:
                obj.points_roi, obj.logits = pts, None
                obj.prompts = obj.prompts + [("box", (tuple(a.tolist()), tuple(b.tolist())))]
                return self._run(obj, roi, clicks, clip=clip)
            except BaseException:
                self._restore(obj, obj.history.pop())
                raise

    def _box_seed(self, roi: Roi, lo: np.ndarray, hi: np.ndarray, center: np.ndarray, plane: int | None,
                  negatives_roi: list) -> np.ndarray:
        """Where the box [lo, hi)'s positive click goes: of :func:`~voxprompt.session.strokes.box_seeds`
        (the centre and a grid around it), the one whose decoded mask fills the box best
        (:func:`~voxprompt.masks.box_fit` in the ROI: on the box's own slice for a one-slice box; the
        centre on ties), then moved to that mask's deepest voxel inside the box (on that slice), where a
        click says most. One decoder call per candidate in the ROI (one shared encoding)."""
        corners = np.stack(np.meshgrid(*zip(lo - 0.5, hi - 0.5), indexing="ij"), -1).reshape(-1, 3)
        r = roi.from_original_index(corners)
        edge = np.asarray(roi.size, dtype=float) - 0.5  # a box larger than the ROI: the part the ROI sees
        lo_r, hi_r = np.clip(r.min(0), -0.5, edge), np.clip(r.max(0), -0.5, edge)
        inside = [slice(int(np.clip(np.ceil(a), 0, n)), int(np.clip(np.floor(b) + 1, 0, n)))
                  for a, b, n in zip(lo_r, hi_r, roi.size)]
        thin = None if plane is None else int(np.argmin(hi_r - lo_r))  # the slice's axis in the ROI
        if thin is not None:
            k = int(np.clip(np.floor((lo_r[thin] + hi_r[thin]) / 2 + 0.5), 0, roi.size[thin] - 1))
            inside[thin] = slice(k, k + 1)
        best: np.ndarray | None = None
        best_fit, tried = 0.0, set()
        for i, q in enumerate(box_seeds(lo, hi, 0 if plane is None else plane)):
            c = np.floor(roi.from_original_index(q.astype(float)) + 0.5)
            if not bool(roi.contains(c)) or tuple(c) in tried:
                continue
            tried.add(tuple(c))
            mask = self._decoded(roi, [(c, 1)] + negatives_roi, None)[3]
            if thin is None:
                fit = box_fit(mask, lo_r, hi_r)
            else:
                fit = box_fit(np.take(mask, k, axis=thin), np.delete(lo_r, thin), np.delete(hi_r, thin))
            if fit > best_fit:
                best, best_fit = mask, fit
            if i == 0 and fit >= BOX_FIT_ENOUGH:
                return center  # the centre's mask is the boxed object: keep the centre click
        if best is None:  # no candidate's mask reaches into the box: the centre
            return center
        part = best[tuple(inside)]
        flat = part if thin is None else np.take(part, 0, axis=thin)
        deep = deepest_voxel(flat)
        if deep is None:
            return center
        deep = deep if thin is None else np.insert(deep, thin, 0)
        at = deep + np.array([sl.start for sl in inside])
        q = np.floor(roi.to_original_index(at.astype(float)) + 0.5).astype(np.int64)
        return np.clip(q, lo, hi - 1)

    def add_mask(self, mask: np.ndarray) -> Prediction:
        """Make ``mask`` (nonzero = object, full image shape) the object's mask and next mask_input."""
        img = self._img()
        m = self._mask_prompt(mask)
        self._settle(cancel=True)
        m = self._protect(m)
        obj = self._obj
        with torch.inference_mode():
            roi, logits = None, None
            if m.any():
                try:
                    roi = roi_for_label(img, m, size=self.img_size, spacing=self.roi_spacing)
                except InputError:
                    roi = None  # too small to survive resampling: keep it without a prior
            if roi is not None:
                logits = self.predictor.prior(m, roi)
            self._push(obj)
            obj.roi, obj.points_roi, obj.logits, obj.score = roi, [], logits, None
            obj.prompts = obj.prompts + [("mask", None)]
            changed = self._commit(obj, None, replace_all=m)
            return self._prediction(obj, changed)

    # ------------------------------------------------------------------ scribbles and lassos
    def add_scribble(self, voxels: Sequence[Sequence[int]] | np.ndarray, positive: bool = True,
                     rule: str | None = None) -> Prediction:
        """A scribble: ``voxels`` ``(N, 3)`` integer array indices (caller's axis order) painted on the object
        (``positive``) or off it, made into clicks by ``rule`` (default :attr:`scribble_rule`; see
        :mod:`voxprompt.session.strokes`, whose ``path_voxels`` rasterises a drawn path). One undo step."""
        vox = stroke_voxels(voxels, self.shape, "scribble")
        return self._stroke("scribble", vox, positive, check_rule("scribble", rule or self.scribble_rule))

    def add_lasso(self, polygon: Sequence[Sequence[float]] | np.ndarray, positive: bool = True,
                  rule: str | None = None) -> Prediction:
        """A lasso: ``polygon`` ``(M, 3)`` vertices (array indices, M >= 3) on one slice, filled
        (:func:`voxprompt.session.strokes.lasso_region`), then :meth:`add_lasso_region`."""
        return self.add_lasso_region(lasso_region(polygon, self.shape), positive, rule)

    def add_lasso_region(self, voxels: Sequence[Sequence[int]] | np.ndarray, positive: bool = True,
                         rule: str | None = None) -> Prediction:
        """A filled lasso: ``voxels`` ``(N, 3)`` integer array indices (usually one slice; what nnInteractive
        clients send) inside (``positive``) or outside the object, made into prompts by ``rule`` (default
        :attr:`lasso_rule`; :mod:`voxprompt.session.strokes`). One undo step."""
        vox = stroke_voxels(voxels, self.shape, "lasso")
        return self._stroke("lasso", vox, positive, check_rule("lasso", rule or self.lasso_rule))

    def _stroke(self, kind: str, vox: np.ndarray, positive: bool, rule: str) -> Prediction:
        """Plan the ROI on the rule's first click, set the mask prompt (lasso rules ``mask`` / ``box``),
        decode the clicks inside the ROI (one step, or one each for ``sequential``) and paste as a click."""
        img = self._img()
        self._settle(cancel=True)
        obj = self._obj
        spacing = img.spacing[::-1]
        clicks = stroke_clicks(kind, vox, bool(positive), rule, spacing, img.shape, self.stroke_points,
                               BOX_NEGATIVE_MARGIN)
        prior = None
        if kind == "lasso" and rule in ("mask", "box"):
            prior = obj.mask.copy()
            cell_mm = self.roi_spacing * self.img_size / self.predictor.low_res_size
            where, block = lasso_slab(vox, img.shape, spacing, cell_mm / 2)
            if positive:
                prior[where] |= block
            else:
                prior[where] &= ~block
            prior = self._protect(prior)
        with torch.inference_mode():
            roi = self.planner.plan(img, np.asarray(clicks[0][0], dtype=float), obj.roi)
            pts = []
            for idx, lab in clicks:
                c = np.floor(roi.from_original_index(np.asarray(idx, dtype=float)) + 0.5)
                if bool(roi.contains(c)):
                    pts.append((self.predictor.roi_point(roi, np.asarray(idx)), lab))
            self._push(obj)
            try:
                if obj.roi is None or roi_key(roi) != roi_key(obj.roi):
                    obj.points_roi, obj.logits = [], None  # new ROI: no earlier clicks, zero mask
                if prior is not None:
                    obj.logits = self.predictor.prior(prior, roi)
                stroke = Stroke(vox, bool(positive), rule, clicks)
                obj.prompts = obj.prompts + [(kind, stroke)]
                if rule == "sequential":
                    for pt in pts[:-1]:  # one decoder step per click, each fed the previous logits
                        obj.points_roi = obj.points_roi + [pt]
                        obj.logits, obj.score = self._decode(roi, obj.points_roi, obj.logits)
                    pts = pts[-1:]
                obj.points_roi = obj.points_roi + pts
                return self._run(obj, roi, _point_clicks(obj.prompts))
            except BaseException:
                self._restore(obj, obj.history.pop())
                raise

    # ------------------------------------------------------------------ saved sessions
    def save(self, path: str | os.PathLike) -> Path:
        """Write the session's state to one file (:mod:`voxprompt.session.saved`; ``.vps`` by convention):
        every object's mask, prompts, ROI, clicks, logits, score and undo history, the current object, the
        locks and ``others_negative``, and the image's identity (size, geometry, a hash of its voxels).
        A pending background refinement is waited for first, so the saved state is final. The image and
        the session's settings (refinement, clean-up, planner) are not saved."""
        from . import saved

        return saved.write_state(path, *self._state())

    def state_bytes(self) -> bytes:
        """What :meth:`save` writes, as bytes (a server's export of a lease)."""
        from . import saved

        return saved.state_bytes(*self._state())

    def _state(self) -> tuple[dict, dict[str, np.ndarray]]:
        from . import saved

        img = self._img()
        self.wait_refined()
        arrays: dict[str, np.ndarray] = {}
        tensors: dict[int, str] = {}  # id(tensor) -> member: a step shares its logits with the object

        def logits(t: torch.Tensor | None) -> dict:
            if t is None:
                return {"logits": None}
            if id(t) not in tensors:
                tensors[id(t)] = f"logits{len(tensors)}"
                a = t.detach().cpu()
                if a.dtype == torch.bfloat16:  # numpy has no bfloat16: keep its bits
                    a = a.view(torch.int16)
                arrays[tensors[id(t)]] = a.numpy()
            return {"logits": tensors[id(t)], "logits_dtype": str(t.dtype).removeprefix("torch.")}

        def state(x: _Object | _VolumeStep) -> dict:
            return {"roi": saved.roi_to_json(x.roi), "points_roi": saved.points_to_json(x.points_roi),
                    "prompts": saved.prompts_to_json(x.prompts, arrays), **logits(x.logits), "score": x.score}

        objects = []
        for oid in sorted(self._objects):
            obj = self._objects[oid]
            arrays[f"o{oid}_mask"] = saved.pack_mask(obj.mask)
            history = []
            for k, step in enumerate(obj.history):
                old = None
                if step.bbox is not None:
                    old = f"o{oid}_h{k}"
                    arrays[old] = saved.pack_mask(step.old_block)
                history.append({**state(step), "bbox": saved.bbox_to_json(step.bbox), "old_block": old})
            objects.append({"id": oid, "mask": f"o{oid}_mask", **state(obj), "history": history})
        from ..version import __version__

        manifest = {"voxprompt": __version__, "image": saved.image_identity(img),
                    "model": {"img_size": self.img_size, "low_res_size": self.predictor.low_res_size,
                              "roi_spacing_mm": self.roi_spacing},
                    "current": self._current, "locked": sorted(self._locked & set(self._objects)),
                    "others_negative": bool(self.others_negative), "objects": objects}
        return manifest, arrays

    def load_state(self, path: str | os.PathLike | bytes, max_bytes: int | None = None) -> None:
        """Put back a state written by :meth:`save` (a file, or its bytes as :meth:`state_bytes` gives
        them); the session's image must be the one it was saved on. ``max_bytes`` bounds what the state
        may unpack to (:class:`~voxprompt.errors.SessionTooLarge`; a server's import).

        Replaces every object, the current object, the locks and ``others_negative``; the next prompt
        and undo then give exactly what they would have given in the saved session. Raises
        :class:`~voxprompt.errors.InputError` naming what differs for another image (or a model with
        another ROI or logits size) and :class:`~voxprompt.errors.SessionFileError` for a file that is
        missing, truncated, corrupt or of an unknown version; on any error the session is unchanged."""
        from . import saved

        img = self._img()
        name = "the uploaded session state" if isinstance(path, (bytes, bytearray)) else str(path)
        manifest, arrays = saved.read_state(path, max_bytes)
        saved.check_image(manifest.get("image"), img, name)
        model = manifest.get("model")
        here = {"img_size": self.img_size, "low_res_size": self.predictor.low_res_size,
                "roi_spacing_mm": self.roi_spacing}
        if not isinstance(model, dict):
            raise SessionFileError(f"{name}: the saved session does not record its model's ROI")
        for key, value in here.items():
            if model.get(key) != value:
                raise InputError(f"{name} was saved with a model of {key} {model.get(key)}; this session's "
                                 f"model has {value}")
        low = self.predictor.low_res_size

        def tensor(a: np.ndarray | None, dtype: str | None) -> torch.Tensor | None:
            if a is None:
                return None
            if a.shape != (1, 1, low, low, low):
                raise SessionFileError(f"{name}: saved logits of shape {a.shape}, the model's are "
                                       f"{(1, 1, low, low, low)}")
            t = torch.from_numpy(a.copy())
            if dtype == "bfloat16":
                t = t.view(torch.bfloat16)
            elif dtype is not None and str(t.dtype).removeprefix("torch.") != dtype:
                raise SessionFileError(f"{name}: saved logits of type {a.dtype}, recorded as {dtype}")
            return t.to(self.device)

        made: dict[int, torch.Tensor] = {}  # one tensor per saved member, shared as when saved

        def fields(d: dict) -> dict:
            key = None if d["logits"] is None else id(d["logits"])
            if key is not None and key not in made:
                made[key] = tensor(d["logits"], d["logits_dtype"])
            return {"roi": d["roi"], "points_roi": d["points_roi"], "prompts": d["prompts"],
                    "logits": None if key is None else made[key], "score": d["score"]}

        objects: dict[int, _Object] = {}
        for d in saved.decode_objects(manifest, arrays, img.shape, name):
            history = [_VolumeStep(**fields(step), bbox=step["bbox"], old_block=step["old_block"])
                       for step in d["history"]]
            objects[d["id"]] = _Object(mask=d["mask"], **fields(d), history=history)
        try:
            current = int(manifest["current"])
            locked = frozenset(int(k) for k in manifest.get("locked", []))
            others_negative = manifest.get("others_negative", False)
        except (KeyError, TypeError, ValueError):
            raise SessionFileError(f"{name}: the saved session's current object or locks are malformed") from None
        if current not in objects or not locked <= set(objects) or not isinstance(others_negative, bool):
            raise SessionFileError(f"{name}: the saved session's current object {current} or locks "
                                   f"{sorted(locked)} name no saved object")
        self._settle(cancel=True)
        self._objects, self._current, self._locked = objects, current, locked
        self.others_negative = others_negative

    @classmethod
    def load(cls, path: str | os.PathLike, model: torch.nn.Module | None, image: ImageLike,
             spacing: Sequence[float] | None = None, affine: np.ndarray | None = None, **kwargs) -> Session:
        """A new ``Session(model, **kwargs)`` on ``image`` with the state saved in ``path`` (see
        :meth:`set_image` and :meth:`load_state`)."""
        session = cls(model, **kwargs)
        session.set_image(image, spacing=spacing, affine=affine)
        session.load_state(path)
        return session

    # ------------------------------------------------------------------ history
    def _restore(self, obj: _Object, step: _VolumeStep) -> Slices | None:
        obj.roi, obj.points_roi, obj.prompts = step.roi, step.points_roi, step.prompts
        obj.logits, obj.score = step.logits, step.score
        if step.bbox is not None:
            unshared_mask(obj)[step.bbox] = step.old_block  # copy-on-write
        return step.bbox

    def undo(self) -> Prediction:
        """Revert the current object's last prompt exactly (mask, prompts, logits)."""
        self._settle(cancel=True)
        changed = self._undo_last()
        return self._prediction(self._obj, changed)

    def reset(self) -> Prediction:
        """Clear the current object (mask, prompts, ROI and undo history)."""
        self._settle(cancel=True)
        changed = self._clear_current()
        return self._prediction(self._obj, changed)


__all__ = ["Session", "Prediction", "from_slicer_ijk", "to_slicer_ijk", "image_from_array"]
