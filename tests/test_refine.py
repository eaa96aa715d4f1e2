"""Boundary refinement (voxprompt.refine) and its use in the 3D Session."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from voxprompt.errors import InputError, UsageError
from voxprompt.eval.metrics import dice, nsd
from voxprompt.refine import (
    RefineConfig,
    band_seeds,
    draw_seed_balls,
    normalise_window,
    refine_mask,
    resolve_refine,
    solve_random_walker,
)

pytest.importorskip("skimage")

SPACING = (2.0, 1.0, 1.0)


def _ellipsoid(shape, centre, radii_mm, spacing=SPACING):
    grid = np.indices(shape).astype(float)
    return sum(((g - c) * s / r) ** 2 for g, c, r, s in zip(grid, centre, radii_mm, spacing)) <= 1.0


@pytest.fixture(scope="module")
def scene():
    rng = np.random.default_rng(0)
    gt = _ellipsoid((24, 48, 48), (12, 24, 24), (14.0, 12.0, 9.0))
    image = 300.0 * gt + rng.normal(0.0, 40.0, gt.shape) + 100.0
    return image, gt


def _coarse(gt: np.ndarray, factor: int = 4) -> np.ndarray:
    """What a model at ``factor``x coarser resolution sees: a blocky, shifted version of ``gt``."""
    small = ndimage.zoom(gt.astype(float), 1.0 / factor, order=1) > 0.5
    up = ndimage.zoom(small.astype(np.uint8), factor, order=0).astype(bool)
    out = np.zeros_like(gt)
    sl = tuple(slice(0, min(a, b)) for a, b in zip(gt.shape, up.shape))
    out[sl] = up[sl]
    return np.roll(out, 1, axis=2)  # and one voxel off


def test_refinement_snaps_a_coarse_mask_to_the_image_edges(scene):
    image, gt = scene
    coarse = _coarse(gt)
    cfg = RefineConfig(band_mm=4.0)
    click = ((12, 24, 24), 1)
    out = refine_mask(image, coarse, [click], SPACING, cfg)
    assert out.dtype == bool and out.shape == gt.shape
    assert dice(out, gt) > dice(coarse, gt) + 0.05 and dice(out, gt) > 0.9
    assert nsd(out, gt, SPACING, 1.0) > nsd(coarse, gt, SPACING, 1.0) + 0.2
    # nothing farther than band_mm from the model's boundary changes
    far_in = ndimage.distance_transform_edt(coarse, sampling=SPACING) > cfg.band_mm
    far_out = ndimage.distance_transform_edt(~coarse, sampling=SPACING) > cfg.band_mm
    assert out[far_in].all() and not out[far_out].any()
    assert not coarse.flags.writeable or not np.shares_memory(out, coarse)


def test_clicks_are_seeds_and_thin_parts_keep_their_core(scene):
    image, gt = scene
    coarse = _coarse(gt)
    # a negative click inside the object near the boundary wins over the image
    neg = (12, 24, 24 + 7)
    out = refine_mask(image, coarse, [((12, 24, 24), 1), (neg, 0)], SPACING, RefineConfig(band_mm=4.0))
    assert not out[neg]
    # a one-voxel-thin line on a noise image is kept (its core is its own voxels)
    line = np.zeros((8, 20, 20), bool)
    line[4, 10, 3:17] = True
    noise = np.random.default_rng(1).normal(size=line.shape)
    assert refine_mask(noise, line, [], (1.0, 1.0, 1.0))[line].all()
    # a flat image has no edges: the mask is returned as is
    np.testing.assert_array_equal(refine_mask(np.zeros(coarse.shape), coarse, [], SPACING), coarse)
    # an empty mask stays empty, without solving anything
    assert not refine_mask(image, np.zeros_like(gt), [((1, 1, 1), 1)], SPACING).any()


def test_seed_balls_clip_and_later_points_win():
    seeds = np.zeros((5, 5, 5), np.int32)
    drawn = draw_seed_balls(seeds, [((0, 0, 0), 2), ((1, 0, 0), 1), ((9, 9, 9), 1)], 1)
    assert seeds[0, 0, 0] == 1 and seeds[0, 1, 0] == 2 and seeds[2, 0, 0] == 1
    assert drawn.sum() == (seeds > 0).sum() and seeds[4, 4, 4] == 0  # far point: nothing


@pytest.mark.parametrize("call, err, match", [
    (lambda: refine_mask(np.zeros((4, 4, 4)), np.zeros((4, 4, 3), bool), [], (1, 1, 1)), InputError, "shape"),
    (lambda: refine_mask(np.zeros((4, 4, 4)), np.zeros((4, 4, 4), bool), [], (1, 1)), InputError, "spacing"),
    (lambda: refine_mask(np.zeros((4, 4, 4)), np.zeros((4, 4, 4), bool), [], (1, 0, 1)), InputError, "spacing"),
    (lambda: RefineConfig(band_mm=0), UsageError, "RefineConfig"),
    (lambda: RefineConfig(percentiles=(50, 10)), UsageError, "percentiles"),
])
def test_bad_arguments_raise_typed_errors(call, err, match):
    with pytest.raises(err, match=match):
        call()


def test_session_refine_changes_only_the_shown_mask(scene):
    import voxprompt
    from voxprompt.session import Session

    torch.manual_seed(0)
    image, gt = scene
    from voxprompt.models.zoo import SMALL_MED3D

    tiny = {**SMALL_MED3D.to_dict(), "img_size": 32, "embed_dim": 32, "depth": 1, "num_heads": 2,
            "global_attn_indexes": [0], "prompt_embed_dim": 24, "decoder_num_heads": 2, "decoder_mlp_dim": 32,
            "iou_head_hidden_dim": 16, "mask_in_chans": 4, "roi_spacing_mm": 2.0}
    model = voxprompt.load_model("voxprompt-med3d-small", pretrained=False, config=tiny)
    plain = Session(model, refine=False, clean=False)  # the refinement alone (clean-up: test_session.py)
    refined = Session(model, refine=RefineConfig(band_mm=3.0), clean=False)
    for s in (plain, refined):
        s.set_image(image, spacing=SPACING)
    p, r = plain.add_point((12, 24, 24)), refined.add_point((12, 24, 24))
    torch.testing.assert_close(refined._obj.logits, plain._obj.logits, rtol=0, atol=0)  # model state untouched
    np.testing.assert_array_equal(r.probabilities, p.probabilities)
    expected = refine_mask(image, p.mask, [((12, 24, 24), 1)], SPACING, RefineConfig(band_mm=3.0))
    if p.mask.any():
        np.testing.assert_array_equal(r.mask, expected)
    refined.add_point((12, 24, 30), positive=False)
    np.testing.assert_array_equal(refined.undo().mask, r.mask)  # undo restores the refined mask
    with pytest.raises(UsageError, match="refine"):
        Session(model, refine="yes")


def test_resolve_refine_follows_the_model_config():
    from types import SimpleNamespace

    off, on = SimpleNamespace(refine_band_mm=0.0), SimpleNamespace(refine_band_mm=6.0)
    assert resolve_refine(None, off) is None and resolve_refine(False, on) is None
    assert resolve_refine(None, on) == RefineConfig(band_mm=6.0) == resolve_refine(True, on)
    assert resolve_refine(True, off) == RefineConfig()
    explicit = RefineConfig(band_mm=2.0, beta=100.0)
    assert resolve_refine(explicit, on) is explicit
    assert resolve_refine(None, SimpleNamespace()) is None  # configs without the field (2D, SAM-UNet)


def test_pruned_walker_graph_gives_the_full_graphs_answer(scene):
    """Seeds without an undecided neighbour are left out of the walker's graph: same labels."""
    image, gt = scene
    coarse, cfg = _coarse(gt), RefineConfig(band_mm=13.0, beta=16000.0)
    seeds = band_seeds(coarse, [(np.array([12, 24, 24]), 1)], np.asarray(SPACING), cfg)
    full = solve_random_walker(normalise_window(image, cfg.percentiles, cfg.smooth_sigma), seeds, cfg.beta,
                               cfg.tol, SPACING, difference=cfg.solver == "difference") == 1
    # a 13 mm band: the mask's bbox plus the pad covers the whole scene, so the crops coincide
    np.testing.assert_array_equal(refine_mask(image, coarse, [((12, 24, 24), 1)], SPACING, cfg), full)


