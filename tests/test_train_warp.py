"""Spatial augmentation of real training ROIs (voxprompt.train.warp)."""
from __future__ import annotations

import numpy as np
import pytest

from voxprompt.errors import UsageError
from voxprompt.train import config_from_dict
from voxprompt.train.config import AugmentConfig
from voxprompt.train.warp import WARP_MARGIN, rotation, warp_coordinates, warp_roi

SIZE = 32
WIDE = SIZE + 2 * WARP_MARGIN
IDENTITY = AugmentConfig(warp_prob=1.0, warp_rotate_deg=0.0, warp_scale=(1.0, 1.0), warp_elastic_voxels=0.0)
MIN_VOXELS = 20  # what SampleMixer passes (samples.MIN_ROI_VOXELS)
STRONG = AugmentConfig(warp_prob=1.0, warp_rotate_deg=30.0, warp_scale=(0.8, 1.25), warp_elastic_voxels=3.0)


def ball(center, radius: float, shape=(WIDE,) * 3) -> np.ndarray:
    d = np.linalg.norm(np.indices(shape) - np.asarray(center, float).reshape(3, 1, 1, 1), axis=0)
    return (d <= radius).astype(np.uint8)


def test_rotation_is_proper_and_bounded():
    for seed in range(5):
        r = rotation(np.random.default_rng(seed), 20.0)
        np.testing.assert_allclose(r @ r.T, np.eye(3), atol=1e-12)
        assert np.linalg.det(r) == pytest.approx(1.0)
    np.testing.assert_array_equal(rotation(np.random.default_rng(0), 0.0), np.eye(3))


