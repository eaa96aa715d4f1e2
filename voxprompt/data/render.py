"""Images rendered from label maps with random contrasts (domain randomisation, as SynthSeg does).

A label map becomes an image in which every label gets a random mean intensity and texture, then
random blur, thick anisotropic slices, a bias field, a gamma change and noise; for training ROIs the
map may first be deformed elastically. The same anatomy thus appears with contrasts no scanner gave
it (abdominal MR, PET, other CT kernels), so a model must find boundaries from the label layout
under the click, not from one modality's intensities.

Two users:

* training (:func:`render_labels`, ``voxprompt.train.samples``): a ROI's label map, tensor-axis
  order, shape ``(S, S, S)``; the result is normalised exactly as at inference
  (:func:`zscore_positive`);
* the **synthetic-contrast evaluation set** (:func:`render_dataset`, ``voxprompt data render SRC OUT
  --split test``): every case of a built dataset rendered whole (any 3D shape, no deformation) from
  the labels of one split, written as a new nnU-Net v2 raw dataset whose targets have modality
  :data:`SYNTH_MODALITY` (the report's group "synthetic contrasts").

Arrays of any 3D shape are accepted; a cubic input gives bit for bit what the cube-only code did
(same random draws in the same order).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
from scipy import ndimage

from ..errors import UsageError
from ..io.image import Image
from ..io.write import write_mask
from ..preprocess import zscore_positive

log = logging.getLogger(__name__)

MIN_TARGET_CONTRAST = 0.08  # |target mean - its surroundings' mean| on the [0, 1] intensity scale
SYNTH_MODALITY = "SYN"  # modality of rendered cases (targets.csv, dataset.json)
SYNTH_PREFIX = "synth_"  # case-name prefix of rendered cases

Shape = Union[int, Sequence[int]]


@dataclass(frozen=True)
class RenderConfig:
    """Ranges of the random rendering (defaults follow SynthSeg's spirit, sized for 64^3 ROIs)."""

    deform_voxels: float = 2.0  # largest elastic displacement
    deform_prob: float = 0.5
    texture_max: float = 0.12  # per-label texture amplitude
    blur_max: float = 1.0  # Gaussian sigma per axis, voxels
    thick_slice_prob: float = 0.3  # one axis averaged over 2-5 voxels (thick, anisotropic slices)
    bias_max: float = 0.4
    gamma_std: float = 0.25
    noise_max: float = 0.05
    dark_label_prob: float = 0.1  # a non-target label rendered below zero (air in CT: left out of the z-score)


EVAL_RENDER = RenderConfig(deform_prob=0.0)  # the evaluation set: the training ranges, no elastic deformation


def _shape3(shape: Shape) -> tuple[int, int, int]:
    if np.ndim(shape) == 0:
        return (int(shape),) * 3
    out = tuple(int(s) for s in shape)
    if len(out) != 3:
        raise ValueError(f"expected a 3D shape, got {shape}")
    return out  # type: ignore[return-value]


def smooth_noise(rng: np.random.Generator, shape: Shape, cell: float) -> np.ndarray:
    """Smooth random field in [-1, 1]: coarse uniform noise upsampled trilinearly.

    ``shape`` is a side (a cube) or a 3D shape; the coarse grid has about one node per ``cell``
    voxels along each axis (a cube of side ``S`` and the shape ``(S, S, S)`` give the same field).
    """
    import torch
    import torch.nn.functional as F

    size = _shape3(shape)
    n = tuple(max(2, int(np.ceil(s / max(cell, 1.0))) + 1) for s in size)
    coarse = torch.from_numpy(rng.uniform(-1, 1, (1, 1, *n)).astype(np.float32))
    fine = F.interpolate(coarse, size=size, mode="trilinear", align_corners=True)[0, 0].numpy()
    peak = np.abs(fine).max()
    return fine / peak if peak > 0 else fine


def deform_labels(rng: np.random.Generator, labels: np.ndarray, amplitude: float) -> np.ndarray:
    """Labels warped by a smooth random displacement field of at most ``amplitude`` voxels (nearest)."""
    cell = rng.uniform(8, 24)
    grid = np.indices(labels.shape, dtype=np.float32)
    coords = [grid[a] + amplitude * smooth_noise(rng, labels.shape, cell) for a in range(3)]
    return ndimage.map_coordinates(labels, coords, order=0, mode="nearest")


def _ring(labels: np.ndarray, label: int) -> tuple[tuple[slice, ...], np.ndarray]:
    """The 2-voxel ring around ``label`` as (slices of a crop, bool mask in the crop): the same voxels,
    in the same order, as a dilation over the whole array, at the cost of the label's bounding box."""
    where = labels == label
    if not where.any():
        return (slice(0, 0),) * labels.ndim, np.zeros((0,) * labels.ndim, bool)
    sl = []
    for axis in range(labels.ndim):
        idx = np.flatnonzero(where.any(axis=tuple(a for a in range(labels.ndim) if a != axis)))
        sl.append(slice(max(0, int(idx[0]) - 2), min(labels.shape[axis], int(idx[-1]) + 3)))
    crop = where[tuple(sl)]
    return tuple(sl), ndimage.binary_dilation(crop, iterations=2) & ~crop


def render_intensities(rng: np.random.Generator, labels: np.ndarray, targets: Sequence[int], valid: np.ndarray,
                       cfg: RenderConfig = RenderConfig()) -> np.ndarray:
    """The rendered image before normalisation (float64, the shape of ``labels``).

    Every label id gets a random mean in [0.05, 1] and texture; each of ``targets`` (in the order
    given) is redrawn up to 10 times until its mean differs from the mean of the 2-voxel ring around
    it by :data:`MIN_TARGET_CONTRAST`, and is never one of the labels rendered below zero (with
    ``cfg.dark_label_prob``; values <= 0 are left out of the z-score, like CT air). Then blur, an
    optional thick-slice axis, bias field, gamma and noise; voxels outside ``valid`` are 0.
    """
    shape = labels.shape
    ids, inverse = np.unique(labels, return_inverse=True)
    inverse = inverse.reshape(shape)
    means = rng.uniform(0.05, 1.0, len(ids))
    target_idx = [int(np.searchsorted(ids, t)) for t in targets]
    for target, t in zip(targets, target_idx):
        sl, ring = _ring(labels, target)
        around_ids = inverse[sl][ring]
        for _ in range(10):  # the target must differ from what surrounds it, or there is nothing to learn
            around = means[around_ids].mean() if ring.any() else 0.5
            if abs(means[t] - around) >= MIN_TARGET_CONTRAST:
                break
            means[t] = rng.uniform(0.05, 1.0)
    dark = rng.random(len(ids)) < cfg.dark_label_prob
    dark[target_idx] = False
    means[dark] = -rng.uniform(0.3, 1.0, int(dark.sum()))
    stds = rng.uniform(0.0, cfg.texture_max, len(ids))
    texture = smooth_noise(rng, shape, rng.uniform(1.5, 6.0))
    image = means[inverse] + stds[inverse] * texture
    sigma = rng.uniform(0.0, cfg.blur_max, 3)
    if rng.random() < cfg.thick_slice_prob:
        axis = int(rng.integers(3))
        k = int(rng.integers(2, 6))
        image = ndimage.uniform_filter1d(image, k, axis=axis, mode="nearest")
        sigma[axis] = max(sigma[axis], k / 2.5)
    image = ndimage.gaussian_filter(image, sigma)
    image = image * np.exp(rng.uniform(0.0, cfg.bias_max) * smooth_noise(rng, shape, max(shape) / 2))
    pos = image > 0
    if pos.any():
        top = float(image[pos].max())
        image[pos] = top * (image[pos] / top) ** float(np.exp(rng.normal(0.0, cfg.gamma_std)))
    image = image + rng.normal(0.0, rng.uniform(0.0, cfg.noise_max), image.shape)
    image[~valid] = 0.0
    return image


def render_labels(rng: np.random.Generator, labels: np.ndarray, target: int, valid: np.ndarray,
                  cfg: RenderConfig = RenderConfig(), keep: np.ndarray | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """A normalised image and the target mask (uint8) rendered from a ROI label map.

    ``labels``: int, 3D (a ROI: ``(S, S, S)``); ``target``: the label id to segment; ``valid``: bool,
    the ROI's voxels inside the source image (outside stays 0, as real ROI padding); ``keep``: a voxel
    that must stay in the target after deformation (the first click), or None.
    """
    if cfg.deform_voxels > 0 and rng.random() < cfg.deform_prob:
        warped = deform_labels(rng, labels, cfg.deform_voxels)
        if (warped == target).sum() > 0 and (keep is None or warped[tuple(keep)] == target):
            labels = warped
    mask = (labels == target).astype(np.uint8)
    image = render_intensities(rng, labels, (target,), valid, cfg)
    return zscore_positive(image.astype(np.float32)), mask


# ----------------------------------------------------------------------------- the evaluation set
def case_rng(seed: int, case: str) -> np.random.Generator:
    """The generator of one case: depends on ``(seed, case)`` only, not on which cases are rendered."""
    digest = hashlib.sha256(f"{int(seed)}\0{case}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def render_case(rng: np.random.Generator, labels: np.ndarray, targets: Sequence[int],
                cfg: RenderConfig = EVAL_RENDER) -> tuple[np.ndarray, np.ndarray]:
    """A whole case: (float32 image before normalisation, label map with only ``targets``).

    Labels not in ``targets`` (other splits) melt into the background 0 before rendering, as the
    training pool does, so their boundaries are invisible. The image is not z-scored: a session
    normalises each ROI as at training time (values <= 0, labels rendered dark, are left out).
    """
    ids = np.asarray(sorted({int(t) for t in targets}))
    kept = np.where(np.isin(labels, ids), labels, 0)
    image = render_intensities(rng, kept, [int(t) for t in ids], np.ones(kept.shape, bool), cfg)
    return image.astype(np.float32), kept


def render_dataset(src: str | os.PathLike, out_dir: str | os.PathLike, split: str = "test", seed: int = 0,
                   cases: Optional[Sequence[str]] = None, force: bool = False, cfg: RenderConfig = EVAL_RENDER,
                   progress: bool = True):
    """Write the synthetic-contrast version of the built dataset ``src`` to ``out_dir`` (atomically).

    Each case with a ``split`` target (or each of ``cases``) becomes ``synth_<case>``: its image is
    rendered from the labels of the split's targets (:func:`render_case`, generator
    :func:`case_rng`), stored as float32 on the source image's grid (spacing, origin, direction); its
    label map keeps those labels only; ``targets.csv`` lists the same targets and splits with modality
    :data:`SYNTH_MODALITY`. Returns a :class:`~voxprompt.data.build.BuildResult`.
    """
    from tqdm import tqdm

    from .build import BuildResult, TargetRow, _check_out_dir, _publish, _umask, _write_image, write_targets
    from .readers import SPLITS, load_label_map, load_target, open_dataset

    t0 = time.perf_counter()
    src, out_dir = Path(src), Path(out_dir).absolute()
    if split not in SPLITS or not split:
        raise UsageError(f"split {split!r}: expected 'train', 'val' or 'test'")
    if not (src / "targets.csv").is_file() or not (src / "dataset.json").is_file():
        raise UsageError(f"{src}: no targets.csv / dataset.json (build it with `voxprompt data build {src}`)")
    if src.absolute() == out_dir:
        raise UsageError(f"{out_dir}: the output folder must differ from the source")
    targets = open_dataset(src, split=split)
    available = list(dict.fromkeys(t.case for t in targets))
    if not available:
        raise UsageError(f"{src}: no {split} targets")
    chosen = list(dict.fromkeys(cases)) if cases else available
    unknown = [c for c in chosen if c not in available]
    if unknown:
        raise UsageError(f"{src}: no {split} targets in case(s) {', '.join(unknown)}; cases with {split} "
                         f"targets: {', '.join(available)}")
    _check_out_dir(out_dir, force)
    meta = json.loads((src / "dataset.json").read_text())
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        os.chmod(tmp, 0o777 & ~_umask())
        (tmp / "imagesTr").mkdir()
        (tmp / "labelsTr").mkdir()
        rows: list = []
        entries: dict[str, dict] = {}
        labels_json: dict[str, int] = {}
        for case in tqdm(chosen, desc="render", unit="case", disable=not progress):
            case_targets = [t for t in targets if t.case == case]
            image, _ = load_target(case_targets[0])
            labels = load_label_map(case_targets[0])
            rendered, kept = render_case(case_rng(seed, case), labels, [t.label for t in case_targets], cfg)
            name = f"{SYNTH_PREFIX}{case}"
            geometry = Image(rendered, image.spacing, image.origin, image.direction)
            write_mask(kept, geometry, tmp / "labelsTr" / f"{name}.nii.gz")
            _write_image(geometry, tmp / "imagesTr" / f"{name}_0000.nii.gz")
            counts = np.bincount(kept.ravel().astype(np.int64))
            rows += [TargetRow(name, t.label, t.name, SYNTH_MODALITY, int(counts[t.label]), t.split)
                     for t in case_targets]
            labels_json.update({t.name: int(t.label) for t in case_targets})
            src_case = meta.get("cases", {}).get(case, {})
            entries[name] = {"modality": SYNTH_MODALITY, "source_case": case,
                             "source_modality": case_targets[0].modality, "shape_zyx": list(kept.shape),
                             "labels": {t.name: int(t.label) for t in case_targets},
                             "licence": meta.get("licence", {}).get(case, src_case.get("licence", "")),
                             "origin": meta.get("sources", {}).get(case, src_case.get("origin", ""))}
            log.info("rendered %s -> %s (%d %s targets)", case, name, len(case_targets), split)
        dataset = {
            "name": "voxprompt_synth",
            "description": f"the {split} targets of {src.name} with images rendered from their label maps "
                           "(random per-label contrast, texture, blur, bias field, gamma, noise; no "
                           "deformation): the synthetic-contrast evaluation set",
            "channel_names": {"0": "image"},
            "labels": {"background": 0, **dict(sorted(labels_json.items(), key=lambda kv: kv[1]))},
            "numTraining": len(entries),
            "file_ending": ".nii.gz",
            "spacing_mm": meta.get("spacing_mm"),
            "source": str(src),
            "split": split,
            "seed": int(seed),
            "render": asdict(cfg),
            "image_dtype": "float32 (rendered intensities before normalisation; <= 0 = left out of the z-score)",
            "licence": {n: e.pop("licence") for n, e in entries.items()},
            "sources": {n: e.pop("origin") for n, e in entries.items()},
            "cases": entries,
        }
        (tmp / "dataset.json").write_text(json.dumps(dataset, indent=2) + "\n")
        write_targets(tmp / "targets.csv", rows)
        _publish(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    result = BuildResult(out_dir, list(entries), rows, {}, time.perf_counter() - t0)
    log.info("rendered %s: %d cases, %d targets in %.1f s", out_dir, len(entries), len(rows), result.seconds)
    return result


__all__ = ["EVAL_RENDER", "MIN_TARGET_CONTRAST", "SYNTH_MODALITY", "SYNTH_PREFIX", "RenderConfig", "case_rng",
           "deform_labels", "render_case", "render_dataset", "render_intensities", "render_labels", "smooth_noise"]