def test_grid_factors_bring_fine_axes_to_the_grid():
    from voxprompt.refine import grid_factors

    assert grid_factors((0.75, 0.75, 1.25), 1.5).tolist() == [2, 2, 1]
    assert grid_factors((0.5, 1.5, 3.0), 1.5).tolist() == [3, 1, 1]
    assert grid_factors((0.5, 0.5, 0.5), 0.0).tolist() == [1, 1, 1]


def test_grid_cap_leaves_coarse_images_unchanged(scene):
    image, gt = scene
    coarse, click = _coarse(gt), [((12, 24, 24), 1)]
    a = refine_mask(image, coarse, click, (2.0, 1.5, 1.6), RefineConfig(band_mm=4.0))
    b = refine_mask(image, coarse, click, (2.0, 1.5, 1.6), RefineConfig(band_mm=4.0, grid_mm=0.0))
    assert np.array_equal(a, b)


def test_grid_cap_on_a_fine_image_solves_fewer_unknowns_as_well(monkeypatch):
    """At 0.5 mm in-plane the band is walked on 1.5 mm blocks, then one block's width on the image
    grid: fewer unknowns in all, about the same boundary."""
    import voxprompt.refine.boundary as refine_mod

    spacing = (1.0, 0.5, 0.5)
    rng = np.random.default_rng(1)
    gt = _ellipsoid((30, 72, 72), (15, 36, 36), (11.0, 12.0, 9.0), spacing)
    image = 300.0 * gt + rng.normal(0.0, 40.0, gt.shape) + 100.0
    coarse = _coarse(gt, 6)
    unknowns = []
    solve = refine_mod.solve_random_walker

    def spy(data, seeds, *args, **kwargs):
        unknowns.append(int((seeds == 0).sum()))
        return solve(data, seeds, *args, **kwargs)

    monkeypatch.setattr(refine_mod, "solve_random_walker", spy)
    click = [((15, 36, 36), 1)]
    capped = refine_mask(image, coarse, click, spacing, RefineConfig(band_mm=3.0))
    native = refine_mask(image, coarse, click, spacing, RefineConfig(band_mm=3.0, grid_mm=0.0))
    assert len(unknowns) == 3  # coarse band, thin native band; then the native run's one band
    assert 2 * (unknowns[0] + unknowns[1]) < unknowns[2]
    assert capped.shape == gt.shape and capped.dtype == bool
    assert dice(capped, gt) > dice(coarse, gt) + 0.1 and dice(capped, gt) > 0.95
    assert abs(dice(capped, gt) - dice(native, gt)) < 0.02


