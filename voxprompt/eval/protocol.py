"""Engine-agnostic interactive evaluation loop (CVPR 2025 and SAM-Med3D click protocols).

The engine is any callable ``predict_fn(clicks, box) -> mask``: ``clicks`` is the list of all
:class:`~voxprompt.eval.clicks.Click` so far (oldest first), ``box`` a
:class:`~voxprompt.eval.clicks.Box3D` or None; the mask must have the GT's shape. Engines that
follow SAM-Med3D's "newest click only" habit just use ``clicks[-1]``. One binary target per
run: loop over classes outside (the CVPR scorer averages the per-class values).
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from voxprompt.errors import InputError, UsageError
from voxprompt.eval import clicks as C
from voxprompt.eval.metrics import as_mask, auc_trapezoid, dice, nsd

logger = logging.getLogger(__name__)

__all__ = ["PROTOCOLS", "ProtocolResult", "run_click_protocol"]

PredictFn = Callable[[list[C.Click], "C.Box3D | None"], object]

PROTOCOLS = ("cvpr25", "sam-med3d", "sam-med3d-ritm")
_NSD_TOLERANCE_MM = {"cvpr25": 2.0, "sam-med3d": 1.0, "sam-med3d-ritm": 1.0}
_CVPR25_NSD_MIN_DICE = 0.2  # the scorer sets NSD to 0 when DSC <= 0.2


@dataclass
class ProtocolResult:
    """Per-step metrics of one run.

    For ``cvpr25`` step 0 is the box step (0.0 when run without a box, as the scorer records);
    steps 1..n follow the clicks. For the SAM-Med3D protocols step k is after click k+1.
    """

    protocol: str
    n_clicks: int
    clicks: list[C.Click]
    dice: list[float]
    nsd: list[float]
    box: C.Box3D | None = None
    masks: list[np.ndarray] = field(default_factory=list)

    @property
    def click_dice(self) -> list[float]:
        """Dice after each click (the box step excluded)."""
        return self.dice[-self.n_clicks:]

    @property
    def click_nsd(self) -> list[float]:
        """NSD after each click (the box step excluded)."""
        return self.nsd[-self.n_clicks:]

    @property
    def dsc_auc(self) -> float:
        """Trapezoid AUC of Dice over the click steps (CVPR25: 5 clicks -> max 4.0; needs >= 2)."""
        return auc_trapezoid(self.click_dice)

    @property
    def nsd_auc(self) -> float:
        """Trapezoid AUC of NSD over the click steps."""
        return auc_trapezoid(self.click_nsd)

    @property
    def final_dice(self) -> float:
        return self.dice[-1]

    @property
    def final_nsd(self) -> float:
        return self.nsd[-1]

    @property
    def best_dice(self) -> float:
        """Maximum Dice over the click steps (what SAM-Med3D's ``val_old.py`` reports)."""
        return max(self.click_dice)


def _check_pred(pred: object, shape: tuple[int, ...]) -> np.ndarray:
    m = as_mask(pred, "predict_fn output")
    if m.shape != shape:
        raise InputError(f"predict_fn returned shape {m.shape}, expected the GT shape {shape}")
    return m


def run_click_protocol(
    predict_fn: PredictFn,
    gt: object,
    protocol: str = "cvpr25",
    n_clicks: int = 5,
    rng: np.random.Generator | None = None,
    spacing: Sequence[float] | None = None,
    *,
    use_box: bool = True,
    tolerance_mm: float | None = None,
    keep_masks: bool = False,
) -> ProtocolResult:
    """Simulate ``n_clicks`` rounds of clicks and score each prediction.

    ``cvpr25``: optional box step (``use_box``), then clicks at the centre of the largest error
    component (voxel-unit EDT, as the scorer), NSD at 2 mm set to 0 when Dice <= 0.2. If a
    prediction is perfect, no click is added and the previous prediction is reused.
    ``sam-med3d``: uniform first click in the GT, then uniform clicks in FN ∪ FP; NSD at 1 mm.
    ``sam-med3d-ritm``: RITM clicks for clicks 1-2, then "random" (as ``val_old.py``).
    ``spacing`` (mm per array axis) is used for NSD; ``rng`` is required by the SAM-Med3D
    protocols. ``tolerance_mm`` overrides the protocol's NSD tolerance.
    """
    if protocol not in PROTOCOLS:
        raise UsageError(f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
    if not isinstance(n_clicks, (int, np.integer)) or n_clicks < 1:
        raise UsageError(f"n_clicks must be a positive integer, got {n_clicks!r}")
    if protocol != "cvpr25" and rng is None:
        raise UsageError(f"protocol {protocol!r} samples clicks at random: pass rng")
    g = as_mask(gt, "gt")
    if not g.any():
        raise InputError("the ground truth is empty: nothing to segment")
    tol = _NSD_TOLERANCE_MM[protocol] if tolerance_mm is None else float(tolerance_mm)
    result = ProtocolResult(protocol, int(n_clicks), [], [], [])

    def score(pred: np.ndarray) -> None:
        d = dice(pred, g)
        if protocol == "cvpr25" and d <= _CVPR25_NSD_MIN_DICE:
            s = 0.0
        else:
            s = nsd(pred, g, spacing, tol)
        result.dice.append(d)
        result.nsd.append(s)
        if keep_masks:
            result.masks.append(pred)

    prev = np.zeros_like(g)
    if protocol == "cvpr25":
        if use_box:
            result.box = C.cvpr25_initial_box(g)
            prev = _check_pred(predict_fn([], result.box), g.shape)
            score(prev)
        else:
            result.dice.append(0.0)
            result.nsd.append(0.0)
    for step in range(n_clicks):
        if protocol == "cvpr25":
            click = C.cvpr25_next_click(prev, g)
        elif protocol == "sam-med3d-ritm" and step < 2:
            click = C.ritm_click(prev, g, rng)
        else:
            click = C.sam_med3d_random_click(prev, g, rng)
        if click is None:
            logger.debug("step %d: prediction is perfect, no click added", step + 1)
            score(prev)
            continue
        result.clicks.append(click)
        prev = _check_pred(predict_fn(list(result.clicks), result.box), g.shape)
        score(prev)
        logger.debug("step %d: click %s -> Dice %.4f", step + 1, click, result.dice[-1])
    return result
