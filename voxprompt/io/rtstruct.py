"""RT Structure Set (RTSTRUCT) output for masks predicted on a DICOM series, and reading one back.

The mask is a label map in SimpleITK's (z, y, x) order, as :func:`voxprompt.io.read_image` returns for
a DICOM folder; each listed label value becomes one ROI (``segments``: value -> ROI name, as
:func:`~voxprompt.io.dicom_seg.write_dicom_seg` takes them; a bool mask is one ROI named by
``label_name``). Slice z is matched to its source instance by ImagePositionPatient
(:func:`~voxprompt.io.dicom_seg.match_frames`), and every contour references that instance.

Contours: per slice, the 0.5 iso-lines of the ROI's mask (marching squares, scikit-image), i.e. closed
polygons through the midpoints between object and background pixel centres, mapped to patient (LPS) mm
through the instance's own ImagePositionPatient, ImageOrientationPatient and PixelSpacing. A hole is a
contour of its own inside the outer one (CLOSED_PLANAR; read by the even-odd rule, as treatment planning
systems do). No pixel centre lies within 0.35 pixel of such a contour, so any reader that decides pixel
centres inside or outside gets the mask back exactly.
The dataset itself (patient, study and series modules, the references to every instance of the series,
the ROI, contour and observation sequences) is built by ``pydicomrt`` (MIT), an optional dependency:
``pip install 'voxprompt[rtstruct]'``. The file is written atomically (temporary file + rename).

Reading (:func:`read_rtstruct`) rasterises the contours onto the series grid by pixel centre, even-odd;
a pixel centre lying on a contour counts as inside an outer contour and as outside a hole, so RTSTRUCTs
whose contours run through boundary pixel centres (rt-utils, many TPS exports) read back whole too.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError, UsageError
from .dicom_seg import DEFAULT_LABEL, dicom_output_file, dicom_source, prepare_output_file, source_frames
from .image import Image
from .write import _tmp_path

log = logging.getLogger(__name__)

RTSTRUCT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.481.3"
DEFAULT_RTSTRUCT_NAME = "voxprompt_rtstruct.dcm"  # file name used when the output is a folder
RTSTRUCT_SERIES_OFFSET = 2000  # RTSTRUCT series number = source series number + this (a SEG takes + 1000)
ALGORITHM_TYPES = ("AUTOMATIC", "SEMIAUTOMATIC", "MANUAL")  # ROIGenerationAlgorithm
# ROIDisplayColor of ROI 1, 2, ... when none is given (RGB)
ROI_COLORS: tuple[tuple[int, int, int], ...] = (
    (128, 174, 128), (241, 214, 145), (177, 122, 101), (111, 184, 210), (216, 101, 79),
    (221, 130, 101), (144, 238, 144), (192, 104, 88), (220, 245, 20), (78, 63, 0))
_SNAP_PX = 1e-3  # contour coordinates this close to a pixel centre are taken to lie on it
_PLANE_TOL = 0.25  # a contour must lie within this fraction of the slice spacing of a slice's plane


def require_rtstruct() -> None:
    """Raise :class:`UsageError` when the RTSTRUCT writer's library (pydicomrt) is not installed."""
    try:
        import pydicomrt.rs  # noqa: F401
    except ImportError as err:
        raise UsageError(f"RT Structure Set output needs the 'pydicomrt' package ({err}): "
                         "pip install 'voxprompt[rtstruct]'") from None


def rtstruct_output_path(path: str | os.PathLike) -> Path:
    """The RTSTRUCT file for an output argument: ``*.dcm`` itself; a folder gets :data:`DEFAULT_RTSTRUCT_NAME`."""
    return dicom_output_file(path, DEFAULT_RTSTRUCT_NAME)


