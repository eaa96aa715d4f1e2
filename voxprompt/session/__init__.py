"""Interactive segmentation state around a stateless model: one object mask per prompt history, undo.

* :class:`Session` (:mod:`.volume`): a 3D model on a volume, through its :class:`RoiPredictor`
  (:mod:`.roi_predictor`: embedding cache, decode, paste back) and a :class:`RoiPlanner`
  (:mod:`.planning`; :class:`AutoZoomPlanner` in :mod:`.autozoom` follows large objects).
* :class:`Session2D` (:mod:`.image2d`): a 2D model on an image, through its :class:`Predictor2D`.
* :class:`SliceSession` (:mod:`.slices`): a 2D model on a volume, slice by slice, with
  :mod:`.propagate` carrying a mask to the next slices.
* :mod:`.objects`: objects, undo and the label policy shared by all three; :mod:`.prompts`: prompt
  files; :mod:`.background`: the 3D session's refinement after the fast mask; :mod:`.saved`: its
  saved-session files.

Names load on first use, so ``from voxprompt.session import Session2D`` does not import the 3D parts.
"""
from typing import TYPE_CHECKING

from .._lazy import lazy_attributes

if TYPE_CHECKING:
    from .autozoom import AutoZoomPlanner
    from .image2d import Prediction2D, Predictor2D, Session2D
    from .planning import BasePlanner, BaseStage, CenteredRoiPlanner, Expansion, RoiPlanner
    from .roi_predictor import RoiPredictor, mask_prior_logits, roi_key
    from .slices import SliceSession, VolumePrediction
    from .volume import LOW_CONFIDENCE_IOU, Prediction, Session, from_slicer_ijk, image_from_array, to_slicer_ijk

_EXPORTS = {
    "Session": ".volume", "Prediction": ".volume", "from_slicer_ijk": ".volume", "to_slicer_ijk": ".volume",
    "image_from_array": ".volume", "LOW_CONFIDENCE_IOU": ".volume",
    "RoiPredictor": ".roi_predictor", "mask_prior_logits": ".roi_predictor",
    "RoiPlanner": ".planning", "BasePlanner": ".planning", "CenteredRoiPlanner": ".planning",
    "BaseStage": ".planning", "Expansion": ".planning", "roi_key": ".roi_predictor",
    "AutoZoomPlanner": ".autozoom",
    "Session2D": ".image2d", "Prediction2D": ".image2d", "Predictor2D": ".image2d",
    "SliceSession": ".slices", "VolumePrediction": ".slices",
}
__all__ = [
    "Session", "Prediction", "from_slicer_ijk", "to_slicer_ijk", "image_from_array", "LOW_CONFIDENCE_IOU",
    "RoiPredictor", "mask_prior_logits", "roi_key", "RoiPlanner", "BasePlanner", "CenteredRoiPlanner", "BaseStage",
    "Expansion", "AutoZoomPlanner", "Session2D", "Prediction2D", "Predictor2D", "SliceSession", "VolumePrediction",
]

__getattr__, __dir__ = lazy_attributes(__name__, _EXPORTS)
