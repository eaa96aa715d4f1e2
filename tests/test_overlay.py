"""Overlays (issue 20 #13): radiological convention, orientation letters, every click drawn."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image as PILImage

from voxprompt.io.image import Image
from voxprompt.viz.overlay import patient_axes, save_overlay

N = 24


def _volume(direction) -> tuple[Image, tuple[int, int, int]]:
    """A dark volume with a bright block on the patient's LEFT (and anterior, superior) side."""
    d = np.asarray(direction, float).reshape(3, 3)
    arr = np.zeros((N, N, N), np.float32)
    # patient left = +x of LPS: the i index grows toward it when d[0, 0] > 0
    xs = slice(N - 8, N - 2) if d[0, 0] > 0 else slice(2, 8)
    arr[8:16, 8:16, xs] = 1000.0
    image = Image(arr, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), direction=d)
    return image, (12, 12, (xs.start + xs.stop) // 2)


def _bright_centre(png, panel: int) -> tuple[float, float]:
    """(row, column) of the bright block inside the image area of panel 0/1/2, as fractions 0..1."""
    rgb = np.asarray(PILImage.open(png).convert("RGB")).astype(int)
    third = rgb[:, panel * rgb.shape[1] // 3:(panel + 1) * rgb.shape[1] // 3]
    dark = (third < 40).all(axis=-1)
    rows = np.flatnonzero(dark.mean(axis=1) > 0.2)  # the rows through the (mostly black) image
    cols = np.flatnonzero(dark[rows].any(axis=0))
    r0, r1, c0, c1 = rows.min(), rows.max(), cols.min(), cols.max()
    white = (third[r0:r1 + 1, c0:c1 + 1] > 220).all(axis=-1)
    wr, wc = np.nonzero(white)
    assert wr.size, "bright block not found"
    return wr.mean() / (r1 - r0), wc.mean() / (c1 - c0)


def _bright_side(png, panel: int) -> str:
    return "right" if _bright_centre(png, panel)[1] > 0.5 else "left"


@pytest.mark.parametrize("direction", [np.eye(3), np.diag([-1.0, -1.0, 1.0])], ids=["LPS", "RAS"])
def test_patient_left_is_on_the_image_right_by_default(tmp_path, direction):
    image, _ = _volume(direction)
    png = save_overlay(image, np.zeros(image.shape, bool), tmp_path / "o.png", point_zyx=(12, 12, 12))
    assert _bright_side(png, 0) == "right"  # axial
    assert _bright_side(png, 1) == "right"  # coronal
    png = save_overlay(image, np.zeros(image.shape, bool), tmp_path / "n.png", point_zyx=(12, 12, 12),
                       neurological=True)
    assert _bright_side(png, 0) == "left" and _bright_side(png, 1) == "left"


def test_anterior_up_and_sagittal_anterior_left(tmp_path):
    arr = np.zeros((N, N, N), np.float32)
    arr[10:14, 2:6, 10:14] = 1000.0  # small j = anterior for an LPS-aligned volume; RAS storage flips j
    ras = np.diag([-1.0, -1.0, 1.0])
    arr_ras = arr[:, ::-1, ::-1].copy()  # the same patient stored RAS
    for a, d in ((arr, np.eye(3)), (arr_ras, ras)):
        image = Image(a, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), direction=d)
        png = save_overlay(image, np.zeros(image.shape, bool), tmp_path / "a.png", point_zyx=(12, 12, 12))
        assert _bright_side(png, 2) == "left"  # sagittal: anterior on the left
        assert _bright_centre(png, 0)[0] < 0.5  # axial: anterior up


def test_patient_axes_and_every_click_drawn(tmp_path, monkeypatch):
    assert patient_axes(np.eye(3)) == ((0, 1, 2), (False, False, False))
    assert patient_axes(np.diag([-1.0, -1.0, 1.0])) == ((0, 1, 2), (False, True, True))
    image, _ = _volume(np.eye(3))
    import matplotlib.axes

    calls = []
    real_plot, real_text = matplotlib.axes.Axes.plot, matplotlib.axes.Axes.text
    monkeypatch.setattr(matplotlib.axes.Axes, "plot", lambda self, *a, **k: calls.append(k) or real_plot(self, *a, **k))
    texts = []
    monkeypatch.setattr(matplotlib.axes.Axes, "text", lambda self, x, y, s, *a, **k: texts.append(s)
                        or real_text(self, x, y, s, *a, **k))
    clicks = [((12, 12, 20), True), ((12, 5, 5), False), ((3, 3, 3), True)]
    save_overlay(image, np.zeros(image.shape, bool), tmp_path / "c.png", clicks=clicks)
    assert len(calls) == 3 * 3  # every click on every view
    assert sum(k["marker"] == "_" for k in calls) == 3 and sum(k["marker"] == "+" for k in calls) == 6
    assert texts.count("L") == 2 and texts.count("A") == 2 and texts.count("S") == 2


def test_cli_overlay_draws_clicks_and_neurological_needs_overlay(tmp_path, capsys, monkeypatch):
    import SimpleITK as sitk

    import voxprompt.viz.overlay as overlay
    from voxprompt.cli import main

    arr = np.random.default_rng(0).normal(0, 1, (12, 20, 20)).astype(np.float32)
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(tmp_path / "v.nii.gz"))
    seen = {}
    monkeypatch.setattr(overlay, "save_overlay", lambda *a, **k: seen.update(k))
    base = ["segment", str(tmp_path / "v.nii.gz"), "-o", str(tmp_path / "m.nii.gz"), "--model",
            "voxprompt-med3d-small", "--point", "10,10,6", "--point", "3,4,5:-"]  # the shipped weights
    rc = main([*base, "--neurological"])
    err = capsys.readouterr().err
    assert rc == 2 and "--neurological" in err and "--overlay" in err, err
    rc = main([*base, "--overlay", str(tmp_path / "o.png"), "--neurological"])
    assert rc == 0, capsys.readouterr().err
    assert seen["neurological"] is True
    assert [tuple(c) for c, _ in seen["clicks"]] == [(6, 10, 10), (5, 4, 3)]
    assert [pos for _, pos in seen["clicks"]] == [True, False]