# ----------------------------------------------------------------------------- geometry of one instance
@dataclass(frozen=True)
class _Plane:
    """Pixel (row, column) <-> patient LPS mm on one instance: ``origin + c * dc * u + r * dr * v``."""

    origin: np.ndarray  # ImagePositionPatient: centre of pixel (0, 0)
    u: np.ndarray  # IOP[:3], the step as the column index grows
    v: np.ndarray  # IOP[3:], the step as the row index grows
    dr: float  # PixelSpacing[0]: spacing between rows
    dc: float  # PixelSpacing[1]: spacing between columns

    @classmethod
    def of(cls, ds) -> _Plane:
        if "PixelSpacing" not in ds:
            raise InputError(f"DICOM instance {ds.SOPInstanceUID} lacks PixelSpacing; cannot place contours on it")
        iop = np.array([float(x) for x in ds.ImageOrientationPatient])
        dr, dc = (float(x) for x in ds.PixelSpacing)
        return cls(np.array([float(x) for x in ds.ImagePositionPatient]), iop[:3], iop[3:], dr, dc)

    @property
    def normal(self) -> np.ndarray:
        return np.cross(self.u, self.v)

    def to_patient(self, rc: np.ndarray) -> np.ndarray:
        """(N, 2) pixel (row, column) -> (N, 3) LPS mm."""
        return self.origin + np.outer(rc[:, 1] * self.dc, self.u) + np.outer(rc[:, 0] * self.dr, self.v)

    def to_pixel(self, xyz: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N, 3) LPS mm -> ((N, 2) pixel (row, column), (N,) signed distance from the plane in mm)."""
        d = xyz - self.origin
        return np.stack([d @ self.v / self.dr, d @ self.u / self.dc], axis=1), d @ self.normal


# ----------------------------------------------------------------------------- mask <-> polygons
def mask_contours(mask_yx: np.ndarray) -> list[np.ndarray]:
    """Closed contours of a 2D bool mask: (N, 2) float (row, column) polygons, first vertex not repeated.

    The 0.5 iso-lines of the mask (outer boundaries and holes alike), with collinear vertices dropped.
    Pixels touching only at a corner are separate objects (4-connected foreground).
    """
    from skimage.measure import find_contours

    padded = np.pad(np.asarray(mask_yx, bool), 1).astype(np.float32)
    out = []
    for c in find_contours(padded, 0.5, fully_connected="low"):
        c = c[:-1] - 1.0  # closed: the last vertex repeats the first; undo the padding
        prev, nxt = np.roll(c, 1, axis=0), np.roll(c, -1, axis=0)
        cross = (c[:, 0] - prev[:, 0]) * (nxt[:, 1] - c[:, 1]) - (c[:, 1] - prev[:, 1]) * (nxt[:, 0] - c[:, 0])
        c = c[cross != 0]  # half-integer coordinates: the cross product of collinear steps is exactly 0
        if len(c) >= 3:
            out.append(c)
    return out


def _crossings(poly: np.ndarray, closed: bool) -> tuple[np.ndarray, np.ndarray]:
    """Where the polygon's non-horizontal edges cross integer rows: (rows, columns).

    ``closed=False``: half-open in the row (an edge from r0 to r1 counts rows r0 <= y < r1), so a scanline
    meets every closed polygon an even number of times; ``closed=True``: both ends (for lying-on tests)."""
    a, b = poly, np.roll(poly, -1, axis=0)
    lo, hi = np.minimum(a[:, 0], b[:, 0]), np.maximum(a[:, 0], b[:, 0])
    keep = hi > lo
    a, b, lo, hi = a[keep], b[keep], lo[keep], hi[keep]
    first = np.ceil(lo).astype(np.int64)
    last = (np.floor(hi) if closed else np.ceil(hi) - 1).astype(np.int64)
    n = np.maximum(last - first + 1, 0)
    edge = np.repeat(np.arange(len(a)), n)
    rows = first[edge] + (np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n))
    t = (rows - a[edge, 0]) / (b[edge, 0] - a[edge, 0])
    return rows, a[edge, 1] + t * (b[edge, 1] - a[edge, 1])


def _polygon_pixels(poly: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(pixel centres strictly inside ``poly``, pixel centres on its edges) as two bool (H, W) masks."""
    h, w = shape
    inside = np.zeros((h, w + 1), np.int32)
    rows, cols = _crossings(poly, closed=False)
    order = np.lexsort((cols, rows))
    rows, cols = rows[order].reshape(-1, 2), cols[order].reshape(-1, 2)  # an even count per row
    r = rows[:, 0]
    c0 = np.clip(np.floor(cols[:, 0]).astype(np.int64) + 1, 0, w)  # first column centre > the left crossing
    c1 = np.clip(np.ceil(cols[:, 1]).astype(np.int64), 0, w)  # first column centre >= the right crossing
    ok = (r >= 0) & (r < h) & (c1 > c0)
    np.add.at(inside, (r[ok], c0[ok]), 1)
    np.add.at(inside, (r[ok], c1[ok]), -1)
    inside = np.cumsum(inside, axis=1)[:, :w] > 0

    edge = np.zeros((h, w + 1), np.int32)
    er, ec = _crossings(poly, closed=True)  # lattice points on sloped or vertical edges
    on = (np.abs(ec - np.round(ec)) == 0) & (er >= 0) & (er < h)
    ec = np.round(ec[on]).astype(np.int64)
    ok = (ec >= 0) & (ec < w)
    edge[er[on][ok], ec[ok]] = 1
    a, b = poly, np.roll(poly, -1, axis=0)  # horizontal edges on a row of centres
    flat = (a[:, 0] == b[:, 0]) & (a[:, 0] == np.round(a[:, 0])) & (a[:, 0] >= 0) & (a[:, 0] < h)
    fr = a[flat, 0].astype(np.int64)
    f0 = np.clip(np.ceil(np.minimum(a[flat, 1], b[flat, 1])).astype(np.int64), 0, w)
    f1 = np.clip(np.floor(np.maximum(a[flat, 1], b[flat, 1])).astype(np.int64) + 1, 0, w)
    ok = f1 > f0
    marks = np.zeros((h, w + 1), np.int32)
    np.add.at(marks, (fr[ok], f0[ok]), 1)
    np.add.at(marks, (fr[ok], f1[ok]), -1)
    edge = (edge[:, :w] > 0) | (np.cumsum(marks, axis=1)[:, :w] > 0)
    return inside & ~edge, edge


