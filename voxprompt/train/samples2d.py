"""2D training samples in the model's input frame, made by its official preprocessing.

Sources (``data:`` entries, detected per folder):

* a dataset of 3D targets (any layout :func:`voxprompt.data.open_dataset` reads): a random target,
  a random axis of ``train2d.slice_axes``, a random slice whose foreground exceeds
  ``train2d.min_fraction`` of the slice; intensities mapped to 0..255 by the CT window or the
  volume's 0.5-99.5 percentiles (as at inference on volumes);
* a folder of 2D image/mask pairs in SAM-Med2D's layout: ``image2label_train.json``
  (``{image: [mask, ...]}``) for ``split: train``, ``label2image_test.json`` (``{mask: image}``)
  for ``split: test``; paths relative to the folder (or its parent, as the official demo);
* ``synthetic``: a slice of a procedurally generated volume (:mod:`voxprompt.train.synthetic`).

Each sample is ``(image (3, S, S) float32 normalised, mask (S, S) uint8)``; flips are applied to
the original image, intensity jitter to the normalised one. Every sample is a pure function of
its seed, as in 3D.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import UsageError
from ..preprocess.image2d import Policy2D, intensity_range, parse_window, preprocess_image, rgb_uint8
from .config import AugmentConfig, DataSource, SyntheticSource, Train2DConfig
from .samples import mix_weights, source_targets
from .synthetic import synthetic_sample

log = logging.getLogger(__name__)

MIN_PIXELS = 4  # a sample's mask must keep this many pixels in the model frame


def _flip(rng: np.random.Generator, image: np.ndarray, mask: np.ndarray, aug: AugmentConfig
          ) -> tuple[np.ndarray, np.ndarray]:
    if aug.flip:
        for ax in (0, 1):
            if rng.random() < 0.5:
                image, mask = np.flip(image, ax), np.flip(mask, ax)
    return np.ascontiguousarray(image), np.ascontiguousarray(mask)


def _jitter(rng: np.random.Generator, x: np.ndarray, aug: AugmentConfig) -> np.ndarray:
    scale = float(np.exp(rng.uniform(*np.log(aug.intensity_scale))))
    shift = float(rng.uniform(-aug.intensity_shift, aug.intensity_shift))
    x = x * scale + shift
    if aug.noise_std > 0:
        x = x + rng.normal(0, rng.uniform(0, aug.noise_std), x.shape)
    return np.ascontiguousarray(x, dtype=np.float32)


def to_model(rng: np.random.Generator, rgb: np.ndarray, mask: np.ndarray, policy: Policy2D, aug: AugmentConfig
             ) -> tuple[np.ndarray, np.ndarray] | None:
    """(H, W, 3) uint8 + (H, W) mask -> model-frame (3, S, S) float32 + (S, S) uint8, or None when
    the mask keeps fewer than ``MIN_PIXELS`` pixels."""
    rgb, mask = _flip(rng, rgb, mask, aug)
    x, frame = preprocess_image(rgb, policy)
    y = frame.mask_to_model(mask)
    if int(y.sum()) < MIN_PIXELS:
        return None
    return _jitter(rng, x[0].numpy(), aug), y


class SlicePool:
    """2D slices of the 3D targets of one data source."""

    def __init__(self, source: DataSource, opts: Train2DConfig) -> None:
        targets = source_targets(source)
        self.source, self.targets, self.opts = source, targets, opts
        self.window = parse_window(opts.window)
        self._slices: dict[tuple[int, int], np.ndarray] = {}
        self._ranges: dict[str, tuple[float, float]] = {}
        log.info("data source %s: %d targets (2D slices)", source.path, len(targets))

    def _eligible(self, i: int, axis: int, mask: np.ndarray) -> np.ndarray:
        key = (i, axis)
        if key not in self._slices:
            other = tuple(a for a in range(3) if a != axis)
            area = mask.sum(axis=other)
            plane = int(np.prod([mask.shape[a] for a in other]))
            self._slices[key] = np.flatnonzero(area >= max(MIN_PIXELS, self.opts.min_fraction * plane))
        return self._slices[key]

    def _range(self, image) -> tuple[float, float]:
        key = str(image.source_path)
        if key not in self._ranges:
            a = image.array.reshape(-1)[:: max(1, image.array.size // 2_000_000)]
            self._ranges[key] = intensity_range(a, self.window, None if self.window else (0.5, 99.5))
        return self._ranges[key]

    def sample(self, rng: np.random.Generator, policy: Policy2D, aug: AugmentConfig
               ) -> tuple[np.ndarray, np.ndarray]:
        from ..data.readers import load_target
        from ..session.propagate import take_slice

        for _ in range(10):
            i = int(rng.integers(len(self.targets)))
            image, mask = load_target(self.targets[i])
            axis = int(self.opts.slice_axes[int(rng.integers(len(self.opts.slice_axes)))])
            ok = self._eligible(i, axis, mask)
            if ok.size == 0:
                continue
            s = int(ok[rng.integers(ok.size)])
            rgb = rgb_uint8(take_slice(image.array, axis, s), value_range=self._range(image))
            out = to_model(rng, rgb, take_slice(mask, axis, s), policy, aug)
            if out is not None:
                return out
        raise UsageError(f"data source {self.source.path}: no slice with enough foreground in 10 tries")


class PairPool:
    """2D image/mask pairs listed by a SAM-Med2D index file."""

    def __init__(self, source: DataSource) -> None:
        root = Path(source.path)
        name = "label2image_test.json" if source.split == "test" else "image2label_train.json"
        index = root / name
        try:
            d = json.loads(index.read_text())
        except (OSError, ValueError) as exc:
            raise UsageError(f"data source {root}: cannot read {name} ({exc})") from None
        if not isinstance(d, dict):
            raise UsageError(f"{index}: expected a JSON object")
        if name.startswith("label2image"):
            pairs = [(img, m) for m, img in d.items()]
        else:
            pairs = [(img, m) for img, masks in d.items() for m in (masks if isinstance(masks, list) else [masks])]
        self.pairs = [(self._resolve(root, a), self._resolve(root, b)) for a, b in pairs]
        if not self.pairs:
            raise UsageError(f"{index}: lists no image/mask pair")
        self.source = source
        log.info("data source %s: %d 2D image/mask pairs", root, len(self.pairs))

    @staticmethod
    def _resolve(root: Path, rel: str) -> Path:
        for base in (root, root.parent):
            if (base / rel).is_file():
                return base / rel
        raise UsageError(f"data source {root}: listed file {rel} not found (relative to {root} or its parent)")

    def sample(self, rng: np.random.Generator, policy: Policy2D, aug: AugmentConfig
               ) -> tuple[np.ndarray, np.ndarray]:
        from ..io.image2d import read_image2d

        for _ in range(10):
            img_path, mask_path = self.pairs[int(rng.integers(len(self.pairs)))]
            rgb = rgb_uint8(read_image2d(img_path).array)
            m = read_image2d(mask_path).array
            m = (m.any(axis=-1) if m.ndim == 3 else m != 0).astype(np.uint8)
            if m.shape != rgb.shape[:2]:
                raise UsageError(f"{mask_path}: mask {m.shape} does not match the image {img_path} {rgb.shape[:2]}")
            out = to_model(rng, rgb, m, policy, aug)
            if out is not None:
                return out
        raise UsageError(f"data source {self.source.path}: no pair with a visible mask in 10 tries")


def is_pair_source(path: str) -> bool:
    root = Path(path)
    return (root / "image2label_train.json").is_file() or (root / "label2image_test.json").is_file()


def synthetic_slice(rng: np.random.Generator, size: int, synthetic: SyntheticSource, policy: Policy2D,
                    aug: AugmentConfig) -> tuple[np.ndarray, np.ndarray]:
    """A slice through the target of a synthetic volume (side ``size``), in the model frame."""
    for _ in range(10):
        volume, label = synthetic_sample(rng, size, synthetic.min_objects, synthetic.max_objects)
        area = label.reshape(size, -1).sum(axis=1)
        ok = np.flatnonzero(area >= MIN_PIXELS)
        if ok.size == 0:
            continue
        s = int(ok[rng.integers(ok.size)])
        out = to_model(rng, rgb_uint8(volume[s]), label[s], policy, aug)
        if out is not None:
            return out
    raise UsageError("synthetic 2D samples: no visible target in 10 tries")


class SampleMixer2D:
    """Draws 2D samples from the sources by weight (the 2D counterpart of ``SampleMixer``)."""

    def __init__(self, data: Sequence[DataSource], synthetic: SyntheticSource, aug: AugmentConfig,
                 opts: Train2DConfig, policy: Policy2D) -> None:
        self.pools = [PairPool(s) if is_pair_source(s.path) else SlicePool(s, opts) for s in data]
        self.synthetic, self.aug, self.opts, self.policy = synthetic, aug, opts, policy
        self.weights = mix_weights(self.pools, synthetic)

    def sample(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        k = int(rng.choice(len(self.weights), p=self.weights))
        if k == len(self.pools):
            return synthetic_slice(rng, self.opts.synthetic_size, self.synthetic, self.policy, self.aug)
        return self.pools[k].sample(rng, self.policy, self.aug)

    def batch(self, seed: Sequence[int], n: int) -> tuple[np.ndarray, np.ndarray]:
        """``n`` samples ((n, 3, S, S) images, (n, S, S) masks) from the seed sequence ``seed``."""
        rng = np.random.default_rng(list(seed))
        pairs = [self.sample(rng) for _ in range(n)]
        return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


__all__ = ["PairPool", "SampleMixer2D", "SlicePool", "is_pair_source", "synthetic_slice", "to_model"]