def test_band_seeds_equal_their_distance_transform_definition():
    """Seeds by erosion (a narrow band) or by the exact transform give the definition's seeds exactly."""
    from scipy import ndimage

    from voxprompt.refine.boundary import band_seeds

    def reference(mask, spacing, band):
        depth = ndimage.distance_transform_edt(mask, sampling=spacing)
        outside = ndimage.distance_transform_edt(~mask, sampling=spacing)
        seeds = np.zeros(mask.shape, dtype=np.int32)
        seeds[depth > min(band, 0.5 * float(depth.max()))] = 1
        if not seeds.any():
            seeds[mask] = 1
        seeds[outside > band] = 2
        return seeds

    rng = np.random.default_rng(3)
    checked = 0
    for i in range(40):
        shape = tuple(int(v) for v in rng.integers(8, 32, 3))
        grid = np.indices(shape).astype(float)
        c, r = np.array(shape) * rng.uniform(0.2, 0.8, 3), np.array(shape) * rng.uniform(0.05, 0.6, 3)
        m = (((grid - c[:, None, None, None]) / r[:, None, None, None]) ** 2).sum(0) < 1
        if i % 2:
            m &= rng.random(shape) > 0.05
        if not m.any():
            continue
        sp = rng.choice([0.703125, 1.0, 1.5, 2.5], 3)
        for band in (1.40625, float(max(sp)), 9.0):
            np.testing.assert_array_equal(band_seeds(m, [], sp, RefineConfig(band_mm=band)), reference(m, sp, band))
            checked += 1
    assert checked > 90