def test_identity_warp_is_the_centre_crop():
    rng = np.random.default_rng(0)
    image = rng.normal(size=(WIDE,) * 3).astype(np.float32)
    label = ball((WIDE // 2,) * 3, 6)
    click = np.full(3, WIDE // 2)
    img, lab, c = warp_roi(np.random.default_rng(1), image, label, click, SIZE, IDENTITY, MIN_VOXELS)
    window = (slice(WARP_MARGIN, WARP_MARGIN + SIZE),) * 3
    np.testing.assert_allclose(img, image[window], atol=1e-5)
    np.testing.assert_array_equal(lab, label[window])
    np.testing.assert_array_equal(c, np.full(3, SIZE // 2))


def test_centre_is_a_fixed_point_and_the_click_stays_in_the_target():
    """A centred first click keeps its voxel; the warped label is the warped image's bright ball."""
    image = ball((WIDE // 2,) * 3, 5).astype(np.float32)
    click = np.full(3, WIDE // 2)
    for seed in range(6):
        rng = np.random.default_rng(seed)
        img, lab, c = warp_roi(rng, image, image.astype(np.uint8), click, SIZE, STRONG, MIN_VOXELS)
        np.testing.assert_array_equal(c, np.full(3, SIZE // 2))
        assert lab[tuple(c)] == 1 and img[tuple(c)] == pytest.approx(1.0)
        # label (nearest) and image (linear) come from the same coordinates
        assert np.all(img[lab == 1] > 0) and (img[lab == 0] < 1).all()
        # a ball of radius 5 scaled by at most 1.25 and displaced by at most 2 x 3 voxels
        assert 0.3 * image.sum() < lab.sum() < 3.0 * image.sum()


def test_warp_changes_shape_and_varies_with_the_seed():
    image = np.zeros((WIDE,) * 3, np.float32)
    image[WIDE // 2 - 8:WIDE // 2 + 8, WIDE // 2 - 3:WIDE // 2 + 3, WIDE // 2 - 5:WIDE // 2 + 5] = 1  # a slab
    label = image.astype(np.uint8)
    click = np.full(3, WIDE // 2)
    masks = [warp_roi(np.random.default_rng(s), image, label, click, SIZE, STRONG, MIN_VOXELS)[1] for s in range(3)]
    crop = label[(slice(WARP_MARGIN, WARP_MARGIN + SIZE),) * 3]
    assert all((m != crop).sum() > 50 for m in masks)
    assert (masks[0] != masks[1]).sum() > 50


def test_an_off_centre_click_or_a_lost_target_falls_back_to_the_unwarped_crop():
    """Only a centred click is warped (the centre is the fixed point); a click elsewhere, or a warp
    that leaves fewer than ``min_voxels`` target voxels, gives the centre crop unwarped."""
    crop = (slice(WARP_MARGIN, WARP_MARGIN + SIZE),) * 3
    image = np.zeros((WIDE,) * 3, np.float32)
    spot = np.array([WIDE // 2 + 10, WIDE // 2, WIDE // 2])
    label = ball(spot, 5)
    img, lab, c = warp_roi(np.random.default_rng(0), image, label, spot, SIZE, STRONG, MIN_VOXELS)
    np.testing.assert_array_equal(c, spot - WARP_MARGIN)
    np.testing.assert_array_equal(lab, label[crop])

    tiny = np.zeros((WIDE,) * 3, np.uint8)
    tiny[WIDE // 2, WIDE // 2, WIDE // 2 - 2:WIDE // 2 + 3] = 1  # 5 voxels: below 20 either way
    img, lab, c = warp_roi(np.random.default_rng(1), image, tiny, np.full(3, WIDE // 2), SIZE, STRONG, MIN_VOXELS)
    np.testing.assert_array_equal(lab, tiny[crop])


def test_coordinates_stay_near_the_wide_roi():
    coords = warp_coordinates(np.random.default_rng(0), SIZE, STRONG)
    assert coords.shape == (3, SIZE, SIZE, SIZE)
    np.testing.assert_allclose(coords[:, SIZE // 2, SIZE // 2, SIZE // 2], np.full(3, WIDE // 2), atol=1e-4)
    # corners: half-diagonal x the largest inverse scale plus the elastic amplitude, twice
    reach = np.abs(coords - WIDE // 2).max()
    assert reach <= np.sqrt(3) * (SIZE // 2) / 0.8 + 2 * STRONG.warp_elastic_voxels + 1e-3


@pytest.mark.parametrize("bad, message", [
    ({"warp_prob": 1.5}, "warp_prob"),
    ({"warp_rotate_deg": 90}, "warp_rotate_deg"),
    ({"warp_scale": [1.2, 0.9]}, "warp_scale"),
    ({"warp_scale": [1.0]}, "warp_scale"),
    ({"warp_elastic_voxels": -1}, "warp_elastic_voxels"),
    ({"centered_click": 2}, "centered_click"),
])
def test_bad_warp_settings_are_refused(bad, message):
    with pytest.raises(UsageError, match=f"augment: {message}"):
        config_from_dict({"synthetic": {"weight": 1}, "augment": bad})


def test_mixer_warps_real_samples_and_keeps_their_first_click(tmp_path):
    """Through SampleMixer: warped samples of a real dataset keep the centred click inside the target."""
    from voxprompt.data.build import build_dataset
    from voxprompt.data.sources import SourceCase
    from voxprompt.io import Image
    from voxprompt.train.config import DataSource, SyntheticSource
    from voxprompt.train.samples import SampleMixer

    def source(cache):
        arr = np.zeros((48, 48, 48), np.int16)
        lab = np.zeros(arr.shape, np.uint8)
        lab[10:38, 16:32, 12:36] = 1
        arr[lab == 1] = 300
        image = Image(arr, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), np.eye(3))
        return SourceCase("c", image, Image(lab, image.spacing, image.origin, np.eye(3)),
                          {1: "rib_left_1"}, "CT", "train", "synthetic")

    build_dataset(tmp_path / "ds", [("c", source)], spacing=1.0, progress=False)
    data = [DataSource(path=str(tmp_path / "ds"), split="train", min_voxels=1)]
    warped = SampleMixer(data, SyntheticSource(0.0), AugmentConfig(centered_click=1.0, warp_prob=1.0), SIZE, 1.0)
    plain = SampleMixer(data, SyntheticSource(0.0), AugmentConfig(centered_click=1.0), SIZE, 1.0)
    images, masks, clicks = warped.batch((0, 1), 4)
    assert images.shape == (4, SIZE, SIZE, SIZE) and masks.shape == images.shape
    for mask, click in zip(masks, clicks):
        assert mask[tuple(click)] == 1
    assert not np.array_equal(masks, plain.batch((0, 1), 4)[1])
