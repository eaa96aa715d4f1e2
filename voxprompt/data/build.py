"""``voxprompt data build``: resample labelled sources and write an nnU-Net v2 raw dataset.

Layout written (atomically: built in a temporary folder next to ``out_dir``, then renamed)::

    out_dir/dataset.json              nnU-Net v2 + per-case modality, labels, licence, origin
    out_dir/imagesTr/{case}_0000.nii.gz
    out_dir/labelsTr/{case}.nii.gz
    out_dir/targets.csv               case,label,name,modality,voxels,split

Label ids are made global over the dataset (one id per structure name, in source order), so
``dataset.json`` holds one consistent name -> id map; ``dataset.json["cases"][case]
["source_label_ids"]`` keeps the original ids.

The ``split`` column follows the structure-name rule of :mod:`voxprompt.data.split`, unless the
source fixes it for all its targets (``SourceCase.split``, recorded as ``dataset.json["cases"]
[case]["split"]``: the external evaluation sources ``robex`` and ``itk_t1`` are always ``test``,
TotalSegmentator's ``example_ct`` and StarDist's synthetic nuclei always ``train``) or maps the rule's answer
(``SourceCase.split_by_rule``: TotalSegmentator's DICOM patient puts the rule's held-out soft organs
and vessels in ``val`` and its bones and muscles in ``test``), except the structures it names as
validation (``SourceCase.val_structures``, side-free: a few of that patient's bones).
"""
from __future__ import annotations

import csv
import json
import logging
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional

import numpy as np
import SimpleITK as sitk

from ..errors import UsageError, VoxpromptError
from ..io.image import Image
from ..io.write import write_mask
from .fetch import DataUnavailable, cache_dir
from .sources import SOURCES, SourceCase, SourceFn
from .split import name_tokens, split_for

log = logging.getLogger(__name__)

MIN_VOXELS = 200
TARGET_COLUMNS = ("case", "label", "name", "modality", "voxels", "split")


@dataclass(frozen=True)
class TargetRow:
    """One line of ``targets.csv``."""

    case: str
    label: int
    name: str
    modality: str
    voxels: int
    split: str


@dataclass
class BuildResult:
    """What a build wrote."""

    out_dir: Path
    cases: list[str]
    targets: list[TargetRow]
    skipped: dict[str, str] = field(default_factory=dict)  # source key -> reason
    seconds: float = 0.0

    def count(self, split: str) -> int:
        return sum(t.split == split for t in self.targets)


def parse_sources(text: str) -> list[str]:
    """``"ct,colin27"`` -> ``["ct", "colin27"]``, checking every name."""
    keys = [k.strip() for k in text.split(",") if k.strip()]
    unknown = [k for k in keys if k not in SOURCES]
    if unknown or not keys:
        raise UsageError(f"unknown source(s) {', '.join(unknown) or '(none)'}; choose from {', '.join(SOURCES)}")
    return list(dict.fromkeys(keys))


def resample_isotropic(image: Image, spacing: float, nearest: bool, reference: Optional[Image] = None) -> Image:
    """Resample to ``spacing`` mm isotropic (linear, or nearest neighbour for labels).

    The output grid keeps the direction and the lower edge of the field of view; with
    ``reference`` the output uses that (already resampled) image's grid instead.
    """
    src = image.to_sitk()
    if reference is None:
        old = np.asarray(image.spacing)
        size = [max(1, int(round(n * s / spacing))) for n, s in zip(image.size_xyz, old)]
        shift = image.direction @ ((spacing - old) / 2.0)
        origin = tuple((np.asarray(image.origin) + shift).tolist())
        out_spacing, direction = (spacing,) * 3, image.direction
    else:
        size, origin = list(reference.size_xyz), reference.origin
        out_spacing, direction = reference.spacing, reference.direction
    f = sitk.ResampleImageFilter()
    f.SetSize([int(n) for n in size])
    f.SetOutputSpacing(out_spacing)
    f.SetOutputOrigin(origin)
    f.SetOutputDirection(np.asarray(direction).ravel().tolist())
    f.SetInterpolator(sitk.sitkNearestNeighbor if nearest else sitk.sitkLinear)
    if nearest:
        f.SetDefaultPixelValue(0)
    else:
        f.SetOutputPixelType(sitk.sitkFloat32)
        f.SetDefaultPixelValue(float(image.array.min()))
    out = sitk.GetArrayFromImage(f.Execute(src))
    if not nearest and np.issubdtype(image.array.dtype, np.integer):
        info = np.iinfo(image.array.dtype)
        out = np.clip(np.rint(out), info.min, info.max).astype(image.array.dtype)
    return Image(out, out_spacing, origin, direction, image.source_path)


