"""2D models on volumes: slices along one axis, encoded on demand, and slice-to-slice propagation.

A volume (numpy array, any axis order) is cut along ``axis``; a slice's rows and columns are the
two remaining array axes in order (axis 0 of a (z, y, x) array: rows = y, columns = x). Every
slice is mapped to 0..255 with **one** intensity range for the whole volume (a CT window, or the
volume's 0.5-99.5 percentiles), so neighbouring slices look alike to the model.

Propagation: from a slice whose mask is known, each next slice is prompted by the previous
slice's mask (the box of its largest connected component by default, as SAM-Med2D draws boxes;
or a positive point at its deepest pixel) and decoded with the model's official policy. It stops
when the mask vanishes (fewer than ``min_area`` pixels), the predicted IoU falls below
``min_score`` (models without a score: never), or at the range limit / a slice it may not claim.
"""
from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import InputError, UsageError
from ..masks import deepest_voxel, largest_component
from ..models.family import policy_for
from ..preprocess.image2d import Policy2D, Window, intensity_range, rgb_uint8
from .image2d import Decoded, Predictor2D

log = logging.getLogger(__name__)

PROMPTS = ("box", "point", "box+point")
EMBEDDING_CACHE_BYTES = 1 << 30


@dataclass(frozen=True)
class PropagationConfig:
    """How one slice's mask prompts the next."""

    prompt: str = "box"  # "box", "point" (positive at the deepest pixel) or "box+point"
    box_margin: int = 0  # pixels added on each side of the box (clipped to the slice)
    min_area: int = 1  # stop when the new mask has fewer pixels
    min_score: float | None = 0.5  # stop when the predicted IoU is below (None: never)
    mask_prior: bool = False  # also feed the previous slice's low-res mask as mask_input
    max_slices: int | None = None  # per direction

    def __post_init__(self) -> None:
        if self.prompt not in PROMPTS:
            raise UsageError(f"propagation prompt must be one of {PROMPTS}, got {self.prompt!r}")
        if self.box_margin < 0 or self.min_area < 1:
            raise UsageError("box_margin must be >= 0 and min_area >= 1")
        if self.max_slices is not None and self.max_slices < 0:
            raise UsageError(f"max_slices must be >= 0, got {self.max_slices}")


# ----------------------------------------------------------------------------- slices
def take_slice(volume: np.ndarray, axis: int, index: int) -> np.ndarray:
    """The 2D slice ``index`` along ``axis`` (a view; rows/columns = the other axes in order)."""
    return np.take(volume, index, axis=axis) if axis else volume[index]


def slice_region(axis: int, index: int) -> tuple:
    """Index expression of slice ``index`` along ``axis`` of a 3D array."""
    sl: list = [slice(None)] * 3
    sl[axis] = index
    return tuple(sl)


def inplane(index_3d: tuple, axis: int) -> tuple[int, int]:
    """(row, col) of a 3D array index in the slice along ``axis``."""
    rest = [int(v) for a, v in enumerate(index_3d) if a != axis]
    return rest[0], rest[1]


