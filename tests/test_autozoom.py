"""Auto-zoom planner on a deterministic fake model that segments exactly what its window shows."""
from __future__ import annotations

import logging
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from voxprompt.errors import UsageError
from voxprompt.eval.metrics import dice
from voxprompt.io.image import Image
from voxprompt.preprocess import roi_around
from voxprompt.session import CenteredRoiPlanner, Session, roi_key
from voxprompt.session.autozoom import AutoZoomPlanner, touches_border

OBJECT, BACKGROUND = 300.0, -300.0
NEG_RADIUS = 4  # ROI voxels a negative click removes


@pytest.fixture(autouse=True)
def _quiet_zscore():
    """Windows inside the uniform object make z-scoring warn (std 0); expected here."""
    log = logging.getLogger("voxprompt.preprocess.normalize")
    level = log.level
    log.setLevel(logging.ERROR)
    yield
    log.setLevel(level)


class BrightObjectModel(torch.nn.Module):
    """SAM-shaped stand-in: segments the voxels of its window whose intensity is close to the
    first positive click's (the bright object), minus a ball around each negative click.

    The embedding is the z-scored ROI itself. Intensities are -300 / 300, so the z-scored value
    half-way between the click's and the window's minimum is the raw 0 level (z-scoring is affine);
    ``0.45`` of that distance keeps zero padding out. Logits are +/-10 x (2 x fraction - 1) of
    each low-res cell, so the upsampled boundary lands on the object's. The prior is ignored.
    """

    spatial_dims = 3

    def __init__(self, img_size: int = 32, low_res: int = 8, spacing: float = 1.5) -> None:
        super().__init__()
        self.cfg = SimpleNamespace(img_size=img_size, roi_spacing_mm=spacing, multimask_first=False,
                                   flip_ensemble=1)
        self.low_res_size = low_res
        self.anchor = torch.nn.Parameter(torch.zeros(1), requires_grad=False)
        self.encodes = 0
        n = img_size
        self.grid = torch.stack(torch.meshgrid(*(torch.arange(n, dtype=torch.float32),) * 3, indexing="ij"), -1)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        self.encodes += 1
        return x.clone()

    def decode(self, emb, points=None, mask_input=None, multimask=False):
        x = emb[0, 0]
        coords, labels = points
        n = x.shape[-1]
        low = self.low_res_size
        pos = [c for c, lab in zip(coords[0], labels[0]) if int(lab) == 1]
        if not pos:
            return torch.full((1, 1, low, low, low), -10.0), torch.full((1, 1), 0.5)
        c0 = torch.clamp(pos[0].round().long(), 0, n - 1)
        ref = x[c0[0], c0[1], c0[2]]
        fg = ((x - ref).abs() <= 0.45 * (ref - x.min())).float()
        for c, lab in zip(coords[0], labels[0]):
            if int(lab) == 0:
                fg[((self.grid - c) ** 2).sum(-1) <= NEG_RADIUS ** 2] = 0
        frac = F.avg_pool3d(fg[None, None], n // low)
        return (frac * 2 - 1) * 10, torch.full((1, 1), 0.9)


def ellipsoid_image(shape, spacing_xyz, semi_axes_mm, direction=None, origin=(0.0, 0.0, 0.0),
                    centre_zyx=None, extra=None) -> tuple[Image, np.ndarray]:
    """An image whose bright object is an ellipsoid (semi-axes along the array axes z, y, x, in mm)."""
    direction = np.eye(3) if direction is None else direction
    img = Image(np.zeros(shape, np.float32), spacing=spacing_xyz, origin=origin, direction=direction)
    centre = np.asarray(centre_zyx if centre_zyx is not None else (np.asarray(shape) - 1) / 2.0)
    sp = np.asarray(spacing_xyz[::-1])
    zz, yy, xx = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    r2 = sum(((g - c) * s / a) ** 2 for g, c, s, a in zip((zz, yy, xx), centre, sp, semi_axes_mm))
    gt = r2 <= 1.0
    if extra is not None:
        gt = gt | extra(zz, yy, xx)
    img.array = np.where(gt, OBJECT, BACKGROUND).astype(np.float32)
    return img, gt


@pytest.fixture(scope="module")
def big():
    """1.5 mm image; ellipsoid 108 x 120 x 144 mm, 3x the 48 mm window; a 21 mm ball in a corner."""
    shape = (100, 110, 132)
    ball = lambda z, y, x: (z - 10) ** 2 + (y - 10) ** 2 + (x - 10) ** 2 <= 7 ** 2  # noqa: E731
    img, both = ellipsoid_image(shape, (1.5, 1.5, 1.5), (54, 60, 72), centre_zyx=(52, 56, 68), extra=ball)
    small = ball(*np.meshgrid(*(np.arange(n) for n in shape), indexing="ij"))
    return img, both & ~small, small


def session(planner=None, model=None) -> Session:
    return Session(model or BrightObjectModel(), planner=planner)


def test_large_object_cut_off_single_roi_recovered_by_autozoom(big):
    img, gt, _ = big
    s = session()
    s.set_image(img)
    p0 = s.add_point((52, 56, 68))
    assert p0.zooms == () and dice(p0.mask, gt) < 0.5
    model = BrightObjectModel()
    s = session(AutoZoomPlanner(), model)
    s.set_image(img)
    p = s.add_point((52, 56, 68))
    assert p.zooms == (1.5, 3.0, 4.0) and p.tiles > 0
    assert dice(p.mask, gt) > 0.95
    # the Prediction's other fields stay those of the base ROI
    assert p.roi.spacing == pytest.approx((1.5,) * 3) and p.probabilities.shape == (32,) * 3
    np.testing.assert_allclose(p.probabilities, p0.probabilities)
    assert p.score == pytest.approx(0.9)
    changed = np.zeros(gt.shape, bool)
    changed[p.changed_bbox] = True
    assert not p.mask[~changed].any()
    # a second identical click reuses the cached zoomed ROIs and tiles: decoder only
    n = model.encodes
    p2 = s.add_point((52, 56, 68))
    assert model.encodes == n and dice(p2.mask, gt) > 0.95


def test_small_object_stays_single_roi(big):
    img, _, small = big
    ref = session()
    ref.set_image(img)
    p0 = ref.add_point((10, 10, 10))
    model = BrightObjectModel()
    s = session(AutoZoomPlanner(), model)
    s.set_image(img)
    p = s.add_point((10, 10, 10))
    assert p.zooms == () and p.tiles == 0 and model.encodes == 1
    np.testing.assert_array_equal(p.mask, p0.mask)
    np.testing.assert_array_equal(p.probabilities, p0.probabilities)
    assert p.changed_bbox == p0.changed_bbox and dice(p.mask, small) > 0.85
    torch.testing.assert_close(s._obj.logits, ref._obj.logits, rtol=0, atol=0)


def test_undo_after_autozoom_is_one_exact_step(big):
    img, gt, small = big
    s = session(AutoZoomPlanner())
    s.set_image(img)
    s.add_point((10, 10, 10))
    m1, l1, pr1 = s.mask.copy(), s._obj.logits.clone(), s.prompts
    p = s.add_point((52, 56, 68))
    assert p.zooms and dice(p.mask, gt | small) > 0.95
    u = s.undo()
    np.testing.assert_array_equal(u.mask, m1)
    torch.testing.assert_close(s._obj.logits, l1, rtol=0, atol=0)
    assert s.prompts == pr1 and u.zooms == ()
    assert not s.undo().mask.any() and not s.can_undo


def test_negative_click_after_autozoom(big):
    img, gt, _ = big
    s = session(AutoZoomPlanner())
    s.set_image(img)
    p1 = s.add_point((52, 56, 68))
    neg = (52, 62, 74)  # inside the object and the base ROI
    p2 = s.add_point(neg, positive=False)
    assert not p2.mask[neg] and p2.mask.sum() < p1.mask.sum()
    assert p2.zooms and dice(p2.mask, gt) > 0.9  # a hole, the rest kept
    assert [k for k, _ in s.prompts] == ["point", "point"]


def test_box_larger_than_the_window(big):
    img, gt, _ = big
    s = session(AutoZoomPlanner())
    s.set_image(img)
    lo, hi = (20, 30, 30), (85, 85, 110)
    p = s.add_box(lo, hi)
    inside = np.zeros(gt.shape, bool)
    inside[tuple(slice(a, b) for a, b in zip(lo, hi))] = True
    assert p.zooms and not p.mask[~inside].any()
    assert dice(p.mask, gt & inside) > 0.95


def test_anisotropic_oblique_lps_image():
    t = np.deg2rad(15)
    direction = np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]])
    img, gt = ellipsoid_image((56, 130, 170), (0.8, 1.1, 2.5), (40, 50, 60), direction=direction,
                              origin=(-60.0, 25.0, -300.0))
    click = (28, 65, 85)
    ref = session()
    ref.set_image(img)
    assert dice(ref.add_point(click).mask, gt) < 0.5
    s = session(AutoZoomPlanner())
    s.set_image(img)
    p = s.add_point(click)
    assert p.zooms and p.tiles > 0
    assert dice(p.mask, gt) > 0.93


