"""One 3D image's model ROIs: embedding cache, decoder calls and pasting results back; no prompt state.

The 3D twin of :class:`~voxprompt.session.image2d.Predictor2D`: :class:`~voxprompt.session.Session`
keeps the prompts, objects and undo, and a planner's ``expand`` (auto-zoom) decodes further ROIs
through the same predictor, so every ROI of an image shares one embedding cache.
"""
from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import UsageError
from ..io.image import Image
from ..masks import Slices, bbox_of, union_box, within
from ..preprocess import Roi, extract_roi_label, preprocess_roi, roi_block_to_original, roi_box_to_original
from .objects import MASK_PRIOR_LOGIT

log = logging.getLogger(__name__)

EMBEDDING_CACHE_SIZE = 4
COVERAGE_CACHE_SIZE = 8  # ROI footprints on the original grid kept for pasting

# The mirror images of a ROI that a flip ensemble of n runs on: ROI axes (z, y, x) flipped, in order
# (x first: left-right is the body's own near-symmetry; then y, then z).
FLIP_SETS: dict[int, tuple[tuple[int, ...], ...]] = {
    1: ((),),
    2: ((), (2,)),
    4: ((), (2,), (1,), (1, 2)),
    8: ((), (2,), (1,), (1, 2), (0,), (0, 2), (0, 1), (0, 1, 2)),
}

RoiPoints = list[tuple[np.ndarray, int]]  # [(ROI voxel coords (3,), label 1/0)]


def roi_key(roi: Roi) -> tuple:
    """Hashable identity of a ROI within one image: start, size and spacing (zoomed ROIs differ)."""
    return tuple(roi.start), tuple(roi.size), tuple(round(v, 6) for v in roi.spacing)


def clicks_in(roi: Roi, clicks: list) -> RoiPoints:
    """Clicks (original indices, label) that fall in ``roi``, as (ROI voxel coords, label)."""
    out = []
    for p, lab in clicks:
        c = np.floor(roi.from_original_index(np.asarray(p, dtype=float)) + 0.5)
        if bool(roi.contains(c)):
            out.append((c, int(lab)))
    return out


def _flip(x: torch.Tensor, axes: tuple[int, ...]) -> torch.Tensor:
    """``x`` (B, C, Z, Y, X) mirrored along the ROI ``axes`` (0 = z); its own inverse."""
    return torch.flip(x, [2 + a for a in axes]) if axes else x


def _flip_points(points: np.ndarray, axes: tuple[int, ...], size: int) -> np.ndarray:
    """ROI voxel coordinates (N, 3) of the same voxels in the ROI mirrored along ``axes``."""
    out = points.copy()
    for a in axes:
        out[:, a] = size - 1 - out[:, a]
    return out


