"""``voxprompt data pseudo``: unsupervised region labels on real images, for training.

Real images carry far more structures than any label map names. This turns each image of a built
dataset into several label maps of intensity-homogeneous regions (no annotation used): supervoxels,
then greedy merging of adjacent
supervoxels whose mean intensities differ by less than a tolerance (one label map per tolerance,
fine to coarse). A click in such a region should select it -- the skill a promptable model needs on
structures it has never seen (the classical random walker's whole strength), learned from real
contrasts and textures rather than from synthetic shapes alone.

Intensities are put on a fixed scale (CT: HU / 1000; MR: intensity / its 99th body percentile), so
a tolerance means the same in every image. Supervoxels: a watershed of the gradient magnitude of
the lightly smoothed image, seeded at the lowest-gradient voxel of every cell of a regular grid
inside the body (SLIC-like, but near-linear time: SLIC took minutes on the 1.5 mm chest CT).

Held-out structures stay unseen: regions that overlap a ``test`` target of their case by more than
``EXCLUDE_OVERLAP`` of their voxels are dropped, and cases can be left out entirely (the default
keeps out ``colin27_aal``, the held-out brain subject, whose AAL labels are research-use only).

Output: an nnU-Net v2 raw dataset (``imagesTr``, ``labelsTr``, ``dataset.json``, ``targets.csv``,
all targets ``train``), cases named ``{case}_pl{level}``; use it as a training ``data`` source.
"""
from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from scipy import ndimage

from ..errors import UsageError
from ..io.read import read_image
from ..io.write import write_mask
from .build import TargetRow, write_targets
from .readers import open_dataset
from .sources import body_mask as largest_component

log = logging.getLogger(__name__)

EXCLUDE_OVERLAP = 0.05  # drop a region when more than this share of it lies in a held-out target
DEFAULT_EXCLUDE_CASES = ("colin27_aal",)


@dataclass(frozen=True)
class PseudoConfig:
    """How regions are formed (sizes in voxels of the dataset's grid)."""

    supervoxel_voxels: int = 343  # grid step of the watershed seeds = cube root (7 voxels)
    smooth_sigma: float = 0.7  # Gaussian smoothing (voxels) of the image
    gradient_sigma: float = 1.0  # Gaussian scale of the gradient magnitude
    tolerances: tuple[float, ...] = (0.025, 0.05, 0.1)  # merge tolerances (fixed scale), one map each
    min_voxels: int = 200  # smaller regions are dropped (as MIN_VOXELS of the real build)
    max_voxels: int = 150_000  # larger regions are dropped (no anatomy-like target left)


def body_mask(array: np.ndarray, modality: str) -> np.ndarray:
    """Foreground (body or head): above air, largest connected component, holes filled."""
    if modality == "CT":
        threshold = -950.0
    else:
        positive = array[array > 0]
        threshold = 0.1 * float(np.percentile(positive, 50)) if positive.size else 0.0
    return ndimage.binary_fill_holes(largest_component(array, threshold))


def intensity_scale(array: np.ndarray, modality: str, body: np.ndarray) -> np.ndarray:
    """Intensities on a fixed scale for merging: CT HU / 1000, MR / 99th percentile in the body."""
    if modality == "CT":
        return array.astype(np.float32) / 1000.0
    p99 = float(np.percentile(array[body], 99)) if body.any() else 1.0
    return array.astype(np.float32) / (p99 if p99 > 0 else 1.0)