class SliceStack:
    """A scalar volume seen as 8-bit RGB slices along ``axis`` (one intensity range for all)."""

    def __init__(self, volume: np.ndarray, axis: int = 0, window: Window | None = None,
                 value_range: tuple[float, float] | None = None) -> None:
        v = np.asarray(volume)
        if v.ndim != 3 or v.size == 0:
            raise InputError(f"volume must be a non-empty 3D array, got shape {v.shape}")
        if axis not in (0, 1, 2):
            raise UsageError(f"slice axis must be 0, 1 or 2, got {axis!r}")
        if np.issubdtype(v.dtype, np.floating) and not np.isfinite(v).all():
            raise InputError("volume contains NaN or infinite values")
        self.volume, self.axis = v, axis
        if value_range is None:
            sample = v.reshape(-1)[:: max(1, v.size // 2_000_000)]
            value_range = intensity_range(sample, window, None if window else (0.5, 99.5))
        self.value_range = (float(value_range[0]), float(value_range[1]))

    def __len__(self) -> int:
        return int(self.volume.shape[self.axis])

    @property
    def slice_shape(self) -> tuple[int, int]:
        s = [n for a, n in enumerate(self.volume.shape) if a != self.axis]
        return int(s[0]), int(s[1])

    def rgb(self, index: int) -> np.ndarray:
        return rgb_uint8(take_slice(self.volume, self.axis, index), value_range=self.value_range)


class SliceEncoder:
    """Predictors for the slices of a :class:`SliceStack`, encoded on demand (LRU by bytes)."""

    def __init__(self, model: torch.nn.Module, stack: SliceStack, policy: Policy2D | None = None,
                 device: str | torch.device | None = None, cache_bytes: int = EMBEDDING_CACHE_BYTES) -> None:
        self.model, self.stack = model, stack
        self.policy = policy or policy_for(model)
        self.device = device
        self.cache_bytes = cache_bytes
        self._cache: OrderedDict[int, Predictor2D] = OrderedDict()
        self.encoded = 0  # encoder calls so far

    def __call__(self, index: int) -> Predictor2D:
        if not 0 <= index < len(self.stack):
            raise UsageError(f"slice {index} is outside 0..{len(self.stack) - 1}")
        pred = self._cache.pop(index, None)
        if pred is None:
            pred = Predictor2D(self.model, self.policy, self.device)
            pred.set_image(self.stack.rgb(index))
            self.encoded += 1
        self._cache[index] = pred
        per = _nbytes(pred.embedding)
        while len(self._cache) > 1 and per * len(self._cache) > self.cache_bytes:
            self._cache.popitem(last=False)
        return pred


def _nbytes(emb: torch.Tensor | dict | None) -> int:
    if emb is None:
        return 0
    if isinstance(emb, dict):
        return sum(t.numel() * t.element_size() for t in emb.values())
    return emb.numel() * emb.element_size()


# ----------------------------------------------------------------------------- prompts from masks
def box_of(mask: np.ndarray, margin: int = 0) -> tuple[int, int, int, int]:
    """XYXY box (max exclusive) of the largest component, grown by ``margin`` and clipped."""
    comp = largest_component(mask)
    rows, cols = np.flatnonzero(comp.any(axis=1)), np.flatnonzero(comp.any(axis=0))
    h, w = mask.shape
    return (max(0, int(cols[0]) - margin), max(0, int(rows[0]) - margin),
            min(w, int(cols[-1]) + 1 + margin), min(h, int(rows[-1]) + 1 + margin))


def deepest_point(mask: np.ndarray) -> tuple[int, int]:
    """(x, y) of the largest component's pixel farthest from its border (first in raster order)."""
    r, c = deepest_voxel(largest_component(mask))
    return int(c), int(r)


def prompts_from_mask(mask: np.ndarray, config: PropagationConfig) -> tuple[tuple | None, tuple | None]:
    """(points, box) for the next slice: points = ((1, 2) xy, (1,) labels) or None, box XYXY or None."""
    box = box_of(mask, config.box_margin) if "box" in config.prompt else None
    points = None
    if "point" in config.prompt:
        points = (np.asarray([deepest_point(mask)], np.float64), np.asarray([1]))
    return points, box


# ----------------------------------------------------------------------------- propagation
@dataclass
class SliceResult:
    mask: np.ndarray  # (H, W) bool
    score: float | None
    low_res: torch.Tensor  # (1, 1, L, L) raw logits


@dataclass
class PropagationResult:
    """Masks of the propagated slices (not the start slice) and why each direction stopped."""

    slices: dict = field(default_factory=dict)  # index -> SliceResult
    stopped: dict = field(default_factory=dict)  # +1 / -1 -> reason

    def masks(self) -> dict:
        return {i: r.mask for i, r in self.slices.items()}


def decode_slice(predictor: Predictor2D, mask: np.ndarray, prev_low: torch.Tensor | None,
                 config: PropagationConfig) -> tuple[np.ndarray, Decoded]:
    """Prompt one slice from the neighbour's mask; returns (mask, decoder output)."""
    points, box = prompts_from_mask(mask, config)
    feed = None
    if config.mask_prior and prev_low is not None:
        feed = predictor.policy.feedback(prev_low)
    decoded = predictor.predict(points, None if box is None else np.asarray(box, np.float64), feed)
    logits = predictor.to_original(decoded.best)[0]
    return (logits > 0).numpy(), decoded


def propagate(encoder: SliceEncoder, start: int, mask: np.ndarray, config: PropagationConfig = PropagationConfig(),
              low_res: torch.Tensor | None = None, limits: tuple[int, int] | None = None,
              may_claim: Callable[[int], bool] | None = None) -> PropagationResult:
    """Propagate ``mask`` (the start slice's) to both sides of slice ``start``.

    ``limits`` = [lo, hi) slice range (default: the whole volume); ``may_claim(i)`` False stops the
    propagation before slice ``i`` (e.g. a slice the user prompted).
    """
    lo, hi = limits if limits is not None else (0, len(encoder.stack))
    out = PropagationResult()
    m0 = np.asarray(mask, bool)
    if m0.shape != encoder.stack.slice_shape:
        raise InputError(f"start mask shape {m0.shape} differs from the slice shape {encoder.stack.slice_shape}")
    for step in (1, -1):
        prev, prev_low, i, done = m0, low_res, start + step, 0
        reason = "range"
        while lo <= i < hi:
            if config.max_slices is not None and done >= config.max_slices:
                reason = "max_slices"
                break
            if prev.sum() < config.min_area:
                reason = "vanished"
                break
            if may_claim is not None and not may_claim(i):
                reason = "claimed"
                break
            new, decoded = decode_slice(encoder(i), prev, prev_low, config)
            score = decoded.score
            if int(new.sum()) < config.min_area:
                reason = "vanished"
                break
            if config.min_score is not None and score is not None and score < config.min_score:
                reason = f"score {score:.3f} < {config.min_score:g}"
                break
            out.slices[i] = SliceResult(new, score, decoded.best)
            prev, prev_low, i, done = new, decoded.best, i + step, done + 1
        out.stopped[step] = reason
        log.debug("propagation from slice %d, direction %+d: %d slice(s), stopped: %s", start, step, done, reason)
    return out


__all__ = ["PROMPTS", "PropagationConfig", "PropagationResult", "SliceEncoder", "SliceResult", "SliceStack",
           "box_of", "decode_slice", "deepest_point", "inplane", "prompts_from_mask",
           "propagate", "slice_region", "take_slice"]