def _write_image(image: Image, path: Path) -> None:
    sitk.WriteImage(image.to_sitk(), str(path), useCompression=True)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _check_out_dir(out_dir: Path, force: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"{out_dir}: exists and is not a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not force:
        raise UsageError(f"{out_dir}: folder is not empty; use --force to replace it")
    if not out_dir.parent.is_dir():
        raise UsageError(f"{out_dir}: parent folder {out_dir.parent} does not exist")


def _publish(tmp: Path, out_dir: Path) -> None:
    """Move the finished build to ``out_dir``, replacing an existing folder (checked earlier)."""
    old = None
    if out_dir.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
        os.replace(out_dir, old / "d")
    os.replace(tmp, out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def build_dataset(out_dir: str | os.PathLike, sources: Iterable[tuple[str, SourceFn]],
                  spacing: float = 1.5, cache: Optional[Path] = None, force: bool = False,
                  min_voxels: int = MIN_VOXELS, progress: bool = True) -> BuildResult:
    """Fetch each source, resample it to ``spacing`` mm and write the dataset to ``out_dir``.

    A source that raises :class:`DataUnavailable` is skipped with a logged warning; it is an
    error only when no source could be fetched.
    """
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    t0 = time.perf_counter()
    out_dir = Path(out_dir).absolute()
    if not (isinstance(spacing, (int, float)) and math.isfinite(spacing) and 0.1 <= spacing <= 20):
        raise UsageError(f"spacing {spacing!r} mm is out of range (0.1 to 20)")
    _check_out_dir(out_dir, force)
    cache = Path(cache) if cache is not None else cache_dir()
    sources = list(sources)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it private; the result is an ordinary folder
        (tmp / "imagesTr").mkdir()
        (tmp / "labelsTr").mkdir()
        global_ids: dict[str, int] = {}
        cases: dict[str, dict] = {}
        rows: list[TargetRow] = []
        skipped: dict[str, str] = {}
        with logging_redirect_tqdm():  # log lines do not break the progress bar
            for key, fn in tqdm(sources, desc="sources", unit="case", disable=not progress):
                try:
                    sc = fn(cache)
                except DataUnavailable as exc:
                    log.warning("skipping source %s: %s", key, exc)
                    skipped[key] = str(exc)
                    continue
                if sc.case in cases:
                    raise UsageError(f"source {key}: case name {sc.case!r} is used twice")
                cases[sc.case], case_rows = _write_case(sc, tmp, spacing, global_ids, min_voxels)
                rows.extend(case_rows)
        if not cases:
            raise DataUnavailable("no source could be fetched: " + "; ".join(f"{k}: {v}" for k, v in skipped.items()))
        _write_index(tmp, spacing, global_ids, cases, rows)
        _publish(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    result = BuildResult(out_dir, list(cases), rows, skipped, time.perf_counter() - t0)
    log.info("built %s: %d cases, %d targets (%d train, %d test) in %.1f s", out_dir, len(cases),
             len(rows), result.count("train"), result.count("test"), result.seconds)
    return result


def case_split(sc: SourceCase, name: str) -> str:
    """A target's split: the source's own for all its targets, ``val`` for its validation structures
    (compared side-free), its mapping of the name rule, or the rule."""
    if sc.split is not None:
        return sc.split
    if name_tokens(name) in {name_tokens(v) for v in sc.val_structures}:
        return "val"
    rule = split_for(name)
    return sc.split_by_rule.get(rule, rule) if sc.split_by_rule else rule


def _write_case(sc: SourceCase, tmp: Path, spacing: float, global_ids: dict[str, int],
                min_voxels: int) -> tuple[dict, list[TargetRow]]:
    """Resample and write one case; extend ``global_ids``; return its dataset.json entry and rows."""
    if not np.issubdtype(sc.labels.array.dtype, np.integer) or sc.labels.array.min() < 0:
        raise VoxpromptError(f"source {sc.case}: label map must hold non-negative integers")
    for split in [sc.split, *(sc.split_by_rule or {}).values()]:
        if split is not None and split not in ("train", "val", "test"):
            raise VoxpromptError(f"source {sc.case}: split {split!r} must be 'train', 'val', 'test' or None")
    if sc.split is not None and (sc.split_by_rule is not None or sc.val_structures):
        raise VoxpromptError(f"source {sc.case}: give split or split_by_rule/val_structures, not both")
    image = resample_isotropic(sc.image, spacing, nearest=False)
    labels = resample_isotropic(sc.labels, spacing, nearest=True, reference=image)
    counts = np.bincount(labels.array.ravel().astype(np.int64))
    present = [int(i) for i in np.flatnonzero(counts) if i != 0]
    lut = np.zeros(len(counts), dtype=np.int64)
    native: dict[str, int] = {}
    for i in present:
        name = sc.names.get(i)
        if name is None:
            name = f"{sc.case}_label_{i}"
            log.warning("%s: label %d has no name; calling it %s", sc.case, i, name)
        if name in native:
            raise VoxpromptError(f"source {sc.case}: structure name {name!r} is used by two label ids")
        native[name] = i
        lut[i] = global_ids.setdefault(name, len(global_ids) + 1)
    if len(global_ids) > 65535:
        raise VoxpromptError("more than 65535 structures in one dataset")
    out = lut[labels.array]
    write_mask(out, image, tmp / "labelsTr" / f"{sc.case}.nii.gz")
    _write_image(image, tmp / "imagesTr" / f"{sc.case}_0000.nii.gz")
    rows = [TargetRow(sc.case, int(lut[i]), name, sc.modality, int(counts[i]), case_split(sc, name))
            for name, i in native.items() if counts[i] >= min_voxels]
    log.info("%s: grid %s at %.2f mm, %d structures, %d targets", sc.case, image.shape, spacing,
             len(native), len(rows))
    entry = {"modality": sc.modality, "licence": sc.licence, "origin": sc.origin,
             "shape_zyx": list(image.shape),
             "labels": {name: int(lut[i]) for name, i in native.items()},
             "source_label_ids": native}
    if sc.split is not None:
        entry["split"] = sc.split
    if sc.split_by_rule is not None:
        entry["split_by_rule"] = sc.split_by_rule
    if sc.val_structures:
        entry["val_structures"] = list(sc.val_structures)
    return entry, rows


def _write_index(tmp: Path, spacing: float, global_ids: dict[str, int], cases: dict[str, dict],
                 rows: list[TargetRow]) -> None:
    dataset = {
        "name": "voxprompt_real",
        "description": "Real labelled CT/MR cases from package registries, resampled to isotropic "
                       "spacing; targets.csv lists the prompt targets and the unseen-structure split",
        "channel_names": {"0": "image"},
        "labels": {"background": 0, **global_ids},
        "numTraining": len(cases),
        "file_ending": ".nii.gz",
        "spacing_mm": spacing,
        "licence": {case: c["licence"] for case, c in cases.items()},
        "sources": {case: c["origin"] for case, c in cases.items()},
        "cases": {case: {k: v for k, v in c.items() if k not in ("licence", "origin")}
                  for case, c in cases.items()},
    }
    (tmp / "dataset.json").write_text(json.dumps(dataset, indent=2) + "\n")
    write_targets(tmp / "targets.csv", rows)


def write_targets(path: Path, rows: Iterable[TargetRow]) -> None:
    """Write ``targets.csv`` (columns :data:`TARGET_COLUMNS`)."""
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(TARGET_COLUMNS)
        for r in rows:
            w.writerow([r.case, r.label, r.name, r.modality, r.voxels, r.split])