def mask_prior_logits(label_roi: np.ndarray, low_res_size: int) -> torch.Tensor:
    """A binary ROI label -> +/- ``MASK_PRIOR_LOGIT`` logits averaged down to the low-res grid.

    Returns float32 ``(1, 1, L, L, L)`` on the CPU, the ``mask_input`` of a mask prior.
    """
    lab = torch.from_numpy(np.asarray(label_roi, dtype=np.float32))[None, None]
    frac = F.avg_pool3d(lab, kernel_size=lab.shape[-1] // low_res_size)
    return (frac * 2 - 1) * MASK_PRIOR_LOGIT


def roi_footprint(mask_roi: np.ndarray, roi: Roi, image: Image) -> tuple[Slices | None, np.ndarray]:
    """A ROI mask mapped back onto ``image``'s grid, cropped to what it covers: (bbox, bool block),
    or (None, empty). Only the ROI's sub-block of the image is ever resampled."""
    box, part = roi_block_to_original(mask_roi, roi, image)
    local = None if box is None else bbox_of(part)
    if local is None:
        return None, np.zeros((0, 0, 0), bool)
    return within(box, local), part[local] != 0


def paste_over(mask: np.ndarray, bbox: Slices, cover: np.ndarray, mask_roi: np.ndarray, roi: Roi,
               image: Image) -> np.ndarray:
    """``mask[bbox]`` with ``mask_roi`` mapped back where ``cover`` (the ROI's footprint on ``bbox``, from
    :func:`roi_footprint` of the same ROI and image, or a box within it) is set."""
    _, part = roi_block_to_original(mask_roi, roi, image, box=bbox)
    return np.where(cover, part != 0, mask[bbox])


def changed_part(mask: np.ndarray, bbox: Slices, cover: np.ndarray, mask_roi: np.ndarray, roi: Roi,
                 image: Image, margin: np.ndarray) -> tuple[Slices, np.ndarray]:
    """The part of a ROI's footprint ``(bbox, cover)`` where pasting ``mask_roi`` over ``mask`` can change
    anything: the extent of the ROI's result and of the mask there, widened by ``margin`` voxels per
    axis (what later steps read around a change); the whole footprint when both are empty. Elsewhere
    the footprint is background before and after, so a click on a small object in a large ROI never
    touches the whole footprint."""
    fg = bbox_of(mask_roi)
    new = None if fg is None else roi_box_to_original(roi, [s.start for s in fg], [s.stop for s in fg], image)
    old = bbox_of(mask[bbox])
    both = union_box(new, None if old is None else within(bbox, old))
    if both is None:
        return bbox, cover
    tight = tuple(slice(max(s.start - int(m), b.start), min(s.stop + int(m), b.stop))
                  for s, b, m in zip(both, bbox, margin))
    if any(t.stop <= t.start for t in tight):  # the result maps outside the footprint (it cannot paste)
        return bbox, cover
    return tight, cover[tuple(slice(t.start - b.start, t.stop - b.start) for t, b in zip(tight, bbox))]


def flip_set(n: object) -> tuple[tuple[int, ...], ...]:
    """The ROI axes flipped for each member of a flip ensemble of ``n`` (:data:`FLIP_SETS`)."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or int(n) not in FLIP_SETS:
        raise UsageError(f"flip_ensemble must be one of {sorted(FLIP_SETS)}, got {n!r}")
    return FLIP_SETS[int(n)]


class RoiPredictor:
    """A stateless 3D model applied to ROIs of one image, in the original image's indices.

    ``flip_ensemble`` (1, 2, 4 or 8; None = the weights' stored ``flip_ensemble``): the model runs
    on that many mirror images of each ROI, in one batch, and every decode averages their logits and
    IoU scores mapped back (test-time augmentation; the encoder's cost per new ROI and the decoder's
    per click grow with it, the result is still one low-res logit map)."""

    def __init__(self, model: torch.nn.Module, device: str | torch.device | None = None,
                 cache_size: int = EMBEDDING_CACHE_SIZE, flip_ensemble: int | None = None) -> None:
        self.model = model
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.img_size = int(model.cfg.img_size)
        self.cache_size = int(cache_size)
        self.flips = flip_set(int(model.cfg.flip_ensemble) if flip_ensemble is None else flip_ensemble)
        self.image: Image | None = None
        self._embeddings: dict[tuple, torch.Tensor] = {}  # most recently used last
        self._coverage: dict[tuple, tuple[Slices | None, np.ndarray]] = {}

    @property
    def low_res_size(self) -> int:
        return int(self.model.low_res_size)

    def set_image(self, image: Image) -> None:
        """Predict on ``image`` from now on (drops the caches)."""
        self.image = image
        self._embeddings.clear()
        self._coverage.clear()

    def _img(self) -> Image:
        if self.image is None:
            raise UsageError("no image: call set_image() before prompting")
        return self.image

    # ------------------------------------------------------------------ model
    def embedding(self, roi: Roi) -> torch.Tensor:
        """The image embeddings of ``roi``, one per member of the flip ensemble (batch axis; encoded on
        first use, kept in a small LRU cache)."""
        key = roi_key(roi)
        emb = self._embeddings.pop(key, None)
        if emb is None:
            x = torch.from_numpy(preprocess_roi(self._img(), roi))[None, None].to(self.device)
            emb = self.model.encode(torch.cat([_flip(x, f) for f in self.flips]))
            log.debug("encoded ROI start=%s", roi.start)
        self._embeddings[key] = emb
        while len(self._embeddings) > self.cache_size:
            self._embeddings.pop(next(iter(self._embeddings)))
        return emb

    def decode(self, roi: Roi, points_roi: RoiPoints, logits: torch.Tensor | None,
               multimask: bool = False) -> tuple[torch.Tensor, float]:
        """One decoder call in ``roi``: (raw low-res logits ``(1, 1, *low_res)``, the model's IoU score);
        ``logits``: the prior. ``multimask``: the multimask output with the highest predicted IoU (SAM's
        choice for an ambiguous single click)."""
        emb = self.embedding(roi)
        points = np.stack([p for p, _ in points_roi]).astype(np.float32)
        coords = torch.from_numpy(np.stack([_flip_points(points, f, self.img_size) for f in self.flips]))
        n = len(self.flips)
        labels = torch.tensor([[lab for _, lab in points_roi]] * n, dtype=torch.int64, device=self.device)
        low = self.low_res_size
        if logits is None:
            logits = torch.zeros((1, 1, low, low, low), device=self.device)
        prior = torch.cat([_flip(logits, f) for f in self.flips])
        outs, ious = self.model.decode(emb, points=(coords.to(self.device), labels), mask_input=prior,
                                       multimask=multimask)
        out = torch.stack([_flip(outs[k:k + 1], f) for k, f in enumerate(self.flips)]).mean(0)
        iou = ious.mean(0, keepdim=True)
        best = int(iou[0].argmax())
        return out[:, best:best + 1], float(iou[0, best])

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Low-res logits -> sigmoid of their trilinear upsampling to the ROI (``roi.size``)."""
        up = F.interpolate(logits.float(), size=(self.img_size,) * 3, mode="trilinear", align_corners=False)
        return torch.sigmoid(up)[0, 0]

    def predict(self, roi: Roi, points_roi: RoiPoints,
                logits: torch.Tensor | None) -> tuple[torch.Tensor, float, torch.Tensor]:
        """Decode in ``roi``: (raw low-res logits, IoU score, upsampled probabilities ``roi.size``)."""
        out, score = self.decode(roi, points_roi, logits)
        return out, score, self.probabilities(out)

    def prior(self, mask: np.ndarray, roi: Roi) -> torch.Tensor:
        """A full-size mask resampled into ``roi`` as +/- logits on the low-res grid (a mask prompt's prior)."""
        return self.label_prior(extract_roi_label(self._img(), mask, roi))

    def label_prior(self, label_roi: np.ndarray) -> torch.Tensor:
        """A ROI label as +/- logits on the low-res grid, on the model's device."""
        return mask_prior_logits(label_roi, self.low_res_size).to(self.device)

    def roi_point(self, roi: Roi, index_zyx: np.ndarray) -> np.ndarray:
        """An original index as the nearest voxel of ``roi`` (clipped into it)."""
        c = np.floor(roi.from_original_index(index_zyx.astype(float)) + 0.5)
        return np.clip(c, 0, np.asarray(roi.size) - 1)

    # ------------------------------------------------------------------ original grid
    def coverage(self, roi: Roi, cache: bool = True) -> tuple[Slices | None, np.ndarray]:
        """Image region (bbox, mask inside it) that the ROI maps back onto (small LRU cache)."""
        key = roi_key(roi)
        hit = self._coverage.pop(key, None)
        if hit is None:
            hit = roi_footprint(np.ones(roi.size, np.uint8), roi, self._img())
        if cache:
            self._coverage[key] = hit
            while len(self._coverage) > COVERAGE_CACHE_SIZE:
                self._coverage.pop(next(iter(self._coverage)))
        return hit

    def paste(self, mask: np.ndarray, roi: Roi, mask_roi: np.ndarray, cache: bool = True,
              margin: np.ndarray | None = None) -> tuple[Slices | None, np.ndarray | None]:
        """(bbox, block): ``mask`` with a ROI prediction pasted over the ROI's footprint, on a box that
        bounds every change: the footprint's bbox, or with ``margin`` (voxels per axis) only the part
        of it that can change, widened by ``margin`` (:func:`changed_part`).

        ``cache=False`` for large one-off ROIs (zoomed out), whose footprint is not kept.
        """
        bbox, cover = self.coverage(roi, cache)
        if bbox is None:
            return None, None
        if margin is not None:
            bbox, cover = changed_part(mask, bbox, cover, mask_roi, roi, self._img(), margin)
        return bbox, paste_over(mask, bbox, cover, mask_roi, roi, self._img())

    # ------------------------------------------------------------------ memory
    def cache_bytes(self) -> int:
        """Bytes of the cached image embeddings (re-computable on demand)."""
        return sum(int(e.element_size() * e.nelement()) for e in self._embeddings.values())

    def coverage_bytes(self) -> int:
        return sum(int(m.nbytes) for _, m in self._coverage.values())

    def trim(self, excess: int) -> int:
        """Drop cached embeddings, least recently used first, until ``excess`` bytes are freed, then the
        footprints if that was not enough. Results are unchanged. Returns bytes freed."""
        freed = 0
        while excess > 0 and self._embeddings:
            emb = self._embeddings.pop(next(iter(self._embeddings)))
            n = int(emb.element_size() * emb.nelement())
            freed += n
            excess -= n
        if excess > 0 and self._coverage:
            freed += self.coverage_bytes()
            self._coverage.clear()
        return freed
