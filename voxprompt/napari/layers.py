"""Between napari layers and a :class:`~voxprompt.session.Session`, with no Qt: the volume an Image
layer holds, the box a rectangle stands for, and the session's prompts drawn back as points and
rectangles.

Every layer the plugin makes carries its Image layer's transforms, so layer data coordinates are the
image's voxel indices in numpy order (z, y, x), the session's own prompt coordinates.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import InputError, PromptError, UsageError
from ..io.image import Image

log = logging.getLogger(__name__)

# Layer metadata key under which the reader keeps a file's geometry (ITK order: spacing and origin
# (x, y, z), direction row-major 3x3), so that saved labels land on the file's grid.
GEOMETRY_KEY = "voxprompt_geometry"


def layer_metadata(image: Image) -> dict[str, Any]:
    """Metadata of a layer read from ``image``: its geometry, plain lists (napari copies metadata)."""
    geometry = {"shape": list(image.shape), "spacing": list(image.spacing), "origin": list(image.origin),
                "direction": image.direction.ravel().tolist()}
    return {GEOMETRY_KEY: geometry}


def image_from_layer(data: Any, scale: Sequence[float], metadata: Mapping[str, Any] | None = None,
                     name: str = "image") -> Image:
    """The volume of a napari Image layer as an :class:`Image`, array axes (z, y, x).

    The file's geometry the reader stored (:func:`layer_metadata`) is used while it still fits the
    layer (same shape and scale); otherwise the layer's ``scale`` is the spacing in mm per array axis,
    with origin 0 and identity direction (what :func:`~voxprompt.session.image_from_array` makes)."""
    from ..session.volume import image_from_array  # torch: only once a session starts, not for the reader

    arr = np.asarray(data)
    if arr.ndim != 3:
        raise InputError(f"layer {name!r} is {arr.ndim}D with shape {arr.shape}; voxprompt segments 3D volumes "
                         "(z, y, x)")
    scale_zyx = tuple(float(s) for s in scale)
    geometry = (metadata or {}).get(GEOMETRY_KEY)
    if geometry is not None and tuple(geometry["shape"]) == arr.shape and np.allclose(
            geometry["spacing"][::-1], scale_zyx):
        return Image(arr, spacing=geometry["spacing"], origin=geometry["origin"], direction=geometry["direction"])
    if len(scale_zyx) != 3 or not all(s > 0 for s in scale_zyx):
        raise UsageError(f"layer {name!r} has scale {scale_zyx}; the spacing needs three positive mm values")
    return image_from_array(arr, spacing=scale_zyx)


def rectangle_box(vertices: np.ndarray, shape: Sequence[int], depth: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """The box [lo, hi) (voxel indices) of a rectangle drawn on one slice: in its plane the voxels whose
    centres it covers, the part outside the image left out; across, ``depth`` slices centred on the
    drawn one (1: a 2D box on that slice), cut at the volume's ends."""
    v = np.asarray(vertices, dtype=np.float64)
    n = len(shape)
    if v.ndim != 2 or v.shape[1] != n or len(v) < 2 or not np.isfinite(v).all():
        raise PromptError(f"a box rectangle needs corners with {n} coordinates, got an array of shape {v.shape}")
    if depth < 1:
        raise UsageError(f"box depth must be at least one slice, got {depth}")
    flat = [ax for ax in range(n) if np.ptp(v[:, ax]) == 0]
    if len(flat) != 1:
        raise PromptError("draw a box as a rectangle on one slice of the volume (a 2D view)")
    ax = flat[0]
    size = np.asarray(shape)
    lo = np.maximum(np.ceil(v.min(0)).astype(int), 0)
    hi = np.minimum(np.floor(v.max(0)).astype(int) + 1, size)
    centre = int(np.floor(v[0, ax] + 0.5))
    if not 0 <= centre < size[ax]:
        raise PromptError(f"the rectangle lies on slice {centre} of axis {ax}, outside the volume of shape "
                          f"{tuple(size.tolist())}")
    start = centre - (depth - 1) // 2
    lo[ax], hi[ax] = max(start, 0), min(start + depth, int(size[ax]))
    if np.any(hi <= lo):
        raise PromptError("the rectangle covers no voxel centre of the image")
    return lo, hi


def prompt_shapes(prompts: Sequence[tuple], displayed: Sequence[int]) -> tuple[np.ndarray, np.ndarray,
                                                                            list[np.ndarray]]:
    """A session object's prompts (``Session.prompts``) as napari data: positive points (N, 3), negative
    points (M, 3), and one rectangle (4, 3) per box, framing its voxels in the displayed axes
    (``viewer.dims.displayed``) on the middle slice of its range across them. Mask prompts have no shape."""
    pos: list[tuple] = []
    neg: list[tuple] = []
    rects: list[np.ndarray] = []
    shown = list(displayed)[-2:]
    for kind, value in prompts:
        if kind == "point":
            index, positive = value
            (pos if positive else neg).append(tuple(float(i) for i in index))
        elif kind == "box":
            lo, hi = (np.asarray(c, dtype=np.float64) for c in value)
            centre = np.floor((lo + hi - 1) / 2)
            a, b = shown
            corners = []
            for ca, cb in ((lo[a], lo[b]), (lo[a], hi[b]), (hi[a], hi[b]), (hi[a], lo[b])):
                c = centre.copy()
                c[a], c[b] = ca - 0.5, cb - 0.5  # voxel edges: the rectangle frames the box's voxels
                corners.append(c)
            rects.append(np.array(corners))
    return np.array(pos, float).reshape(-1, 3), np.array(neg, float).reshape(-1, 3), rects


__all__ = ["GEOMETRY_KEY", "layer_metadata", "image_from_layer", "rectangle_box", "prompt_shapes"]
