"""Read prompt targets (one structure in one image) from labelled dataset folders.

Layouts, detected automatically by :func:`open_dataset`:

* **nnU-Net v2 raw**: ``dataset.json`` with ``"labels"`` name -> id, ``imagesTr/{case}_0000{ext}``,
  ``labelsTr/{case}{ext}``. With ``targets.csv`` (written by ``voxprompt data build``) its rows
  are the targets; otherwise one target per case and non-background label id of dataset.json.
* **Medical Segmentation Decathlon**: ``dataset.json`` with ``"labels"`` id -> name and
  ``"training": [{"image", "label"}]``; 4D images are read as channel 0.
* **SAM-Med3D per-class**: ``ROOT/<class_name>/<dataset_name>/{imagesTr,labelsTr}/*.nii.gz`` with
  binary labels; the modality comes from the dataset name prefix (``ct_``, ``mr_``, ``us_``...).

Targets read from dataset.json alone do not know their voxel count (0) or split ("").
"""
from __future__ import annotations

import csv
import functools
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import SimpleITK as sitk

from ..errors import ImageReadError, InputError, UsageError
from ..io.image import Image
from ..io.read import read_image

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test", "")


class DatasetError(InputError):
    """A folder that is not a dataset in a supported layout, or one with missing / inconsistent files."""


@dataclass(frozen=True)
class Target:
    """One structure (label id) of one case: the unit a promptable model is asked to segment."""

    case: str
    label: int
    name: str
    modality: str  # e.g. "CT", "MR"
    image_path: Path
    label_path: Path
    split: str  # "train" / "test" / "" if unknown
    voxels: int  # 0 if unknown


def normalize_modality(text: str) -> str:
    """Map free-text modality names to "CT", "MR", "US", "PET"; unknown text is returned stripped."""
    raw = str(text).strip()
    t = raw.upper()
    if t.startswith("CT"):
        return "CT"
    if t.startswith(("MR", "T1", "T2", "FLAIR", "ADC", "DWI", "PD", "SWI")):
        return "MR"
    if t in ("US", "ULTRASOUND"):
        return "US"
    if t.startswith("PET"):
        return "PET"
    return raw


def open_dataset(path: str | os.PathLike, split: Optional[str] = None) -> list[Target]:
    """All targets of the dataset at ``path`` (optionally only those of ``split``)."""
    if split is not None and split not in SPLITS:
        raise UsageError(f"split {split!r}: expected 'train', 'val', 'test' or '' (unknown)")
    root = Path(path)
    if root.is_file() and root.name == "dataset.json":
        root = root.parent
    if not root.exists():
        raise DatasetError(f"{root}: dataset folder not found")
    if not root.is_dir():
        raise DatasetError(f"{root}: not a folder")
    meta = root / "dataset.json"
    if meta.is_file():
        d = _load_json(meta)
        labels = d.get("labels")
        if not isinstance(labels, dict) or not labels:
            raise DatasetError(f"{meta}: no \"labels\" mapping")
        if all(str(k).strip().isdigit() for k in labels) and isinstance(d.get("training"), list):
            targets = _read_msd(root, d)
        elif all(isinstance(v, (int, list)) and not isinstance(v, bool) for v in labels.values()):
            targets = _read_nnunet(root, d)
        else:
            raise DatasetError(f"{meta}: \"labels\" is neither nnU-Net v2 (name -> id) nor a Decathlon "
                               "mapping (id -> name with a \"training\" list)")
    elif _sammed3d_dirs(root):
        targets = _read_sammed3d(root)
    else:
        raise DatasetError(f"{root}: no dataset.json (nnU-Net v2 / Decathlon) and no "
                           "<class>/<dataset>/imagesTr folders (SAM-Med3D); not a supported dataset")
    if split is not None:
        targets = [t for t in targets if t.split == split]
    return targets


def _load_json(path: Path) -> dict:
    try:
        d = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DatasetError(f"{path}: unreadable JSON ({err})") from None
    if not isinstance(d, dict):
        raise DatasetError(f"{path}: expected a JSON object")
    return d


def _require(*paths: Path) -> None:
    for p in paths:
        if not p.is_file():
            raise DatasetError(f"{p}: file listed by the dataset is missing")


def _read_nnunet(root: Path, d: dict) -> list[Target]:
    ending = str(d.get("file_ending", ".nii.gz"))
    channels = d.get("channel_names") or d.get("modality") or {}
    modality = normalize_modality(channels.get("0", "")) if isinstance(channels, dict) else ""

    def paths(case: str) -> tuple[Path, Path]:
        return root / "imagesTr" / f"{case}_0000{ending}", root / "labelsTr" / f"{case}{ending}"

    table = root / "targets.csv"
    targets: list[Target] = []
    if table.is_file():
        with open(table, newline="") as fh:
            reader = csv.DictReader(fh)
            missing = {"case", "label", "name"} - set(reader.fieldnames or ())
            if missing:
                raise DatasetError(f"{table}: missing column(s) {', '.join(sorted(missing))}")
            for n, row in enumerate(reader, start=2):
                try:
                    label, voxels = int(row["label"]), int(row.get("voxels") or 0)
                except ValueError:
                    raise DatasetError(f"{table}: line {n}: label and voxels must be integers") from None
                split = (row.get("split") or "").strip()
                if split not in SPLITS:
                    raise DatasetError(f"{table}: line {n}: split {split!r} is not train/val/test/empty")
                img, lbl = paths(row["case"])
                targets.append(Target(row["case"], label, row["name"],
                                      normalize_modality(row.get("modality") or modality), img, lbl, split, voxels))
    else:
        ids = [(name, v) for name, v in d["labels"].items()
               if isinstance(v, int) and v != 0 and name != "ignore"]
        for lbl in sorted((root / "labelsTr").glob(f"*{ending}")):
            if lbl.name.startswith("."):
                continue
            case = lbl.name[: -len(ending)]
            img, _ = paths(case)
            targets.extend(Target(case, v, name, modality, img, lbl, "", 0) for name, v in ids)
        if not targets and not ids:
            raise DatasetError(f"{root / 'dataset.json'}: no foreground labels")
    for t in {(t.image_path, t.label_path) for t in targets}:
        _require(*t)
    return targets


