"""The band random walker builds scikit-image's linear system bit for bit and returns its labels."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy import ndimage

from voxprompt.refine import RefineConfig, band_seeds, normalise_window, solve_random_walker
from voxprompt.refine.walker import band_random_walker, band_system

skimage_rw = pytest.importorskip("skimage.segmentation.random_walker_segmentation")


def _case(prune: bool, spacing=(1.5, 1.0, 0.8), shape=(30, 34, 38), seed=0):
    """A noisy sphere, a dilated mask of it and the refinement's band seeds (optionally pruned to -1)."""
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.indices(shape)
    c = np.array(shape) / 2
    sp = np.asarray(spacing)
    gt = sum(((g - ci) * s) ** 2 for g, ci, s in zip((zz, yy, xx), c, sp)) <= 12.0 ** 2
    img = gt * 1.0 + rng.normal(0, 0.3, shape)
    mask = ndimage.binary_dilation(gt, iterations=2)
    seeds = band_seeds(mask, [(c.astype(int), 1), (np.array([2, 2, 2]), 2)], sp, RefineConfig(band_mm=4.0))
    if prune:
        seeds = np.where((seeds > 0) & ~ndimage.binary_dilation(seeds == 0), -1, seeds)
    return normalise_window(img, (0.5, 99.5), 1.0), seeds.astype(np.int32), tuple(spacing)


def _skimage(data, labels, beta, spacing):
    from skimage.segmentation import random_walker

    with warnings.catch_warnings():  # CG round-off just outside [0, 1]
        warnings.simplefilter("ignore")
        return random_walker(data, labels.copy(), beta=beta, mode="cg_j", tol=1e-3, spacing=spacing)


@pytest.mark.parametrize("prune", [True, False])
def test_linear_system_is_scikit_image_s(prune):
    data, labels, spacing = _case(prune)
    lap, rhs, unknown = band_system(data, labels, 16000.0, spacing)
    pre, nlabels, mask, _, _ = skimage_rw._preprocess(labels.copy())
    ref_lap, ref_b = skimage_rw._build_linear_system(np.atleast_3d(data)[..., np.newaxis], np.asarray(spacing),
                                                     pre, nlabels, mask, 16000.0, False)
    assert np.array_equal(unknown, np.flatnonzero(labels == 0))
    assert np.array_equal(lap.indptr, ref_lap.indptr) and np.array_equal(lap.indices, ref_lap.indices)
    assert np.array_equal(lap.data, ref_lap.data)  # bit for bit, diagonal included
    assert np.array_equal(rhs, ref_b.toarray())


@pytest.mark.parametrize("prune,beta,spacing", [(True, 16000.0, (1.5, 1.0, 0.8)), (True, 130.0, (1.0, 1.0, 1.0)),
                                                (False, 2000.0, (0.7, 0.7, 2.5))])
def test_labels_equal_scikit_image(prune, beta, spacing):
    data, labels, spacing = _case(prune, spacing)
    got = band_random_walker(data, labels, beta, 1e-3, spacing)
    assert got is not None and got.dtype == labels.dtype
    assert np.array_equal(got, _skimage(data, labels, beta, spacing))
    assert ((got == 1) | (got == 2))[labels == 0].all()


def test_fortran_ordered_inputs():
    data, labels, spacing = _case(True)
    got = band_random_walker(np.asfortranarray(data), np.asfortranarray(labels), 500.0, 1e-3, spacing)
    assert np.array_equal(got, _skimage(data, labels, 500.0, spacing))


def test_out_of_scope_falls_back_to_scikit_image():
    """An undecided region without a seed next to it, or a 2D image: ``None`` from the band walker,
    and :func:`solve_random_walker` returns scikit-image's labels."""
    data, labels, spacing = _case(True)
    labels = labels.copy()
    labels[0:3, 0:3, 0:3] = -1  # an undecided pocket walled off by inactive voxels
    labels[1, 1, 1] = 0
    assert band_random_walker(data, labels, 500.0, 1e-3, spacing) is None
    ref = _skimage(data, labels, 500.0, spacing)
    assert np.array_equal(solve_random_walker(data, labels, 500.0, 1e-3, spacing), ref)
    pruned = solve_random_walker(data, labels, 500.0, 1e-3, spacing, prune=True)  # smaller graph, same band
    assert np.array_equal(pruned[labels == 0], ref[labels == 0]) and (pruned[labels != 0] != 0).all()
    assert band_random_walker(data[0], labels[0], 500.0, 1e-3, spacing[1:]) is None


def test_one_label_without_active_seeds_gives_the_band_to_the_other():
    data, labels, spacing = _case(True)
    one = np.where(labels == 1, -1, labels)  # every object seed inactive
    got = band_random_walker(data, one, 500.0, 1e-3, spacing)
    assert (got[labels == 0] == 2).all() and np.array_equal(got[labels != 0], one[labels != 0])


@pytest.mark.parametrize("beta", [500.0, 16000.0])
def test_difference_solve(beta, monkeypatch):
    """One CG solve of label 1 minus label 2: the same labels as the two solves once CG converges
    (the system is linear), one ``cg`` call instead of two, and close to scikit-image's labels at
    the refinement's tolerance."""
    import voxprompt.refine.walker as walker

    data, labels, spacing = _case(True)
    tight = (band_random_walker(data, labels, beta, 1e-10, spacing, difference=True),
             band_random_walker(data, labels, beta, 1e-10, spacing))
    band = labels == 0
    assert np.mean(tight[0][band] != tight[1][band]) < 1e-3  # ties of the exact solution aside
    calls = []
    real_cg = walker.cg
    monkeypatch.setattr(walker, "cg", lambda *a, **k: calls.append(1) or real_cg(*a, **k))
    got = band_random_walker(data, labels, beta, 1e-3, spacing, difference=True)
    assert len(calls) == 1 and ((got == 1) | (got == 2))[band].all()
    assert np.array_equal(got[~band], labels[~band])
    assert np.mean(got[band] != _skimage(data, labels, beta, spacing)[band]) < 0.1


def test_refine_config_solver_is_checked():
    from voxprompt.errors import UsageError

    assert RefineConfig().solver == "difference"  # the shipped default: one solve (the baseline keeps two)
    with pytest.raises(UsageError, match="solver"):
        RefineConfig(solver="exact")
