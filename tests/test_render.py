"""train.label_render: images rendered from label maps with random contrasts; the pool's use of it."""
from __future__ import annotations

import numpy as np

from voxprompt.train.label_render import MIN_TARGET_CONTRAST, RenderConfig, deform_labels, render_labels


def _labels(size: int = 32) -> np.ndarray:
    lab = np.zeros((size,) * 3, np.int32)
    lab[4:20, 4:20, 4:20] = 3
    lab[12:28, 14:30, 6:26] = 7
    lab[20:24, 2:8, 20:30] = 11
    return lab


def test_render_is_seeded_normalised_and_keeps_the_target():
    lab = _labels()
    valid = np.ones(lab.shape, bool)
    cfg = RenderConfig(deform_prob=0.0)
    a, ma = render_labels(np.random.default_rng(5), lab, 7, valid, cfg)
    b, mb = render_labels(np.random.default_rng(5), lab, 7, valid, cfg)
    assert a.dtype == np.float32 and a.shape == lab.shape and np.array_equal(a, b) and np.array_equal(ma, mb)
    assert np.array_equal(ma, (lab == 7).astype(np.uint8))
    pos = a > 0
    assert pos.any()


FLAT = RenderConfig(deform_prob=0.0, texture_max=0.0, blur_max=0.0, thick_slice_prob=0.0, bias_max=0.0,
                    gamma_std=0.0, noise_max=0.0, dark_label_prob=0.0)


def test_target_differs_from_its_surroundings(monkeypatch):
    """Without texture, blur, bias, gamma or noise (and before the z-score) each label is one
    intensity, and the target's stands out from the 2-voxel ring around it by the minimum contrast."""
    from scipy import ndimage

    from voxprompt.train import label_render

    monkeypatch.setattr(label_render, "zscore_positive", lambda x: x)
    lab = _labels()
    ring = ndimage.binary_dilation(lab == 3, iterations=2) & (lab != 3)
    for seed in range(30):
        img, mask = render_labels(np.random.default_rng(seed), lab, 3, np.ones(lab.shape, bool), FLAT)
        values = img[mask.astype(bool)]
        assert np.ptp(values) < 1e-6
        assert abs(values[0] - img[ring].mean()) >= MIN_TARGET_CONTRAST - 1e-6


def test_padding_outside_the_image_is_zero_before_the_zscore(monkeypatch):
    from voxprompt.train import label_render

    monkeypatch.setattr(label_render, "zscore_positive", lambda x: x)
    lab = _labels()
    valid = np.zeros(lab.shape, bool)
    valid[:, :, :24] = True
    img, _ = render_labels(np.random.default_rng(1), lab, 7, valid, RenderConfig())
    assert np.all(img[~valid] == 0) and np.any(img[valid] != 0)


def test_deformation_is_small_and_keeps_labels():
    lab = _labels()
    warped = deform_labels(np.random.default_rng(0), lab, 2.0)
    assert set(np.unique(warped)) <= set(np.unique(lab))
    changed = warped != lab
    assert 0 < changed.mean() < 0.2


def test_render_keeps_the_click_in_the_target():
    lab = _labels()
    click = np.array([5, 5, 5])  # near the target's corner, where a warp could move the boundary past it
    for seed in range(10):
        _, mask = render_labels(np.random.default_rng(seed), lab, 3, np.ones(lab.shape, bool),
                                RenderConfig(deform_prob=1.0, deform_voxels=3.0), keep=click)
        assert mask[tuple(click)] == 1


def test_pool_renders_only_its_own_split(tmp_path, monkeypatch):
    """Structures of other splits (held out, validation) are never drawn: they melt into label 0."""
    from voxprompt.data.build import build_dataset
    from voxprompt.data.sources import SourceCase
    from voxprompt.io import Image
    from voxprompt.train import samples
    from voxprompt.train.config import AugmentConfig, DataSource

    def source(cache):
        arr = np.full((40, 40, 40), 100, np.int16)
        lab = np.zeros(arr.shape, np.uint8)
        lab[5:20, 5:20, 5:20] = 1  # rib_left_1: train
        lab[20:35, 20:35, 20:35] = 2  # liver: held out
        image = Image(arr, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), np.eye(3))
        return SourceCase("c", image, Image(lab, image.spacing, image.origin, np.eye(3)),
                          {1: "rib_left_1", 2: "liver"}, "CT", "test", "synthetic")

    build_dataset(tmp_path / "ds", [("c", source)], spacing=1.0, progress=False)
    seen = []

    def spy(rng, labels, target, valid, cfg=RenderConfig(), keep=None):
        seen.append(np.unique(labels))
        return render_labels(rng, labels, target, valid, cfg, keep)

    monkeypatch.setattr(samples, "render_labels", spy)
    pool = samples.TargetPool(DataSource(path=str(tmp_path / "ds"), split="train", render_prob=1.0, min_voxels=1))
    for seed in range(4):
        img, mask, _ = pool.sample(np.random.default_rng(seed), 32, 1.0, AugmentConfig())
        assert mask.sum() > 0 and img.shape == (32, 32, 32)
    assert seen and all(set(u.tolist()) <= {0, 1} for u in seen)