def test_touches_border_ignores_faces_outside_the_image(big):
    img = big[0]
    roi = roi_around(img, (50, 55, 66), size=32, spacing=1.5)
    m = np.zeros((32,) * 3, bool)
    m[10:20, 10:20, 10:20] = True
    assert not touches_border(m, roi)
    m[0, 15, 15] = True
    assert touches_border(m, roi)
    from dataclasses import replace

    m2 = np.zeros((32,) * 3, bool)
    m2[:20, :20, :20] = True
    assert not touches_border(m2, replace(roi, start=(-16, -16, -16)))  # low faces in padding
    assert not touches_border(m2, replace(roi, start=(0, 0, 0)))  # low faces on the image edge
    assert touches_border(m2, replace(roi, start=(1, 0, 0)))
    m3 = m2[::-1, ::-1, ::-1]
    edge = tuple(int(g) - 32 for g in roi.grid_shape)
    assert not touches_border(m3, replace(roi, start=edge)) and touches_border(m3, roi)


def test_roi_key_includes_spacing_and_planner_checks(big):
    img = big[0]
    a = roi_around(img, (50, 55, 66), size=32, spacing=1.5)
    b = roi_around(img, (50, 55, 66), size=32, spacing=3.0)
    assert roi_key(a) != roi_key(b)
    from dataclasses import replace

    c = replace(b, start=a.start)
    assert tuple(c.start) == tuple(a.start) and roi_key(c) != roi_key(a)
    for bad in ({"zoom_factors": (0.5,)}, {"tile_overlap": 1.0}, {"max_iterations": -1}, {"max_tiles": 0}):
        with pytest.raises(UsageError):
            AutoZoomPlanner(**bad)
    with pytest.raises(UsageError, match="does not match"):
        Session(BrightObjectModel(), planner=AutoZoomPlanner(size=64))
    with pytest.raises(UsageError, match="Session"):
        AutoZoomPlanner().plan(img, np.zeros(3), None)
    s = Session(BrightObjectModel(), planner=AutoZoomPlanner())
    assert s.planner.size == 32 and s.planner.spacing == 1.5 and s.cache_size >= 64
    assert isinstance(Session(BrightObjectModel()).planner, CenteredRoiPlanner)


