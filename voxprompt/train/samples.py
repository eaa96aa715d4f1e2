"""Training samples: ROIs of real labelled targets (cropped and normalised exactly as at
inference) and synthetic volumes, with augmentation. Every sample is a pure function of its
seed, so a resumed or distributed run draws exactly the samples it would have drawn."""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..data.render import render_labels
from ..errors import UsageError
from ..masks import deepest_voxel
from ..preprocess import extract_roi_label, extract_roi_labels, preprocess_roi, roi_around
from .config import AugmentConfig, DataSource, SyntheticSource
from .synthetic import synthetic_sample
from .warp import WARP_MARGIN, warp_roi

log = logging.getLogger(__name__)

MIN_ROI_VOXELS = 20  # a crop must show at least this much of its target
NO_CLICK = np.full(3, -1)  # "no first click given: the click simulator places it"


@dataclass
class _TargetInfo:
    target: object  # voxprompt.data.readers.Target
    bbox_lo: np.ndarray
    bbox_hi: np.ndarray
    some_voxels: np.ndarray  # up to 4096 foreground indices to centre crops on
    deepest: np.ndarray  # the voxel farthest from the boundary (CVPR 2025's first click)


def source_targets(source: DataSource) -> list:
    """The targets of a data source that pass its filters (split, ``min_voxels``, ``cases``)."""
    from ..data.readers import open_dataset  # local: data is optional for synthetic-only runs

    targets = [t for t in open_dataset(source.path, split=source.split)
               if (not t.voxels or t.voxels >= source.min_voxels)
               and (source.cases is None or t.case in source.cases)]
    if not targets:
        raise UsageError(f"data source {source.path}: no targets (split={source.split!r}, "
                         f"min_voxels={source.min_voxels}, cases={source.cases})")
    return targets


def draw_probabilities(targets: Sequence, size_power: float) -> np.ndarray | None:
    """Draw probabilities ~ ``voxels ** size_power`` (None for a uniform draw, ``size_power`` 0).

    A uniform draw over structures gives a few large organs among many small bones, vessels and
    regions, so a large organ's first click is rarely trained; a power of 0.5 draws a 100x larger
    structure 10x as often."""
    if size_power == 0:
        return None
    sizes = np.array([t.voxels for t in targets], dtype=float)
    if (sizes <= 0).any():
        unknown = [f"{t.case}:{t.name}" for t in targets if t.voxels <= 0][:3]
        raise UsageError(f"size_power needs every target's size; unknown for {', '.join(unknown)}")
    w = sizes ** size_power
    return w / w.sum()


def mix_weights(pools: Sequence, synthetic: SyntheticSource) -> np.ndarray:
    """Normalised draw weights: one per pool (its ``source.weight``), then the synthetic generator."""
    weights = [p.source.weight for p in pools] + [max(synthetic.weight, 0.0)]
    total = float(sum(weights))
    if total <= 0:
        raise UsageError("all data source weights are zero")
    return np.asarray(weights) / total