def grid_seeds(gradient: np.ndarray, body: np.ndarray, step: int) -> np.ndarray:
    """Markers: in every ``step``-sided grid cell, the body voxel of lowest gradient (so that no
    seed sits on an edge); label k at the k-th seed, 0 elsewhere."""
    g = np.where(body, gradient, np.inf).astype(np.float32)
    padded = [int(np.ceil(s / step)) * step for s in g.shape]
    cells = np.full(padded, np.inf, np.float32)
    cells[tuple(slice(0, s) for s in g.shape)] = g
    n = [s // step for s in padded]
    nd = g.ndim
    order = [2 * i for i in range(nd)] + [2 * i + 1 for i in range(nd)]
    cells = cells.reshape([x for k in n for x in (k, step)]).transpose(order).reshape(*n, -1)
    offset = np.stack(np.unravel_index(cells.argmin(-1), (step,) * nd), -1)
    corner = np.stack(np.meshgrid(*[np.arange(k) * step for k in n], indexing="ij"), -1)
    points = (corner + offset)[np.isfinite(cells.min(-1))]
    markers = np.zeros(g.shape, np.int32)
    markers[tuple(points.T)] = np.arange(1, len(points) + 1)
    return markers


def supervoxels(values: np.ndarray, body: np.ndarray, cfg: PseudoConfig) -> np.ndarray:
    """Watershed of the gradient magnitude of ``values`` inside ``body``, one seed per grid cell."""
    from skimage.segmentation import watershed

    step = max(2, round(cfg.supervoxel_voxels ** (1 / values.ndim)))
    gradient = ndimage.gaussian_gradient_magnitude(values, cfg.gradient_sigma)
    return watershed(gradient, grid_seeds(gradient, body, step), mask=body).astype(np.int32)


def merge_supervoxels(seg: np.ndarray, values: np.ndarray, tol: float) -> np.ndarray:
    """Greedily merge adjacent labels (> 0) of ``seg`` while their running mean ``values`` differ by
    at most ``tol``, weakest edges first; returns consecutive labels (0 stays background)."""
    n = int(seg.max()) + 1
    count = np.bincount(seg.ravel(), minlength=n).astype(np.float64)
    total = np.bincount(seg.ravel(), weights=values.ravel().astype(np.float64), minlength=n)
    pairs = []
    for ax in range(seg.ndim):
        a = np.moveaxis(seg, ax, 0)[:-1].ravel()
        b = np.moveaxis(seg, ax, 0)[1:].ravel()
        keep = (a != b) & (a > 0) & (b > 0)
        pairs.append(np.stack([np.minimum(a[keep], b[keep]), np.maximum(a[keep], b[keep])], 1))
    edges = np.unique(np.concatenate(pairs), axis=0) if pairs else np.zeros((0, 2), int)
    mean = total / np.maximum(count, 1)
    diff = np.abs(mean[edges[:, 0]] - mean[edges[:, 1]])
    parent = np.arange(n)

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for i in np.argsort(diff, kind="stable"):
        if diff[i] > tol:
            break
        ra, rb = find(int(edges[i, 0])), find(int(edges[i, 1]))
        if ra == rb or abs(total[ra] / count[ra] - total[rb] / count[rb]) > tol:
            continue
        parent[rb] = ra
        count[ra] += count[rb]
        total[ra] += total[rb]
    roots = np.array([find(i) for i in range(n)])
    roots[0] = 0
    return consecutive(roots[seg])


def consecutive(labels: np.ndarray) -> np.ndarray:
    """Relabel the positive labels to 1..K in increasing order; 0 stays 0."""
    ids = np.unique(labels)
    ids = ids[ids > 0]
    lut = np.zeros(int(labels.max()) + 1 if labels.size else 1, np.int32)
    lut[ids] = np.arange(1, len(ids) + 1)
    return lut[labels]


def region_maps(array: np.ndarray, modality: str, cfg: PseudoConfig,
                exclude: Optional[np.ndarray] = None) -> list[np.ndarray]:
    """One region label map per tolerance in ``cfg.tolerances`` (coarser as the tolerance grows).

    Regions outside ``[cfg.min_voxels, cfg.max_voxels]`` are dropped, and with ``exclude`` (bool,
    same grid) so are regions with more than ``EXCLUDE_OVERLAP`` of their voxels in it.
    """
    body = body_mask(array, modality)
    if body.sum() < cfg.min_voxels:
        return []
    values = intensity_scale(ndimage.gaussian_filter(array.astype(np.float32), cfg.smooth_sigma), modality, body)
    seg = supervoxels(values, body, cfg)
    maps = []
    for tol in cfg.tolerances:
        regions = merge_supervoxels(seg, values, tol)
        count = np.bincount(regions.ravel())
        drop = (count < cfg.min_voxels) | (count > cfg.max_voxels)
        if exclude is not None and exclude.any():
            inside = np.bincount(regions[exclude], minlength=len(count))
            drop |= inside > EXCLUDE_OVERLAP * np.maximum(count, 1)
        drop[0] = False
        regions[drop[regions]] = 0
        maps.append(consecutive(regions))
    return maps


def build_pseudo(src: str | Path, out_dir: str | Path, cases: Optional[Sequence[str]] = None,
                 exclude_cases: Sequence[str] = DEFAULT_EXCLUDE_CASES, cfg: PseudoConfig = PseudoConfig(),
                 force: bool = False) -> dict:
    """Write the pseudo-label dataset of the built dataset ``src`` to ``out_dir`` (atomically)."""
    src, out_dir = Path(src), Path(out_dir)
    if not (src / "targets.csv").is_file():  # the held-out split lives there
        raise UsageError(f"{src}: no targets.csv (build it with `voxprompt data build {src}`)")
    rows = open_dataset(src)
    meta = json.loads((src / "dataset.json").read_text())
    available = list(dict.fromkeys(t.case for t in rows))
    chosen = [c for c in (cases or available) if c not in exclude_cases]
    unknown = [c for c in chosen if c not in available]
    if unknown:
        raise UsageError(f"{src}: no case(s) {', '.join(unknown)}; it has {', '.join(available)}")
    if not chosen:
        raise UsageError("no cases left to label (all excluded)")
    if out_dir.exists() and any(out_dir.iterdir()) and not force:
        raise UsageError(f"{out_dir} exists and is not empty (use --force to replace it)")
    t0 = time.time()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        (tmp / "imagesTr").mkdir()
        (tmp / "labelsTr").mkdir()
        targets: list[TargetRow] = []
        case_meta = {}
        for case in chosen:
            case_rows = [t for t in rows if t.case == case]
            modality = case_rows[0].modality or "MR"
            image = read_image(case_rows[0].image_path)
            exclude = None
            held_out = [t.label for t in case_rows if t.split == "test"]
            if held_out:
                exclude = np.isin(read_image(case_rows[0].label_path).array, held_out)
            log.info("pseudo labels for %s (%s, %s)", case, modality, "x".join(map(str, image.shape)))
            for level, regions in enumerate(region_maps(image.array, modality, cfg, exclude)):
                name = f"{case}_pl{level}"
                shutil.copyfile(case_rows[0].image_path, tmp / "imagesTr" / f"{name}_0000.nii.gz")
                write_mask(regions, image, tmp / "labelsTr" / f"{name}.nii.gz")
                count = np.bincount(regions.ravel())
                targets += [TargetRow(name, k, f"region_{k}", modality, int(count[k]), "train")
                            for k in range(1, len(count)) if count[k]]
                case_meta[name] = {"source_case": case, "tolerance": cfg.tolerances[level],
                                   "regions": int(len(count) - 1),
                                   "licence": meta.get("cases", {}).get(case, {}).get("licence", "")}
        write_targets(tmp / "targets.csv", targets)
        dataset = {
            "name": "voxprompt pseudo-label regions",
            "description": "unsupervised intensity regions (watershed supervoxels + merging) on real images; no annotation used",
            "channel_names": {"0": "CT" if all(t.modality == "CT" for t in targets) else "image"},
            "labels": {"background": 0},
            "numTraining": len(case_meta),
            "file_ending": ".nii.gz",
            "source": str(src),
            "config": {k: getattr(cfg, k) for k in cfg.__dataclass_fields__},
            "excluded_cases": list(exclude_cases),
            "exclude_overlap": EXCLUDE_OVERLAP,
            "cases": case_meta,
        }
        (tmp / "dataset.json").write_text(json.dumps(dataset, indent=1))
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"out_dir": str(out_dir), "cases": list(case_meta), "targets": len(targets),
            "seconds": round(time.time() - t0, 1)}
