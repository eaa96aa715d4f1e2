"""Official 2D preprocessing of SAM, SAM-Med2D and SAM-UNet, and the way back.

Every 2D model sees a ``(1, 3, S, S)`` normalised tensor made from an 8-bit, 3-channel image:

* ``sam`` (SAM ViT-B, ``ResizeLongestSide`` + ``Sam.preprocess``): PIL bilinear resize of the
  longest side to S (short side ``int(s * S / L + 0.5)``), ImageNet mean/std on 0..255, zero-pad
  bottom/right to S x S. RGB.
* ``sam-unet`` (``sam_unet.utils.preprocess``): the same at S = 256. RGB (the official dataset
  converts cv2's BGR to RGB).
* ``sam-med2d`` (``TestingDataset`` / ``train_transforms``): ImageNet mean/std on 0..255 *first*,
  then, if both sides are < S, centre zero-padding (0 after normalisation = the mean colour) and
  no resize; otherwise nearest-neighbour resize of each axis to S (aspect not kept,
  ``src = floor(dst * L / S)``). **BGR**: the official loaders feed ``cv2.imread`` output, never
  converted, so the published weights saw BGR channels. ``channel_order="bgr"`` (the default for
  this policy) flips an RGB input to reproduce that; it matters only for colour images.

Prompts are given in original-image pixels ``(x, y)`` (x = column, y = row) and mapped with
:meth:`Frame2D.to_model`; logits come back with :meth:`Frame2D.logits_to_original` (bilinear to
S x S, crop the image's extent, bilinear to the original size), as each official post-processing.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InputError, UsageError

log = logging.getLogger(__name__)

IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)

# CT window presets: name -> (width, level) in HU
WINDOWS: dict[str, tuple[float, float]] = {
    "soft-tissue": (400.0, 40.0),
    "lung": (1500.0, -600.0),
    "bone": (1800.0, 400.0),
    "brain": (80.0, 40.0),
}
Window = tuple[float, float]  # (width, level)


# ----------------------------------------------------------------------------- intensities
def parse_window(text: str | Sequence[float] | None) -> Window | None:
    """A preset name (``soft-tissue``, ``lung``, ``bone``, ``brain``) or ``"W,L"`` -> (width, level)."""
    if text is None:
        return None
    if not isinstance(text, str):
        vals = tuple(float(v) for v in text)
    elif text.strip().lower() in WINDOWS:
        return WINDOWS[text.strip().lower()]
    else:
        try:
            vals = tuple(float(p) for p in text.split(","))
        except ValueError:
            raise UsageError(f"window {text!r}: use a preset ({', '.join(WINDOWS)}) or W,L in HU") from None
    if len(vals) != 2 or not all(math.isfinite(v) for v in vals) or vals[0] <= 0:
        raise UsageError(f"window {text!r}: expected W,L with a positive width W (e.g. 400,40)")
    return vals[0], vals[1]


def intensity_range(array: np.ndarray, window: Window | None = None,
                    percentiles: tuple[float, float] | None = None) -> tuple[float, float]:
    """(low, high) that map to 0 and 255: the window, given percentiles, or min..max."""
    if window is not None:
        w, level = window
        return level - w / 2.0, level + w / 2.0
    a = np.asarray(array, dtype=np.float64)
    if a.size == 0:
        raise InputError("image is empty (0 pixels)")
    lo, hi = (np.percentile(a, percentiles) if percentiles is not None else (a.min(), a.max()))
    return float(lo), float(hi)


def to_uint8(array: np.ndarray, window: Window | None = None,
             value_range: tuple[float, float] | None = None) -> np.ndarray:
    """Map intensities to 0..255 uint8: a CT window, a fixed ``value_range``, or the image's
    min..max. 8-bit input without a window or range is returned unchanged."""
    a = np.asarray(array)
    if a.size == 0:
        raise InputError("image is empty (0 pixels)")
    if a.dtype == np.bool_:
        a = a.astype(np.uint8) * 255
    if not (np.issubdtype(a.dtype, np.number)):
        raise InputError(f"image must be numeric, got dtype {a.dtype}")
    if np.issubdtype(a.dtype, np.floating) and not np.isfinite(a).all():
        raise InputError("image contains NaN or infinite values")
    if a.dtype == np.uint8 and window is None and value_range is None:
        return a
    lo, hi = value_range if value_range is not None else intensity_range(a, window)
    if not hi > lo:
        log.warning("image intensities are constant (%g); it becomes a black image", lo)
        return np.zeros(a.shape, np.uint8)
    scaled = (a.astype(np.float64) - lo) * (255.0 / (hi - lo))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def to_rgb(array: np.ndarray) -> np.ndarray:
    """(H, W), (H, W, 1) or (H, W, 3) -> (H, W, 3) (grey replicated); other layouts are refused."""
    a = np.asarray(array)
    if a.size == 0 or a.ndim < 2 or min(a.shape[:2]) == 0:
        raise InputError(f"image is empty (shape {a.shape})")
    if a.ndim == 2:
        return np.repeat(a[:, :, None], 3, axis=2)
    if a.ndim == 3 and a.shape[2] == 1:
        return np.repeat(a, 3, axis=2)
    if a.ndim == 3 and a.shape[2] == 3:
        return a
    if a.ndim == 3 and a.shape[2] in (2, 4):
        kind = "grey + alpha" if a.shape[2] == 2 else "RGBA / CMYK"
        raise InputError(f"image has {a.shape[2]} channels ({kind}, shape {a.shape}); the 2D models take "
                         "grey or RGB: drop the alpha channel / convert to RGB first")
    if a.ndim == 3 and a.shape[0] in (1, 3) and a.shape[2] not in (1, 3):
        raise InputError(f"image of shape {a.shape} looks channels-first; give (H, W, C)")
    raise InputError(f"image of shape {a.shape} is not 2D grey (H, W) or RGB (H, W, 3)")


def rgb_uint8(array: np.ndarray, window: Window | None = None,
              value_range: tuple[float, float] | None = None) -> np.ndarray:
    """Any 2D grey or RGB array -> (H, W, 3) uint8, the input every 2D policy starts from."""
    return np.ascontiguousarray(to_rgb(to_uint8(array, window, value_range)))


# ----------------------------------------------------------------------------- policies
@dataclass(frozen=True)
class Policy2D:
    """How one 2D model family wants its input, prompts and mask feedback."""

    name: str  # "sam", "sam-med2d", "sam-unet"
    size: int  # S: the model's square input side
    resize: str  # "longest" (resize long side, pad bottom/right) or "square" (each axis to S)
    channel_order: str = "rgb"  # order the model sees: "rgb" or "bgr"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    mask_feedback: str = "logits"  # previous low-res mask as raw "logits" or "sigmoid" probabilities
    multimask: str = "single-point"  # default multimask: "single-point" (SAM), "always", "never"
    pad_small: bool = False  # "square": centre-pad (no resize) when both sides are < S

    def __post_init__(self) -> None:
        if self.resize not in ("longest", "square"):
            raise UsageError(f"resize must be 'longest' or 'square', got {self.resize!r}")
        if self.channel_order not in ("rgb", "bgr"):
            raise UsageError(f"channel_order must be 'rgb' or 'bgr', got {self.channel_order!r}")
        if self.mask_feedback not in ("logits", "sigmoid"):
            raise UsageError(f"mask_feedback must be 'logits' or 'sigmoid', got {self.mask_feedback!r}")
        if self.multimask not in ("single-point", "always", "never"):
            raise UsageError(f"multimask must be 'single-point', 'always' or 'never', got {self.multimask!r}")

    def wants_multimask(self, n_points: int, has_box: bool) -> bool:
        """The official default for a prompt set (SAM: multimask for one point without a box)."""
        if self.multimask == "always":
            return True
        if self.multimask == "never":
            return False
        return n_points == 1 and not has_box

    def feedback(self, low_res_logits: torch.Tensor) -> torch.Tensor:
        """The previous low-res logits as the next ``mask_input`` (SAM-Med2D: sigmoid)."""
        return torch.sigmoid(low_res_logits) if self.mask_feedback == "sigmoid" else low_res_logits


def official_policy(family: str, size: int, channel_order: str | None = None) -> Policy2D:
    """The official policy of a 2D model family (``sam-med2d``, ``sam-unet``, else SAM) at input side ``size``.

    ``channel_order`` overrides the default (``"bgr"`` for SAM-Med2D, ``"rgb"`` otherwise). The family
    of a model object: :func:`voxprompt.models.family.policy_for`.
    """
    if family == "sam-med2d":
        pol = Policy2D("sam-med2d", size, "square", "bgr", mask_feedback="sigmoid", multimask="always",
                       pad_small=True)
    elif family == "sam-unet":
        pol = Policy2D("sam-unet", size, "longest", "rgb", mask_feedback="logits", multimask="never")
    else:
        pol = Policy2D("sam", size, "longest", "rgb")
    return pol if channel_order is None else replace(pol, channel_order=channel_order.lower())


# ----------------------------------------------------------------------------- geometry
def longest_side_shape(h: int, w: int, size: int) -> tuple[int, int]:
    """``ResizeLongestSide.get_preprocess_shape``: (new_h, new_w), long side = ``size``."""
    scale = size * 1.0 / max(h, w)
    return int(h * scale + 0.5), int(w * scale + 0.5)


@dataclass(frozen=True)
class Frame2D:
    """Where an original image sits in the S x S model input.

    A pixel coordinate ``(x, y)`` of the original maps to ``(x * sx + left, y * sy + top)``; the
    image occupies ``[top, top + content_h) x [left, left + content_w)`` of the input.
    """

    original_size: tuple[int, int]  # (H, W)
    size: int  # S
    scale: tuple[float, float]  # (sy, sx)
    offset: tuple[int, int]  # (top, left)
    content: tuple[int, int]  # (content_h, content_w)

    def to_model(self, xy: np.ndarray) -> np.ndarray:
        """Original ``(..., 2)`` (x, y) pixels -> model-input (x, y), float64."""
        p = np.asarray(xy, dtype=np.float64).copy()
        p[..., 0] = p[..., 0] * self.scale[1] + self.offset[1]
        p[..., 1] = p[..., 1] * self.scale[0] + self.offset[0]
        return p

    def box_to_model(self, box_xyxy: np.ndarray) -> np.ndarray:
        """Original ``(..., 4)`` XYXY -> model-input XYXY."""
        b = np.asarray(box_xyxy, dtype=np.float64)
        return self.to_model(b.reshape(*b.shape[:-1], 2, 2)).reshape(b.shape)

    def logits_to_original(self, low_res: torch.Tensor) -> torch.Tensor:
        """``(B, M, L, L)`` low-res logits -> ``(B, M, H, W)``: bilinear to S, crop, bilinear to H x W."""
        x = F.interpolate(low_res.float(), (self.size, self.size), mode="bilinear", align_corners=False)
        (top, left), (ch, cw) = self.offset, self.content
        x = x[..., top:top + ch, left:left + cw]
        if (ch, cw) != tuple(self.original_size):
            x = F.interpolate(x, self.original_size, mode="bilinear", align_corners=False)
        return x

    def mask_to_model(self, mask: np.ndarray) -> np.ndarray:
        """An original-size mask -> the S x S model frame (nearest neighbour, zero outside), uint8."""
        m = np.asarray(mask)
        if m.shape != tuple(self.original_size):
            raise InputError(f"mask shape {m.shape} does not match the image shape {self.original_size}")
        out = np.zeros((self.size, self.size), np.uint8)
        rows = _nearest_index(self.original_size[0], self.content[0])
        cols = _nearest_index(self.original_size[1], self.content[1])
        (top, left), (ch, cw) = self.offset, self.content
        out[top:top + ch, left:left + cw] = (m != 0)[np.ix_(rows, cols)]
        return out


def _nearest_index(src: int, dst: int) -> np.ndarray:
    """Nearest-neighbour source index of each of ``dst`` outputs: ``floor(i * src / dst)``
    (cv2 ``INTER_NEAREST`` and ``F.interpolate(mode='nearest')``)."""
    return (np.arange(dst, dtype=np.int64) * src) // dst


def frame_for(shape: tuple[int, int], policy: Policy2D) -> Frame2D:
    """The geometry of an ``(H, W)`` image under ``policy``."""
    h, w = (int(v) for v in shape)
    if h <= 0 or w <= 0:
        raise InputError(f"image is empty (shape {(h, w)})")
    s = policy.size
    if policy.resize == "longest":
        nh, nw = longest_side_shape(h, w, s)
        return Frame2D((h, w), s, (nh / h, nw / w), (0, 0), (nh, nw))
    if policy.pad_small and h < s and w < s:
        return Frame2D((h, w), s, (1.0, 1.0), ((s - h) // 2, (s - w) // 2), (h, w))
    return Frame2D((h, w), s, (s / h, s / w), (0, 0), (s, s))


# ----------------------------------------------------------------------------- the pipelines
def preprocess_image(rgb: np.ndarray, policy: Policy2D) -> tuple[torch.Tensor, Frame2D]:
    """(H, W, 3) uint8 RGB -> the normalised ``(1, 3, S, S)`` float32 model input and its frame."""
    a = np.asarray(rgb)
    if a.ndim != 3 or a.shape[2] != 3 or a.dtype != np.uint8:
        raise InputError(f"preprocess_image needs (H, W, 3) uint8 RGB, got {a.shape} {a.dtype}; "
                         "use rgb_uint8() first")
    if min(a.shape[:2]) == 0:
        raise InputError(f"image is empty (shape {a.shape})")
    if policy.channel_order == "bgr":
        a = a[..., ::-1]
    frame = frame_for(a.shape[:2], policy)
    if policy.resize == "longest":
        return _preprocess_longest(a, frame, policy), frame
    return _preprocess_square(a, frame, policy), frame


def _preprocess_longest(a: np.ndarray, frame: Frame2D, policy: Policy2D) -> torch.Tensor:
    from PIL import Image as PILImage

    nh, nw = frame.content
    resized = np.asarray(PILImage.fromarray(np.ascontiguousarray(a)).resize((nw, nh), PILImage.BILINEAR))
    x = torch.from_numpy(resized.copy()).permute(2, 0, 1)[None].float()
    mean = torch.tensor(policy.mean, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(policy.std, dtype=torch.float32).view(1, 3, 1, 1)
    x = (x - mean) / std
    return F.pad(x, (0, frame.size - nw, 0, frame.size - nh))


def _preprocess_square(a: np.ndarray, frame: Frame2D, policy: Policy2D) -> torch.Tensor:
    # float32 mean/std as SammedPredictor (the model's buffers); the datasets' float64 lists differ by 1 ulp
    x = (a - np.asarray(policy.mean, dtype=np.float32)) / np.asarray(policy.std, dtype=np.float32)
    s = frame.size
    (top, left), (ch, cw) = frame.offset, frame.content
    out = np.zeros((s, s, 3), np.float32)
    rows = _nearest_index(a.shape[0], ch)
    cols = _nearest_index(a.shape[1], cw)
    out[top:top + ch, left:left + cw] = x[np.ix_(rows, cols)]
    return torch.from_numpy(out).permute(2, 0, 1)[None].float().contiguous()


def mask_prior(mask: np.ndarray, frame: Frame2D, low_res_size: int, policy: Policy2D,
               logit: float = 10.0) -> torch.Tensor:
    """An original-size mask as a ``(1, 1, L, L)`` ``mask_input``: the object fraction of each
    low-res cell as +/- ``logit`` logits, or as a probability for sigmoid feedback."""
    m = torch.from_numpy(frame.mask_to_model(mask).astype(np.float32))[None, None]
    frac = F.avg_pool2d(m, kernel_size=frame.size // low_res_size)
    return frac if policy.mask_feedback == "sigmoid" else (frac * 2 - 1) * logit


__all__ = ["Frame2D", "IMAGENET_MEAN", "IMAGENET_STD", "Policy2D", "WINDOWS", "frame_for", "intensity_range",
           "longest_side_shape", "mask_prior", "parse_window", "official_policy", "preprocess_image", "rgb_uint8",
           "to_rgb", "to_uint8"]
