"""ROI planning for the 3D session: which model ROI a prompt opens, and what may follow its prediction.

A planner is shared by nothing: the session binds it to its model's ROI (``bind``) and asks it for the
ROI of every prompt (``plan``). ``expand`` may follow the base ROI's prediction with more ROIs
(:class:`~voxprompt.session.autozoom.AutoZoomPlanner`) through the session's
:class:`~voxprompt.session.roi_predictor.RoiPredictor`; it runs only when ``expands`` is true, so a
single-ROI planner costs nothing per click. Subclass :class:`BasePlanner` for the defaults.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np

from ..io.image import Image
from ..masks import Slices
from ..preprocess import Roi, roi_around

if TYPE_CHECKING:
    from .roi_predictor import RoiPredictor

ROI_SPACING_MM = 1.5  # SAM-Med3D's (a model config's ``roi_spacing_mm`` overrides it)

LabeledPoint = tuple[np.ndarray, int]  # a click: (original-array index (z, y, x), label 1 = positive / 0 = negative)
Box = tuple[np.ndarray, np.ndarray]  # [lo, hi) in original-array indices


@dataclass
class BaseStage:
    """The base ROI's prediction, handed to a planner's ``expand``.

    ``mask`` is a private full-size copy of the object's mask with the base prediction pasted in
    (the planner may modify it); ``region`` bounds where it differs from the object's mask.
    """

    roi: Roi
    mask_roi: np.ndarray  # bool roi.size: the base prediction in the ROI
    clicks: list[LabeledPoint]  # the object's clicks in original indices
    mask: np.ndarray
    region: Slices


@dataclass
class Expansion:
    """A multi-ROI result: the object's new full-size ``mask``; ``region`` bounds every change."""

    mask: np.ndarray
    region: Slices
    zooms: tuple[float, ...] = ()  # zoom factors of the zoomed-out ROIs, in order
    tiles: int = 0  # tiles refined at the base spacing


class RoiPlanner(Protocol):
    """Decides the model ROI for a prompt (module docstring)."""

    cache_size: int  # embeddings the session should keep for this planner (0: the session's default)

    @property
    def expands(self) -> bool:
        """Whether :meth:`expand` may add ROIs (the session skips it, and its mask copy, otherwise)."""
        ...

    def bind(self, size: int, spacing: float) -> RoiPlanner:
        """The planner set up for a model's ROI of ``size``^3 voxels at ``spacing`` mm."""
        ...

    def plan(self, image: Image, focus_zyx: np.ndarray, current: Roi | None,
             box: Box | None = None) -> Roi:
        """ROI for a prompt at ``focus_zyx``; returning ``current`` keeps refining in it."""
        ...

    def expand(self, predictor: RoiPredictor, base: BaseStage) -> Expansion | None:
        """Follow the base ROI's prediction with more ROIs; None keeps the base result."""
        ...


class BasePlanner:
    """Defaults of a :class:`RoiPlanner`: bound as it is, one ROI per prompt, the default cache."""

    cache_size: int = 0
    expands: bool = False

    def bind(self, size: int, spacing: float) -> BasePlanner:
        return self

    def plan(self, image: Image, focus_zyx: np.ndarray, current: Roi | None,
             box: Box | None = None) -> Roi:
        raise NotImplementedError

    def expand(self, predictor: RoiPredictor, base: BaseStage) -> Expansion | None:
        return None


@dataclass
class CenteredRoiPlanner(BasePlanner):
    """Official behaviour: keep the current ROI while the click lies in it, else centre on it."""

    size: int = 128
    spacing: float = ROI_SPACING_MM

    def plan(self, image: Image, focus_zyx: np.ndarray, current: Roi | None,
             box: Box | None = None) -> Roi:
        if box is None and current is not None and bool(current.contains(current.from_original_index(focus_zyx))):
            return current
        return roi_around(image, focus_zyx, size=self.size, spacing=self.spacing)
