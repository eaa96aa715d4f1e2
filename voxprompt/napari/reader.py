"""napari reader (npe2 ``readers`` contribution): NIfTI, NRRD and MetaImage volumes through
:func:`voxprompt.io.read_image`, placed in napari's world at their LPS position (mm, axes in napari's
(z, y, x) order: anterior up, the patient's left on the right of an axial slice), with their geometry
kept in the layer's metadata so that labels saved from the plugin lie on the file's grid. The array
is the file's, unchanged."""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..io.paths import file_extension
from .layers import layer_metadata

if TYPE_CHECKING:
    from ..io.image import Image

EXTENSIONS = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")  # 3D files read_image takes (no DICOM)

LayerData = tuple[Any, dict[str, Any], str]


def get_reader(path: str | os.PathLike | list) -> Callable[[str | os.PathLike | list], list[LayerData]] | None:
    """The reader for ``path`` when every file it names is a volume voxprompt reads, else None (napari
    then asks other readers)."""
    paths = path if isinstance(path, list) else [path]
    if not paths or any(file_extension(p) not in EXTENSIONS for p in paths):
        return None
    return read_volumes


def world_affine(image: Image) -> np.ndarray:
    """napari's ``affine`` for ``image`` shown with ``scale`` = its spacing (z, y, x): the direction and
    origin, mapping the scaled index to LPS mm listed in napari's (z, y, x) axis order."""
    lps_zyx = image.affine_zyx_to_lps()[[2, 1, 0, 3]]  # rows: LPS z, y, x
    affine = lps_zyx.copy()
    affine[:3, :3] = lps_zyx[:3, :3] / np.asarray(image.spacing[::-1])  # the scale is the layer's own
    return affine


def read_volumes(path: str | os.PathLike | list) -> list[LayerData]:
    """One Image layer per file: array (z, y, x), ``scale`` = spacing in mm per array axis, ``affine`` =
    direction and origin (:func:`world_affine`)."""
    from ..io.read import read_image

    layers = []
    for p in path if isinstance(path, list) else [path]:
        image = read_image(p)
        name = Path(p).name
        for ext in EXTENSIONS:
            if name.lower().endswith(ext):
                name = name[: -len(ext)]
                break
        layers.append((image.array, {"name": name, "scale": tuple(image.spacing[::-1]),
                                     "affine": world_affine(image), "metadata": layer_metadata(image)}, "image"))
    return layers


__all__ = ["get_reader", "read_volumes", "world_affine", "EXTENSIONS"]