class TargetPool:
    """Targets of one data source, with cached foreground geometry."""

    def __init__(self, source: DataSource) -> None:
        targets = source_targets(source)
        self.source = source
        self.targets = targets
        self._info: dict[int, _TargetInfo] = {}
        # label ids that may be drawn when rendering from a case's label map: this pool's targets only,
        # so structures of other splits (held out, validation) melt into the background
        self._drawable: dict[str, np.ndarray] = {}
        for t in targets:
            self._drawable.setdefault(t.case, [])
            self._drawable[t.case].append(t.label)
        self._drawable = {c: np.unique(ids) for c, ids in self._drawable.items()}
        self._draw_p = draw_probabilities(targets, source.size_power)
        log.info("data source %s: %d targets", source.path, len(targets))

    def _draw(self, rng: np.random.Generator) -> int:
        """A target index: uniform (the same draw as before ``size_power`` existed) or size-weighted."""
        if self._draw_p is None:
            return int(rng.integers(len(self.targets)))
        return int(rng.choice(len(self.targets), p=self._draw_p))

    def _target(self, i: int) -> tuple[object, np.ndarray, _TargetInfo]:
        from ..data.readers import load_target

        t = self.targets[i]
        image, mask = load_target(t)
        if i not in self._info:
            box = bounding_box(mask)
            if box is None:
                raise UsageError(f"target {t.case}:{t.label} ({t.name}) is empty")
            lo, hi = box
            crop = mask[tuple(slice(a, b) for a, b in zip(lo, hi))]
            idx = np.argwhere(crop) + lo  # the full volume's argwhere, in the same order, ~10x faster
            pick = np.random.default_rng(i).choice(len(idx), size=min(4096, len(idx)), replace=False)
            self._info[i] = _TargetInfo(t, lo, hi, idx[np.sort(pick)], lo + deepest_voxel(crop).astype(int))
        return image, mask, self._info[i]

    def sample(self, rng: np.random.Generator, size: int, spacing: float, aug: AugmentConfig
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """A normalised ROI (``size``^3), its target mask and the first click (ROI index, or -1s).

        With probability ``aug.centered_click`` the ROI is centred on a first click (the target's
        deepest voxel or a uniform target voxel), exactly as a session opens the ROI of a first
        click; otherwise it is centred near the target with jitter and the click is simulated later.
        """
        for _ in range(10):
            image, mask, info = self._target(self._draw(rng))
            if aug.centered_click > 0 and rng.random() < aug.centered_click:
                click = info.deepest if rng.random() < 0.5 else info.some_voxels[rng.integers(len(info.some_voxels))]
                roi = roi_around(image, click.astype(float), size=size, spacing=spacing)
                label = extract_roi_label(image, mask, roi)
                c = np.clip(np.floor(roi.from_original_index(click.astype(float)) + 0.5), 0, size - 1).astype(int)
                if label.sum() >= MIN_ROI_VOXELS and label[tuple(c)]:
                    return self._roi_input(rng, image, roi, label, info, c)
                continue
            if rng.random() < 0.5:
                center = (info.bbox_lo + info.bbox_hi - 1) / 2.0
            else:
                center = info.some_voxels[rng.integers(len(info.some_voxels))].astype(float)
            roi_side_vox = size * spacing / np.asarray(image.spacing[::-1], float)
            center = center + rng.uniform(-1, 1, 3) * aug.center_jitter * roi_side_vox
            center = np.clip(center, 0, np.asarray(image.shape) - 1)
            roi = roi_around(image, center, size=size, spacing=spacing)
            label = extract_roi_label(image, mask, roi)
            if label.sum() >= MIN_ROI_VOXELS:
                return self._roi_input(rng, image, roi, label, info, NO_CLICK)
        raise UsageError(f"data source {self.source.path}: could not crop a non-empty target in 10 tries")


    def _roi_input(self, rng: np.random.Generator, image, roi, label: np.ndarray, info: _TargetInfo,
                   click: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The ROI's normalised image (real, or rendered from the label map), its target mask, the click."""
        if self.source.render_prob <= 0 or rng.random() >= self.source.render_prob:
            return preprocess_roi(image, roi), label, click
        from ..data.readers import load_label_map

        t = info.target
        labels = extract_roi_labels(image, load_label_map(t), roi)
        labels[~np.isin(labels, self._drawable[t.case])] = 0
        valid = np.zeros(roi.size, bool)
        lo, hi = roi.valid_box()
        valid[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = True
        img, mask = render_labels(rng, labels, t.label, valid, keep=None if click[0] < 0 else click)
        if mask.sum() < MIN_ROI_VOXELS:
            return preprocess_roi(image, roi), label, click
        return img, mask, click


class SampleMixer:
    """Draws samples from the real sources and the synthetic generator by weight."""

    def __init__(self, data: Sequence[DataSource], synthetic: SyntheticSource, aug: AugmentConfig,
                 size: int, spacing: float) -> None:
        self.pools = [TargetPool(s) for s in data]
        self.synthetic, self.aug, self.size, self.spacing = synthetic, aug, size, spacing
        self.weights = mix_weights(self.pools, synthetic)

    def sample(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        k = int(rng.choice(len(self.weights), p=self.weights))
        if k == len(self.pools):
            image, label = synthetic_sample(rng, self.size, self.synthetic.min_objects, self.synthetic.max_objects)
            click = NO_CLICK
            if self.aug.centered_click > 0 and rng.random() < self.aug.centered_click:
                image, label, click = centre_on_click(rng, image, label)
        else:
            lo, hi = np.log(self.aug.spacing_scale)
            spacing = self.spacing * float(np.exp(rng.uniform(lo, hi)))
            image, label, click = self._real(rng, self.pools[k], spacing)
        return augment(rng, image, label, self.aug, click)

    def _real(self, rng: np.random.Generator, pool: TargetPool, spacing: float
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """A real ROI, warped with probability ``aug.warp_prob`` (drawn only when that is set, so
        earlier configs draw exactly the samples they drew before)."""
        if self.aug.warp_prob > 0 and rng.random() < self.aug.warp_prob:
            wide = pool.sample(rng, self.size + 2 * WARP_MARGIN, spacing, self.aug)
            image, label, click = warp_roi(rng, *wide, self.size, self.aug, MIN_ROI_VOXELS)
            if label.sum() >= MIN_ROI_VOXELS:
                return image, label, click
        return pool.sample(rng, self.size, spacing, self.aug)

    def batch(self, seed: Sequence[int], n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``n`` samples from the seed sequence ``seed`` (e.g. (run seed, step, rank, micro-batch)):
        images, masks and first clicks ``(n, 3)`` (-1 where the click is left to the simulator)."""
        rng = np.random.default_rng(list(seed))
        triples = [self.sample(rng) for _ in range(n)]
        return tuple(np.stack([t[i] for t in triples]) for i in range(3))  # type: ignore[return-value]


def bounding_box(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Half-open index box ``(lo, hi)`` of a mask's voxels (None when empty), from axis projections."""
    lo, hi = [], []
    for ax in range(mask.ndim):
        hit = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != ax)))
        if len(hit) == 0:
            return None
        lo.append(hit[0])
        hi.append(hit[-1] + 1)
    return np.array(lo), np.array(hi)


def centre_on_click(rng: np.random.Generator, image: np.ndarray, label: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Shift a synthetic volume (mirror-padded) so a first click in the target lies at its centre."""
    size = image.shape[0]
    if rng.random() < 0.5:
        click = deepest_voxel(label.astype(bool)).astype(int)
    else:
        fg = np.argwhere(label)
        click = fg[rng.integers(len(fg))]
    half = size // 2
    window = tuple(slice(int(c), int(c) + size) for c in click)
    image = np.pad(image, half, mode="reflect")[window]
    label = np.pad(label, half, mode="reflect")[window]
    return image, label, np.full(3, half)


def augment(rng: np.random.Generator, image: np.ndarray, label: np.ndarray, aug: AugmentConfig,
            click: np.ndarray = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Flips and intensity jitter on a normalised ROI (shapes unchanged; the click follows flips)."""
    click = NO_CLICK.copy() if click is None else np.array(click)
    if aug.flip:
        for ax in range(image.ndim):
            if rng.random() < 0.5:
                image, label = np.flip(image, ax), np.flip(label, ax)
                if click[ax] >= 0:
                    click[ax] = image.shape[ax] - 1 - click[ax]
    scale = float(np.exp(rng.uniform(*np.log(aug.intensity_scale))))
    shift = float(rng.uniform(-aug.intensity_shift, aug.intensity_shift))
    image = image * scale + shift
    if aug.noise_std > 0:
        image = image + rng.normal(0, rng.uniform(0, aug.noise_std), image.shape)
    return np.ascontiguousarray(image, dtype=np.float32), np.ascontiguousarray(label, dtype=np.uint8), click