def _contains(poly: np.ndarray, point: np.ndarray) -> bool:
    """Whether ``point`` (row, column) lies inside ``poly`` or on it."""
    a, b = poly, np.roll(poly, -1, axis=0)
    ab, ap = b - a, point - a
    t = np.clip(np.einsum("ij,ij->i", ap, ab) / np.maximum(np.einsum("ij,ij->i", ab, ab), 1e-300), 0, 1)
    if np.min(np.linalg.norm(ap - t[:, None] * ab, axis=1)) <= _SNAP_PX:
        return True
    y, x = point
    spans = (a[:, 0] <= y) != (b[:, 0] <= y)
    xs = a[spans, 1] + (y - a[spans, 0]) * ab[spans, 1] / ab[spans, 0]
    return bool(np.count_nonzero(xs > x) % 2)


def rasterise_contours(polygons: Sequence[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Bool (H, W) mask of the pixel centres inside closed ``polygons`` ((N, 2) row, column) of one slice.

    Even-odd: a polygon lying inside an odd number of others is a hole. A centre on a polygon counts as
    inside an outer one and outside a hole (contours through boundary pixel centres keep those pixels).
    """
    snapped = []
    for p in polygons:
        p = np.asarray(p, np.float64)
        near = np.abs(p - np.round(p)) <= _SNAP_PX
        snapped.append(np.where(near, np.round(p), p))
    out = np.zeros(shape, bool)
    for i, p in enumerate(snapped):
        depth = sum(_contains(q, p[0]) for j, q in enumerate(snapped) if j != i)
        inside, edge = _polygon_pixels(p, shape)
        out ^= inside | edge if depth % 2 == 0 else inside
    return out


# ----------------------------------------------------------------------------- writing
def _roi_table(mask: np.ndarray, label_name: str | None, segments: Mapping[int, str] | None,
               colors: Mapping[int, Sequence[int]] | None) -> list[tuple[int, str, list[int]]]:
    """(label value, ROI name, RGB) per ROI, checked; a bool / 0-1 mask without ``segments`` is label 1."""
    if segments is None:
        if mask.size and (mask.min() < 0 or mask.max() > 1):
            raise InputError(f"mask holds labels {int(mask.min())}..{int(mask.max())}; name each label's ROI with "
                             "segments={value: name} (a mask without segments is one ROI of its nonzero voxels)")
        named = {1: (label_name or DEFAULT_LABEL).strip() or DEFAULT_LABEL}
    else:
        named = {int(k): str(v).strip() or f"ROI {k}" for k, v in segments.items()}
        if not named:
            raise InputError("an RT Structure Set needs at least one ROI (segments is empty)")
        if any(k <= 0 for k in named):
            raise InputError(f"segments: label values must be positive, got {sorted(named)}")
        unlisted = sorted(set(np.unique(mask).tolist()) - set(named) - {0})
        if unlisted:
            raise InputError(f"mask labels {unlisted} have no ROI in segments (listed: {sorted(named)}); "
                             "list every label to be written")
    rows = []
    for n, (value, name) in enumerate(named.items()):
        rgb = (colors or {}).get(value, ROI_COLORS[n % len(ROI_COLORS)])
        rgb = [int(c) for c in rgb]
        if len(rgb) != 3 or not all(0 <= c <= 255 for c in rgb):
            raise UsageError(f"ROI {name!r}: colour {rgb} is not three values 0..255 (RGB)")
        rows.append((value, name[:64], rgb))
    return rows


def _contour_dict(mask: np.ndarray, sources: Sequence, planes: Sequence[_Plane]) -> tuple[dict, int]:
    """pydicomrt's {SOPInstanceUID: {"contours": [flat x, y, z lists], "sop_class_uid"}} and the count."""
    out, count = {}, 0
    for z in np.flatnonzero(mask.reshape(mask.shape[0], -1).any(axis=1)):
        polys = mask_contours(mask[z])
        flat = [np.round(planes[z].to_patient(p), 4).ravel().tolist() for p in polys]
        ds = sources[z]
        out[str(ds.SOPInstanceUID)] = {"contours": flat, "sop_class_uid": str(ds.SOPClassUID)}
        count += len(flat)
    return out, count


def _dicom_series(source_dir: str | os.PathLike, image: Image | None, what: str) -> tuple[Image, list]:
    """The series as read by read_image and its instance headers in slice (z) order."""
    image = dicom_source(source_dir, image, what)
    return image, source_frames(image)


def write_rtstruct(mask_zyx: np.ndarray, source_dir: str | os.PathLike, out_path: str | os.PathLike,
                   *, image: Image | None = None, label_name: str | None = None,
                   segments: Mapping[int, str] | None = None, colors: Mapping[int, Sequence[int]] | None = None,
                   model_name: str = "voxprompt", model_version: str | None = None,
                   series_number: int | None = None, algorithm_type: str = "AUTOMATIC") -> Path:
    """Write ``mask_zyx`` ((z, y, x), the series' slice order) as an RT Structure Set; returns the path.

    ``source_dir``: the DICOM series folder the mask was predicted on; ``image``: that series as read by
    :func:`~voxprompt.io.read_image` (read again when omitted). ``out_path``: a ``.dcm`` file, or a folder
    (gets :data:`DEFAULT_RTSTRUCT_NAME`). A bool / 0-1 mask is one ROI named ``label_name``;
    ``segments`` (label value -> ROI name) makes each listed value of a label map one ROI, numbered 1, 2, ...
    in the mapping's order (every nonzero value must be listed). ``colors``: label value -> RGB
    (default :data:`ROI_COLORS`). ``algorithm_type``: ROIGenerationAlgorithm (AUTOMATIC, SEMIAUTOMATIC
    for masks a person steered, MANUAL). An ROI with no voxels is written without contours.
    Raises :class:`NotDicomError` when the source is not DICOM, InputError when the mask does not fit
    the series, UsageError when pydicomrt is missing; nothing is written then.
    """
    require_rtstruct()
    from pydicomrt.rs import RTStructBuilder

    from ..version import __version__

    if algorithm_type not in ALGORITHM_TYPES:
        raise UsageError(f"algorithm_type {algorithm_type!r}: use one of {', '.join(ALGORITHM_TYPES)}")
    image, sources = _dicom_series(source_dir, image, "RT Structure Set output")
    mask = np.asarray(mask_zyx)
    if mask.shape != image.shape:
        raise InputError(f"mask shape {mask.shape} (z, y, x) does not match the DICOM series shape {image.shape}")
    if not (mask.dtype == np.bool_ or np.issubdtype(mask.dtype, np.integer)):
        raise InputError(f"mask dtype {mask.dtype} is not a label type; use bool or integers")
    rois = _roi_table(mask, label_name, segments, colors)
    out = prepare_output_file(out_path, DEFAULT_RTSTRUCT_NAME)
    planes = [_Plane.of(ds) for ds in sources]
    builder = RTStructBuilder(sources)
    counts = []
    for number, (value, name, rgb) in enumerate(rois, 1):
        contours, n = _contour_dict(mask == value if segments is not None else mask != 0, sources, planes)
        builder.add_roi_from_contours(contours, name=name, number=number, color=rgb, interpreted_type="ORGAN")
        counts.append(n)
    ds = builder.build()

    # what pydicomrt fills with its own placeholders: voxprompt's identity and a series of its own
    first = sources[0]
    label = rois[0][1] if len(rois) == 1 else f"{len(rois)} ROIs"
    if series_number is None:
        series_number = (int(getattr(first, "SeriesNumber", 0) or 0) + RTSTRUCT_SERIES_OFFSET) % (2**31 - 1) or 1
    ds.SeriesNumber = int(series_number)
    ds.SeriesDescription = f"voxprompt RTSTRUCT {label}"[:64]
    ds.StructureSetLabel = "VOXPROMPT"
    ds.StructureSetName = label[:64]
    ds.StructureSetDescription = f"voxprompt {model_name}"[:64]
    ds.Manufacturer = "voxprompt"
    ds.ManufacturerModelName = model_name[:64]
    ds.SoftwareVersions = f"voxprompt {__version__}"
    del ds.InstitutionName
    generator = f"voxprompt {model_name} {model_version or __version__}"[:64]
    for item in ds.StructureSetROISequence:
        item.ROIGenerationAlgorithm = algorithm_type
        item.ROIGenerationDescription = generator
    for item in ds.RTROIObservationsSequence:
        del item.ROIObservationDescription
    # pydicomrt adds the (optional) Frame of Reference module's UID; its Type 2 companion goes with it
    ds.PositionReferenceIndicator = first.get("PositionReferenceIndicator", "")

    tmp, fd = _tmp_path(out, ".dcm")
    os.close(fd)
    try:
        ds.save_as(str(tmp), enforce_file_format=True)
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    log.debug("wrote RTSTRUCT %s (%s contours referencing %d instances)", out,
              "/".join(map(str, counts)), len(sources))
    return out


# ----------------------------------------------------------------------------- reading
@dataclass
class RtRoi:
    """One ROI of an RT Structure Set rasterised onto its series: ``mask`` is bool (z, y, x)."""

    number: int
    name: str
    color: tuple[int, int, int] | None
    mask: np.ndarray
    contours: int  # closed planar contours read


def _roi_contours(item, name: str, planes: Sequence[_Plane], by_uid: dict[str, int],
                  spacing_z: float) -> dict[int, list[np.ndarray]]:
    """Pixel polygons per slice of one ROIContourSequence item; open contours and points are skipped."""
    per_slice: dict[int, list[np.ndarray]] = {}
    skipped = 0
    normal = planes[0].normal
    heights = np.array([p.origin @ normal for p in planes])
    for k, contour in enumerate(item.get("ContourSequence", [])):
        kind = str(contour.get("ContourGeometricType", "CLOSED_PLANAR"))
        if kind not in ("CLOSED_PLANAR", "CLOSEDPLANAR_XOR"):
            skipped += 1
            continue
        xyz = np.asarray([float(v) for v in contour.ContourData], np.float64)
        if xyz.size < 9 or xyz.size % 3:
            raise InputError(f"ROI {name!r} contour {k + 1}: {xyz.size} ContourData values are not 3 or more "
                             "(x, y, z) points")
        xyz = xyz.reshape(-1, 3)
        refs = [str(r.ReferencedSOPInstanceUID) for r in contour.get("ContourImageSequence", [])]
        z = int(np.argmin(np.abs(heights - float(np.mean(xyz @ normal)))))
        if refs and refs[0] in by_uid:
            z = by_uid[refs[0]]
        elif refs:
            raise InputError(f"ROI {name!r} contour {k + 1} references instance {refs[0]}, not one of the series")
        rc, off = planes[z].to_pixel(xyz)
        if np.max(np.abs(off)) > _PLANE_TOL * spacing_z:
            raise InputError(f"ROI {name!r} contour {k + 1} lies up to {np.max(np.abs(off)):.3f} mm off the plane "
                             f"of slice z={z}")
        per_slice.setdefault(z, []).append(rc)
    if skipped:
        log.warning("ROI %r: %d open or point contour(s) skipped (they enclose no area)", name, skipped)
    return per_slice


def read_rtstruct(path: str | os.PathLike, source_dir: str | os.PathLike, *,
                  image: Image | None = None) -> list[RtRoi]:
    """Rasterise every ROI of the RT Structure Set ``path`` onto the series in ``source_dir``.

    Returns one :class:`RtRoi` per StructureSetROISequence item, masks bool (z, y, x) on the series as
    :func:`~voxprompt.io.read_image` reads it (``image``, read again when omitted). Contours are placed by
    the instance they reference (else by the nearest slice plane) through that instance's geometry, and
    filled by pixel centre, even-odd (:func:`rasterise_contours`). Raises InputError when the file is not
    an RTSTRUCT, its frame of reference is not the series', or a contour lies off every slice.
    Needs only pydicom (not pydicomrt).
    """
    import pydicom

    p = Path(path)
    try:
        ds = pydicom.dcmread(p)
    except FileNotFoundError:
        raise UsageError(f"RTSTRUCT {p} does not exist") from None
    except Exception as err:  # pydicom raises many types for a bad file
        raise InputError(f"{p}: cannot read DICOM ({type(err).__name__}: {err})") from None
    if str(ds.get("SOPClassUID", "")) != RTSTRUCT_SOP_CLASS:
        raise InputError(f"{p}: not an RT Structure Set (SOPClassUID {ds.get('SOPClassUID', 'missing')})")
    image, sources = _dicom_series(source_dir, image, "reading an RT Structure Set")
    planes = [_Plane.of(s) for s in sources]
    by_uid = {str(s.SOPInstanceUID): z for z, s in enumerate(sources)}
    frame = str(sources[0].get("FrameOfReferenceUID", ""))
    spacing_z = float(image.spacing[2]) if image.shape[0] > 1 else 1.0
    contours_of = {int(c.ReferencedROINumber): c for c in ds.get("ROIContourSequence", [])}
    out = []
    for roi in ds.get("StructureSetROISequence", []):
        number, name = int(roi.ROINumber), str(roi.get("ROIName", ""))
        ref = str(roi.get("ReferencedFrameOfReferenceUID", ""))
        if frame and ref and ref != frame:
            raise InputError(f"{p}: ROI {name!r} is in frame of reference {ref}, the series in {frame}")
        item = contours_of.get(number)
        mask = np.zeros(image.shape, bool)
        color, n = None, 0
        if item is not None:
            if "ROIDisplayColor" in item:
                color = tuple(int(c) for c in item.ROIDisplayColor)
            for z, polys in _roi_contours(item, name, planes, by_uid, spacing_z).items():
                mask[z] = rasterise_contours(polys, image.shape[1:])
                n += len(polys)
        out.append(RtRoi(number=number, name=name, color=color, mask=mask, contours=n))
    return out


__all__ = ["write_rtstruct", "read_rtstruct", "RtRoi", "require_rtstruct", "rtstruct_output_path",
           "mask_contours", "rasterise_contours", "DEFAULT_RTSTRUCT_NAME", "ROI_COLORS", "RTSTRUCT_SOP_CLASS"]
