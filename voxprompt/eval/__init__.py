"""Evaluation: metrics, click simulators, the interactive protocol loop and a classical baseline.

The names below load their modules (and scipy) on first use. ``voxprompt.eval.baseline`` needs
scikit-image and is not among them.
"""
from typing import TYPE_CHECKING

from .._lazy import lazy_attributes

if TYPE_CHECKING:
    from .clicks import (
        Box3D,
        Click,
        cvpr25_initial_box,
        cvpr25_next_click,
        jitter_click,
        ritm_click,
        sam_med2d_box,
        sam_med2d_points,
        sam_med3d_random_click,
    )
    from .metrics import auc_trapezoid, dice, hd95, nsd, surface_distances, surface_mask
    from .protocol import PROTOCOLS, ProtocolResult, run_click_protocol

__all__ = [
    "Box3D", "Click", "PROTOCOLS", "ProtocolResult", "auc_trapezoid", "cvpr25_initial_box",
    "cvpr25_next_click", "dice", "hd95", "jitter_click", "nsd", "ritm_click", "run_click_protocol",
    "sam_med2d_box", "sam_med2d_points", "sam_med3d_random_click", "surface_distances",
    "surface_mask",
]

__getattr__, __dir__ = lazy_attributes(__name__, {
    **dict.fromkeys(["Box3D", "Click", "cvpr25_initial_box", "cvpr25_next_click", "jitter_click", "ritm_click",
                     "sam_med2d_box", "sam_med2d_points", "sam_med3d_random_click"], ".clicks"),
    **dict.fromkeys(["auc_trapezoid", "dice", "hd95", "nsd", "surface_distances", "surface_mask"], ".metrics"),
    **dict.fromkeys(["PROTOCOLS", "ProtocolResult", "run_click_protocol"], ".protocol"),
})