def test_cli_autozoom_flag(tmp_path, monkeypatch):
    import SimpleITK as sitk
    from conftest import load_golden
    from golden_configs import sam_med3d_config

    import voxprompt
    from voxprompt import session as session_mod
    from voxprompt.cli import main
    from voxprompt.models.checkpoints import save_safetensors

    g = load_golden("sam_med3d_tiny.pt")
    model = voxprompt.load_model("sam-med3d", g["state_dict"], config=sam_med3d_config(g["config"]))
    ckpt = save_safetensors(model.state_dict(), tmp_path / "tiny.safetensors", "sam-med3d", model.cfg.to_dict())
    arr = np.random.default_rng(0).normal(100, 20, (12, 20, 24)).astype(np.float32)
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(tmp_path / "img.nii.gz"))
    planners = []
    orig = session_mod.Session.__init__

    refines = []

    def spy(self, model, device=None, planner=None, refine=None, **kw):
        orig(self, model, device=device, planner=planner, refine=refine, **kw)
        planners.append(type(self.planner).__name__)
        refines.append(refine)

    monkeypatch.setattr(session_mod.Session, "__init__", spy)
    base = ["segment", str(tmp_path / "img.nii.gz"), "--checkpoint", str(ckpt), "--point", "12,10,6"]
    assert main(base + ["-o", str(tmp_path / "a.nii.gz"), "--autozoom"]) == 0
    assert main(base + ["-o", str(tmp_path / "b.nii.gz"), "--no-autozoom"]) == 0
    assert main(base + ["-o", str(tmp_path / "c.nii.gz"), "--no-refine"]) == 0
    assert planners == ["AutoZoomPlanner", "CenteredRoiPlanner", "CenteredRoiPlanner"]
    assert refines == [None, None, False]  # None: the model's stored setting