def _read_msd(root: Path, d: dict) -> list[Target]:
    mods = d.get("modality") or {}
    modality = normalize_modality(mods.get("0", "")) if isinstance(mods, dict) else ""
    ids = [(int(k), str(v)) for k, v in d["labels"].items() if int(k) != 0]
    targets: list[Target] = []
    for n, item in enumerate(d["training"]):
        if not isinstance(item, dict) or "image" not in item or "label" not in item:
            raise DatasetError(f"{root / 'dataset.json'}: training entry {n} lacks \"image\"/\"label\"")
        img, lbl = root / str(item["image"]), root / str(item["label"])
        _require(img, lbl)
        name = img.name
        case = name[:-7] if name.endswith(".nii.gz") else Path(name).stem
        targets.extend(Target(case, i, label_name, modality, img, lbl, "", 0) for i, label_name in ids)
    return targets


def _sammed3d_dirs(root: Path) -> list[tuple[str, Path]]:
    """(class name, dataset folder) pairs of a SAM-Med3D per-class tree."""
    def subdirs(p: Path) -> list[Path]:
        try:
            return sorted(q for q in p.iterdir() if q.is_dir() and not q.name.startswith("."))
        except OSError:  # unreadable folder: not part of a dataset
            return []

    return [(cls.name, ds) for cls in subdirs(root) for ds in subdirs(cls) if (ds / "imagesTr").is_dir()]


def _read_sammed3d(root: Path) -> list[Target]:
    targets: list[Target] = []
    for cls, ds in _sammed3d_dirs(root):
        prefix = ds.name.split("_", 1)[0]
        modality = normalize_modality(prefix) if prefix.lower() in ("ct", "mr", "mri", "us", "pet") else ""
        for img in sorted((ds / "imagesTr").glob("*.nii.gz")):
            if img.name.startswith("."):
                continue
            lbl = ds / "labelsTr" / img.name
            _require(lbl)
            targets.append(Target(f"{ds.name}/{img.name[:-7]}", 1, cls, modality, img, lbl, "", 0))
    if not targets:
        raise DatasetError(f"{root}: SAM-Med3D layout without any imagesTr/*.nii.gz")
    return targets


def _read_channel0(path: Path) -> Image:
    """Read a 3D volume, or channel 0 of a 4D one (Decathlon multi-modal images)."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return read_image(path)  # read_image words the error
    size = list(reader.GetSize())
    four_d = reader.GetDimension() == 4 and size[3] > 1
    vector = reader.GetDimension() == 3 and reader.GetNumberOfComponents() > 1
    if not (four_d or vector):
        return read_image(path)
    if four_d:
        reader.SetExtractIndex([0, 0, 0, 0])
        reader.SetExtractSize(size[:3] + [0])
    try:
        img = reader.Execute()
        if vector:
            img = sitk.VectorIndexSelectionCast(img, 0)
    except RuntimeError as err:
        raise ImageReadError(f"{path}: cannot read channel 0 ({str(err).strip().splitlines()[-1][:200]})") from None
    return Image(sitk.GetArrayFromImage(img), img.GetSpacing(), img.GetOrigin(),
                 np.asarray(img.GetDirection()).reshape(3, 3), source_path=path)


@functools.lru_cache(maxsize=4)
def _cached(path: str, mtime_ns: int, size: int) -> Image:
    image = _read_channel0(Path(path))
    image.array.flags.writeable = False
    return image


def _read(path: Path) -> Image:
    try:
        st = path.stat()
    except OSError:
        raise ImageReadError(f"{path}: file not found") from None
    return _cached(str(path), st.st_mtime_ns, st.st_size)


def _check_grid(image: Image, labels: Image, t: Target) -> None:
    tol = 1e-3 * max(image.spacing)
    if image.shape != labels.shape:
        raise DatasetError(f"{t.label_path}: label shape {labels.shape} (z, y, x) does not match the image "
                           f"{t.image_path} shape {image.shape}")
    if not (np.allclose(image.spacing, labels.spacing, rtol=1e-4, atol=1e-5)
            and np.allclose(image.origin, labels.origin, atol=max(tol, 1e-4))
            and np.allclose(image.direction, labels.direction, atol=1e-4)):
        raise DatasetError(f"{t.label_path}: label geometry (spacing {labels.spacing}, origin {labels.origin}) "
                           f"does not match the image {t.image_path} (spacing {image.spacing}, "
                           f"origin {image.origin})")


def load_target(t: Target) -> tuple[Image, np.ndarray]:
    """The target's image (a private copy) and its bool mask ``label == t.label`` on the image grid.

    The last few files read are cached, so the targets of one case read its files once.
    """
    cached = _read(Path(t.image_path))
    labels = _read(Path(t.label_path))
    _check_grid(cached, labels, t)
    image = Image(np.array(cached.array), cached.spacing, cached.origin, cached.direction, cached.source_path)
    return image, labels.array == t.label


def load_label_map(t: Target) -> np.ndarray:
    """The whole label map of the target's case (the cached array: do not modify it)."""
    labels = _read(Path(t.label_path))
    _check_grid(_read(Path(t.image_path)), labels, t)
    return labels.array


__all__ = ["DatasetError", "Target", "load_label_map", "load_target", "normalize_modality", "open_dataset"]
