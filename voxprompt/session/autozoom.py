"""Auto-zoom ROI planning: follow objects larger than the model's window (after nnInteractive).

Use ``Session(model, planner=AutoZoomPlanner())``; the planner takes the model's ROI size and
spacing from the session. One ``add_point`` / ``add_box`` call runs:

1. **Base.** Predict in the official ROI (``size``^3 voxels at the model's spacing, centred on
   the click), exactly as :class:`~voxprompt.session.CenteredRoiPlanner`. A prediction that does
   not touch the ROI's border ends here: the result equals the official one.
2. **Zoom out.** While the prediction touches a ROI face that lies inside the image (faces in the
   zero padding beyond the image, or on its edge, do not count) and ``max_iterations`` allow:
   re-centre on the prediction's bounding box and open a ROI of the same voxel size at spacing
   ``spacing * f``, ``f`` the smallest of ``zoom_factors`` above the current one (at most
   ``max_zoom``) whose window holds the box plus ``margin`` x the current window on every side
   (the largest allowed one if none does). It is decoded with every click of the object that
   falls in it (plus a positive click at the mask's deepest voxel when none of them is positive)
   and the current mask resampled into it as the prior (+/- logits averaged onto the low-res
   grid, as ``add_mask`` does); its prediction replaces the mask over its footprint.
3. **Refine.** After a zoom-out, the coarse mask is re-predicted at the base spacing in tiles: a
   lattice of ``size``^3 ROIs on the base grid, overlapping by ``tile_overlap`` and anchored at
   the grid origin (the same tiles recur across clicks, so their embeddings stay cached). A tile
   runs when its core (the part of its window closer to it than to any other tile) holds a voxel
   within ``refine_margin`` coarse voxels of the coarse mask's boundary. Each tile is decoded with
   the clicks inside it, plus a positive click at the coarse voxel farthest from the coarse
   boundary (exact EDT) when none of those is positive, and the coarse mask as the prior. Tile
   probabilities are averaged where tiles overlap, thresholded at 0.5, restricted to the coarse
   mask dilated by ``refine_margin`` coarse voxels, and mapped to the original grid by nearest
   neighbour like every ROI result; voxels outside every tile keep the coarse mask.

The session commits the result as one undo step and reports the base ROI's probabilities and
score; ``Prediction.zooms`` / ``Prediction.tiles`` say what else ran. After a zoom the object's
mask prior in the base ROI is the mask shown (not the cut-off logits), so the next click in that
ROI corrects what the user sees.
"""
from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from scipy import ndimage

from ..errors import UsageError
from ..io.image import Image, apply_affine
from ..masks import Slices, bbox_of, deepest_voxel, union_box
from ..preprocess import Roi, extract_roi_label, roi_around
from .planning import BasePlanner, BaseStage, Box, CenteredRoiPlanner, Expansion
from .roi_predictor import RoiPredictor, clicks_in, paste_over, roi_footprint

log = logging.getLogger(__name__)

_CORNERS = np.array([[a, b, c] for a in (0, 1) for b in (0, 1) for c in (0, 1)], dtype=float)


# ----------------------------------------------------------------------------- helpers
def touches_border(mask_roi: np.ndarray, roi: Roi, border: int = 1) -> bool:
    """Whether a ROI mask reaches a face of the ROI beyond which the image goes on.

    A face counts when the resampled grid extends past it (``start > 0`` on the low side,
    ``start + size < grid_shape`` on the high side): faces in padding or on the image edge do not.
    ``border``: how many outer voxel layers count as the face.
    """
    m = np.asarray(mask_roi, dtype=bool)
    start, size, grid = (np.asarray(v) for v in (roi.start, roi.size, roi.grid_shape))
    b = max(1, int(border))
    for ax in range(3):
        idx: list = [slice(None)] * 3
        if start[ax] > 0:
            idx[ax] = slice(0, b)
            if m[tuple(idx)].any():
                return True
        if start[ax] + size[ax] < grid[ax]:
            idx[ax] = slice(int(size[ax]) - b, int(size[ax]))
            if m[tuple(idx)].any():
                return True
    return False


def _cores_hit(band: np.ndarray, origin: np.ndarray, size: np.ndarray, step: np.ndarray) -> np.ndarray:
    """Lattice indices k (N, 3) of the tiles [k*step, k*step + size) whose core holds a ``band`` voxel.

    ``band`` covers grid voxels ``origin + index``; tile k's core is the middle ``step`` voxels of
    its window, so the cores partition the grid. Reduces ``band`` block-wise, one axis at a time.
    """
    hit, ks = band, []
    for ax in range(3):
        g = np.arange(band.shape[ax]) + origin[ax]
        k = np.floor_divide(2 * g - (size[ax] - step[ax]), 2 * step[ax])  # non-decreasing along g
        starts = np.flatnonzero(np.r_[True, np.diff(k) != 0])
        hit = np.logical_or.reduceat(hit, starts, axis=ax)
        ks.append(k[starts])
    idx = np.argwhere(hit)
    return np.stack([ks[a][idx[:, a]] for a in range(3)], axis=1)


