"""scikit-image's random walker (``mode="cg_j"``) with the linear system built on the band only.

``skimage.segmentation.random_walker`` builds the graph of the *whole* array -- every edge, its
weight, a relabelling sort of all edge ends and a sparse Laplacian -- and only then drops the
inactive voxels (label -1). Boundary refinement passes a crop in which most voxels are inactive
seeds, so that set-up costs more than the solve. :func:`band_random_walker` builds the same
linear system from the undecided voxels and their neighbours alone: the same edge weights
(``exp(-beta / (10 std) * (diff / spacing)^2) + 1e-10``, std over the whole array), the same
node order (C order), the same Laplacian diagonal (column sums accumulated in ascending node
order), the same canonical CSR matrix, right-hand sides and Jacobi preconditioner, then the same
SciPy CG call per label (``rtol=tol, atol=0``) and the same argmax. The system is therefore
identical bit for bit, and so are the labels (``tests/test_walker.py`` checks the matrices against
scikit-image's own ``_build_linear_system``).

``difference=True`` (``RefineConfig(solver="difference")``, the refinement's default) solves once,
for the difference of the two labels, instead of once per label: faster, but no longer scikit-image's
labels (see :func:`band_random_walker`); the classical baseline keeps the two solves, so it stays
scikit-image's walker.

Scope: 3D arrays, labels -1 (inactive) / 0 (undecided) / 1 / 2 as :func:`voxprompt.refine.band_seeds`
makes them, every undecided region touching a seed. Anything else returns ``None`` and the caller
runs scikit-image itself.
"""
from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np
from scipy import ndimage, sparse
from scipy.sparse.linalg import LinearOperator, cg

EPS = 1.0e-10  # scikit-image's weight floor


class RefineCancelled(Exception):
    """A refinement stopped because its ``cancel`` event was set (its result is no longer wanted)."""


def check_cancel(cancel: threading.Event | None) -> None:
    """Raise :class:`RefineCancelled` when ``cancel`` is set."""
    if cancel is not None and cancel.is_set():
        raise RefineCancelled("refinement cancelled")


def band_random_walker(data: np.ndarray, labels: np.ndarray, beta: float, tol: float,
                       spacing: Sequence[float], difference: bool = False,
                       cancel: threading.Event | None = None) -> np.ndarray | None:
    """Labels as ``random_walker(data, labels, beta, mode="cg_j", tol=tol, spacing=spacing)`` returns
    them (``labels`` with every 0 replaced by 1 or 2), or ``None`` outside this function's scope.

    ``difference=True``: one CG solve instead of two, on the difference of the two right-hand
    sides (same matrix, preconditioner and tolerance); a voxel takes label 1 where the solution is
    >= 0. With exact solves this is scikit-image's argmax (the system is linear); stopped at
    ``tol`` it is a different early-stopped answer, at half the cost.

    ``cancel``: checked after the set-up and at every CG iteration; when set, :class:`RefineCancelled`
    is raised (a session drops a refinement the user's next prompt has made stale)."""
    system = band_system(data, labels, beta, spacing)
    check_cancel(cancel)
    if system is None:
        return None
    lap, rhs, unknown = system
    out = np.array(labels, copy=True, order="C")  # C order: ``unknown`` holds C-order indices
    flat = out.reshape(-1)
    has = [bool(np.any(rhs[:, k] > 0)) for k in (0, 1)]
    if not all(has):  # one label's seeds all inactive: the other one takes the band
        flat[unknown] = 1 if has[0] else 2
        return out
    n = unknown.size
    inverse = 1.0 / lap.diagonal()  # Jacobi: the same products as a diagonal matrix's, without its dispatch
    precond = LinearOperator((n, n), matvec=lambda r: inverse * r.reshape(-1), dtype=np.float64)
    callback = None if cancel is None else (lambda _x: check_cancel(cancel))
    if difference:
        d = cg(lap, rhs[:, [0]] - rhs[:, [1]], rtol=tol, atol=0, M=precond, callback=callback)[0]
        flat[unknown] = np.where(d >= 0, 1, 2)
        return out
    solved = [cg(lap, rhs[:, [k]], rtol=tol, atol=0, M=precond, callback=callback)[0] for k in (0, 1)]
    flat[unknown] = np.argmax(np.asarray(solved), axis=0) + 1
    return out


def band_system(data: np.ndarray, labels: np.ndarray, beta: float,
                spacing: Sequence[float]) -> tuple[sparse.csr_array, np.ndarray, np.ndarray] | None:
    """The walker's linear system on the undecided voxels: the Laplacian block ``(n, n)`` (canonical
    CSR), the right-hand sides ``(n, 2)`` (labels 1 and 2) and the undecided voxels' flat indices
    (C order) -- equal bit for bit to scikit-image's -- or ``None`` outside the module's scope."""
    if data.ndim != 3 or labels.shape != data.shape or data.dtype != np.float64:
        return None
    lab = np.ascontiguousarray(labels).ravel()
    if lab.min() < -1 or lab.max() > 2:
        return None
    unknown = np.flatnonzero(lab == 0)
    n = unknown.size
    if n == 0:
        return None
    values = np.ascontiguousarray(data).ravel()
    scale = -beta / (10 * data[..., np.newaxis].std())
    sp = np.asarray(spacing, dtype=float)
    coords = np.unravel_index(unknown, data.shape)
    strides = (data.shape[1] * data.shape[2], data.shape[2], 1)
    node = np.full(lab.size, -1, dtype=np.int64)  # flat index -> row of the system (the undecided voxels')
    node[unknown] = np.arange(n)
    colsum = np.zeros(n)  # the Laplacian's column sums, accumulated in ascending node order
    rhs = np.zeros((n, 2))
    cols: list[np.ndarray] = []
    vals: list[np.ndarray] = []
    # the six neighbours in ascending node order; the diagonal sits between -1 and +1 on the last axis
    for axis, sign in [(0, -1), (1, -1), (2, -1), (2, 1), (1, 1), (0, 1)]:
        if (axis, sign) == (2, 1):
            cols.append(np.arange(n))
            vals.append(colsum)  # placeholder until every column sum is in
        valid = (coords[axis] > 0) if sign < 0 else (coords[axis] < data.shape[axis] - 1)
        nb = np.where(valid, unknown + sign * strides[axis], unknown)
        nl = np.where(valid, lab[nb], -1)
        lower, upper = (nb, unknown) if sign < 0 else (unknown, nb)
        grad = (values[upper] - values[lower]) / sp[axis]
        weight = np.exp(scale * grad ** 2)
        weight += EPS
        colsum = colsum + np.where(nl >= 0, -weight, 0.0)
        for k in (0, 1):
            rhs[:, k] = rhs[:, k] + np.where(nl == k + 1, weight, 0.0)
        cols.append(np.where(nl == 0, node[nb], -1))
        vals.append(-weight)
    vals[3] = -colsum
    if not _every_region_seeded(lab == 0, rhs.sum(axis=1) > 0, data.shape, unknown):
        return None
    col, val = np.stack(cols, axis=1), np.stack(vals, axis=1)
    keep = col >= 0
    indptr = np.concatenate(([0], np.cumsum(keep.sum(axis=1))))
    return sparse.csr_array((val[keep], col[keep], indptr), shape=(n, n)), rhs, unknown


def _every_region_seeded(undecided: np.ndarray, reached: np.ndarray, shape: tuple[int, ...],
                         unknown: np.ndarray) -> bool:
    """True when every 6-connected region of undecided voxels (flat ``undecided``) has a voxel next
    to a seed (else scikit-image would drop the region, and its block of the system is singular)."""
    regions, count = ndimage.label(undecided.reshape(shape))
    seeded = np.zeros(count + 1, dtype=bool)
    seeded[regions.reshape(-1)[unknown[reached]]] = True
    return bool(seeded[1:].all())


__all__ = ["band_random_walker", "band_system"]