def _bbox_lohi(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    sl = bbox_of(np.asarray(mask, dtype=bool))
    return np.array([s.start for s in sl]), np.array([s.stop for s in sl])


# ----------------------------------------------------------------------------- the planner
@dataclass
class AutoZoomPlanner(BasePlanner):
    """Base ROI as the official planner, then zoom out and refine in tiles (module docstring).

    ``size``/``spacing`` default to the model's (set by the Session). ``max_tiles``: refine at
    most this many tiles (more: keep the coarse mask, with a warning); None = no limit.
    """

    size: int | None = None
    spacing: float | None = None
    zoom_factors: tuple[float, ...] = (1.5, 2.0, 3.0, 4.0)
    max_zoom: float = 4.0
    max_iterations: int = 3
    margin: float = 0.25  # x the current window, added on every side of the mask's bbox
    border: int = 1  # outer ROI voxel layers that count as touching a face
    refine: bool = True
    tile_overlap: float = 0.25
    refine_margin: float = 2.0  # coarse voxels around the coarse boundary refined at the base spacing
    max_tiles: int | None = None
    cache_size: int = 256  # embeddings the session keeps (all tiles of a click; 768 KB each for SAM-Med3D)
    expands: ClassVar[bool] = True

    def __post_init__(self) -> None:
        try:
            factors = tuple(sorted({float(f) for f in self.zoom_factors}))
        except (TypeError, ValueError):
            raise UsageError(f"zoom_factors must be numbers, got {self.zoom_factors!r}") from None
        if not factors or not all(math.isfinite(f) and f > 1 for f in factors):
            raise UsageError(f"zoom_factors must be finite numbers > 1, got {self.zoom_factors!r}")
        self.zoom_factors = factors
        checks = [
            (math.isfinite(self.max_zoom) and self.max_zoom >= 1, f"max_zoom must be >= 1, got {self.max_zoom}"),
            (int(self.max_iterations) >= 0, f"max_iterations must be >= 0, got {self.max_iterations}"),
            (self.margin >= 0, f"margin must be >= 0, got {self.margin}"),
            (int(self.border) >= 1, f"border must be >= 1 voxel, got {self.border}"),
            (0 <= self.tile_overlap < 1, f"tile_overlap must be in [0, 1), got {self.tile_overlap}"),
            (self.refine_margin >= 0, f"refine_margin must be >= 0, got {self.refine_margin}"),
            (self.max_tiles is None or int(self.max_tiles) >= 1, f"max_tiles must be >= 1, got {self.max_tiles}"),
        ]
        for ok, msg in checks:
            if not ok:
                raise UsageError(msg)

    # ------------------------------------------------------------------ RoiPlanner
    def bind(self, size: int, spacing: float) -> AutoZoomPlanner:
        """A copy set up for a model's ROI (``size``^3 voxels at ``spacing`` mm)."""
        if (self.size is not None and int(self.size) != int(size)) or (
                self.spacing is not None and not math.isclose(float(self.spacing), float(spacing))):
            raise UsageError(f"AutoZoomPlanner ROI {self.size}^3 at {self.spacing} mm does not match the "
                             f"model's {size}^3 at {spacing} mm; leave size/spacing unset")
        return dataclasses.replace(self, size=int(size), spacing=float(spacing))

    def plan(self, image: Image, focus_zyx: np.ndarray, current: Roi | None,
             box: Box | None = None) -> Roi:
        """The base ROI: the official one."""
        if self.size is None or self.spacing is None:
            raise UsageError("AutoZoomPlanner has no ROI size: pass it to Session(model, planner=...)")
        return CenteredRoiPlanner(self.size, self.spacing).plan(image, focus_zyx, current, box)

    def expand(self, predictor: RoiPredictor, base: BaseStage) -> Expansion | None:
        """Zoom out while the prediction touches the border, then refine; None when no zoom was needed."""
        image = predictor.image
        mask, region = base.mask, base.region
        roi, mask_roi, f = base.roi, base.mask_roi, 1.0
        zooms: list[float] = []
        for _ in range(int(self.max_iterations)):
            if not touches_border(mask_roi, roi, self.border):
                break
            nxt = self._zoom_roi(image, roi, mask_roi, f)
            if nxt is None:
                break
            label = extract_roi_label(image, mask, nxt[0])
            points = clicks_in(nxt[0], base.clicks)
            if not any(lab for _, lab in points):
                deep = deepest_voxel(label)
                if deep is None:
                    break
                points.append((deep.astype(float), 1))
            roi, f = nxt
            _, _, prob = predictor.predict(roi, points, predictor.label_prior(label))
            mask_roi = (prob > 0.5).cpu().numpy()
            bbox, block = predictor.paste(mask, roi, mask_roi, cache=False)
            if bbox is not None:
                mask[bbox] = block
                region = union_box(region, bbox)
            zooms.append(f)
        if not zooms:
            return None
        tiles = 0
        if self.refine and mask_roi.any():
            tiles, bbox = self._refine(predictor, base.roi, roi, mask_roi, f, mask, base.clicks)
            region = union_box(region, bbox)
        log.info("auto-zoom: zoomed out x%s, refined %d tile(s)", "/".join(f"{z:g}" for z in zooms), tiles)
        return Expansion(mask=mask, region=region, zooms=tuple(zooms), tiles=tiles)

    # ------------------------------------------------------------------ steps
    def _zoom_roi(self, image: Image, roi: Roi, mask_roi: np.ndarray, f: float) -> tuple[Roi, float] | None:
        """The next zoomed-out ROI around the mask's bbox and its factor, or None when none is left."""
        options = [z for z in self.zoom_factors if f < z <= self.max_zoom + 1e-9]
        if not options:
            return None
        lo, hi = _bbox_lohi(mask_roi)
        size = np.asarray(roi.size, dtype=float)
        spacing = roi.spacing[0]
        need_mm = (hi - lo) * spacing + 2 * self.margin * size * spacing
        need = float(np.max(need_mm / (size * self.spacing)))
        z = next((z for z in options if z >= need - 1e-6), options[-1])
        centre = roi.to_original_index((lo + hi - 1) / 2.0)
        return roi_around(image, centre, size=self.size, spacing=self.spacing * z), z

    def _refine(self, predictor: RoiPredictor, base_roi: Roi, coarse_roi: Roi, coarse_mask_roi: np.ndarray, f: float,
                mask: np.ndarray, clicks: list) -> tuple[int, Slices | None]:
        """Re-predict the coarse mask's boundary band in base-spacing tiles; updates ``mask`` in place."""
        image = predictor.image
        size = np.asarray(base_roi.size)
        step = np.maximum(1, np.round(size * (1 - self.tile_overlap)).astype(int))
        grid = np.asarray(base_roi.grid_shape)
        margin = self.refine_margin * f  # in base voxels
        pad = int(math.ceil(margin)) + 1

        # the coarse prediction's bbox on the base grid, padded: the refinement box [glo, ghi)
        lo, hi = _bbox_lohi(coarse_mask_roi)
        corners = (lo - 0.5) + _CORNERS * (hi - lo)
        g = apply_affine(np.linalg.inv(base_roi.grid_affine), coarse_roi.roi_to_world(corners))
        glo = np.maximum(np.floor(g.min(axis=0)).astype(int) - pad, 0)
        ghi = np.minimum(np.ceil(g.max(axis=0)).astype(int) + pad, grid)
        if np.any(ghi <= glo):
            return 0, None
        k_min = np.floor_divide(glo - size, step) + 1  # tiles [k*step, k*step + size) meeting the box
        k_max = np.floor_divide(ghi - 1, step)
        clo, chi = k_min * step, k_max * step + size
        canvas = dataclasses.replace(base_roi, start=tuple(int(v) for v in clo), size=tuple(int(v) for v in chi - clo))
        coarse = extract_roi_label(image, mask, canvas).astype(bool)

        box = tuple(slice(int(a), int(b)) for a, b in zip(glo - clo, ghi - clo))
        inside = coarse[box]
        if not inside.any():
            return 0, None
        # exact EDT to the coarse boundary (its inner voxel layer; the box edge counts as outside)
        surface = inside & ~ndimage.binary_erosion(inside, border_value=0)
        dist = ndimage.distance_transform_edt(~surface).astype(np.float32)
        band = dist <= margin
        allowed = coarse.copy()
        allowed[box] |= band  # the coarse mask dilated by the margin
        chosen = _cores_hit(band, glo, size, step)
        if self.max_tiles is not None and len(chosen) > int(self.max_tiles):
            log.warning("auto-zoom: %d tiles needed, above max_tiles=%d; keeping the coarse mask",
                        len(chosen), self.max_tiles)
            return 0, None

        depth = np.zeros(coarse.shape, np.float32)  # distance to the boundary inside the coarse mask
        depth[box] = np.where(inside, dist + 1, 0)
        acc = np.zeros(coarse.shape, np.float32)
        cnt = np.zeros(coarse.shape, np.uint8)
        done = 0
        for kk in chosen:
            tile = dataclasses.replace(base_roi, start=tuple(int(v) for v in kk * step))
            t0 = kk * step - clo
            sl = tuple(slice(int(a), int(a + s)) for a, s in zip(t0, size))
            points = clicks_in(tile, clicks)
            if not any(lab for _, lab in points):
                d = depth[sl]
                if d.max() > 0:
                    points.append((np.asarray(np.unravel_index(int(np.argmax(d)), d.shape), dtype=float), 1))
            if not points:
                continue  # no object and no click here: the coarse mask stands
            _, _, prob = predictor.predict(tile, points, predictor.label_prior(coarse[sl]))
            acc[sl] += prob.cpu().numpy()
            cnt[sl] += 1
            done += 1
        if not done:
            return 0, None

        covered = cnt > 0
        refined = np.zeros_like(covered)
        refined[covered] = acc[covered] / cnt[covered] > 0.5
        refined &= allowed
        bbox, cover = roi_footprint(covered, canvas, image)  # the canvas's sub-block only
        if bbox is None:
            return done, None
        mask[bbox] = paste_over(mask, bbox, cover, refined, canvas, image)
        return done, bbox


__all__ = ["AutoZoomPlanner", "touches_border", "clicks_in"]
