"""2D image I/O: PNG, JPEG, TIFF (single or multi-page) and DICOM (single or multi-frame).

:func:`read_image2d` returns one frame as an :class:`Image2D` (grey ``(H, W)`` or RGB
``(H, W, 3)``, the file's own dtype; DICOM with its modality LUT applied, so CT is in HU).
Multi-frame files (multi-page TIFF, multi-frame DICOM) are volumes: :func:`read_frames` stacks
them as a 3D :class:`~voxprompt.io.Image` whose axis 0 is the frame. :func:`write_mask2d` writes
a 2D mask as PNG or TIFF (bool -> 0/1 like 3D outputs, or 0/255 on request; integer labels as
they are), atomically.
"""
from __future__ import annotations

import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ImageReadError, InputError, UsageError
from .image import Image

log = logging.getLogger(__name__)

RASTER_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
DICOM_EXTENSIONS = (".dcm", ".dicom")
READ_EXTENSIONS_2D = RASTER_EXTENSIONS + DICOM_EXTENSIONS
WRITE_EXTENSIONS_2D = (".png", ".tif", ".tiff")
MAX_PIXELS = 1 << 28
PathLike = str | os.PathLike


@dataclass
class Image2D:
    """One 2D frame: ``array`` is (H, W) grey or (H, W, C) colour, in the file's dtype."""

    array: np.ndarray
    spacing: tuple[float, float] = (1.0, 1.0)  # mm per (row, column); 1.0 when unknown
    source_path: Path | None = None
    modality: str = ""  # DICOM Modality (e.g. "CT"), else ""

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.array.shape[0]), int(self.array.shape[1])


def _ext(path: PathLike) -> str:
    return Path(path).suffix.lower()


def is_2d_file(path: PathLike) -> bool:
    """Whether ``path`` is a file this module reads (a DICOM *folder* is a 3D series)."""
    p = Path(path)
    return p.is_file() and _ext(p) in READ_EXTENSIONS_2D


def _check_file(path: PathLike) -> Path:
    p = Path(path)
    if not p.exists():
        raise ImageReadError(f"{p}: file not found")
    if p.is_dir():
        raise ImageReadError(f"{p}: is a folder (a DICOM series is a 3D volume; read it with read_image)")
    if _ext(p) not in READ_EXTENSIONS_2D:
        raise ImageReadError(f"{p}: unsupported 2D image extension {_ext(p) or '(none)'!r}; expected one of "
                             f"{', '.join(READ_EXTENSIONS_2D)}")
    if p.stat().st_size == 0:
        raise ImageReadError(f"{p}: file is empty")
    return p


# ----------------------------------------------------------------------------- readers per format
def _read_pil(path: Path) -> np.ndarray:
    from PIL import Image as PILImage
    from PIL import UnidentifiedImageError

    try:
        with PILImage.open(path) as im:
            if im.width * im.height > MAX_PIXELS:
                raise ImageReadError(f"{path}: {im.width}x{im.height} pixels is above the limit of {MAX_PIXELS:,}")
            mode = im.mode
            if mode in ("P", "PA"):
                im = im.convert("RGBA" if "transparency" in im.info or mode == "PA" else "RGB")
            elif mode == "1":
                im = im.convert("L")
            elif mode == "CMYK" or mode == "YCbCr":
                im = im.convert("RGB")
            elif mode.startswith("I;16"):
                return np.asarray(im).astype(np.uint16)
            return np.asarray(im)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageReadError(f"{path}: unreadable or corrupt image ({exc})") from None


def _tiff_frames(path: Path) -> np.ndarray:
    """(F, H, W) or (F, H, W, C) from a TIFF, using its axes to tell pages from channels."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tf:
            series = tf.series[0]
            axes = series.axes.upper()
            arr = series.asarray()
    except (tifffile.TiffFileError, OSError, ValueError, IndexError, KeyError) as exc:
        raise ImageReadError(f"{path}: unreadable or corrupt TIFF ({exc})") from None
    if "S" in axes and axes.index("S") != len(axes) - 1:  # planar RGB: samples first
        arr = np.moveaxis(arr, axes.index("S"), -1)
        axes = axes.replace("S", "") + "S"
    spatial = axes.rstrip("S")
    if len(spatial) < 2 or spatial[-2:] != "YX":
        raise ImageReadError(f"{path}: TIFF axes {series.axes!r} are not ...YX[S]")
    lead = len(spatial) - 2
    if lead == 0:
        arr = arr[None]
    elif lead > 1:
        arr = arr.reshape((-1,) + arr.shape[lead:])
    return arr


def _dicom_dataset(path: Path):
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(str(path))
    except (InvalidDicomError, OSError, EOFError, ValueError, TypeError) as exc:
        raise ImageReadError(f"{path}: not a readable DICOM file ({exc})") from None
    if "PixelData" not in ds:
        raise ImageReadError(f"{path}: DICOM file has no pixel data (e.g. a SEG, SR or DICOMDIR)")
    return ds


def _dicom_frames(path: Path) -> tuple[np.ndarray, object]:
    """(F, H, W[, 3]) modality values (HU for CT) and the dataset."""
    from pydicom.pixels import apply_modality_lut

    ds = _dicom_dataset(path)
    rows, cols = int(ds.get("Rows", 0)), int(ds.get("Columns", 0))
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if rows * cols * frames > MAX_PIXELS:
        raise ImageReadError(f"{path}: {frames} x {rows} x {cols} pixels is above the limit of {MAX_PIXELS:,}")
    try:
        arr = ds.pixel_array
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types for bad/unsupported pixel data
        raise ImageReadError(f"{path}: cannot decode DICOM pixel data ({type(exc).__name__}: {exc})") from None
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if frames == 1:
        arr = arr[None]
    if samples == 1:
        if "RescaleSlope" in ds or "ModalityLUTSequence" in ds:
            arr = apply_modality_lut(arr, ds)
        if str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1":
            wide = arr.astype(np.float64 if np.issubdtype(arr.dtype, np.floating) else np.int64)
            arr = wide.max() + wide.min() - wide  # MONOCHROME1: higher values are darker
    return np.asarray(arr), ds


def _dicom_spacing(ds) -> tuple[float, float, float]:
    """(row, column, frame) spacing in mm (1.0 where unknown)."""
    def first(*names: str):
        for n in names:
            v = ds.get(n)
            if v is not None:
                return v
        shared = ds.get("SharedFunctionalGroupsSequence")
        if shared:
            pm = shared[0].get("PixelMeasuresSequence")
            if pm:
                for n in names:
                    v = pm[0].get(n)
                    if v is not None:
                        return v
        return None

    ps = first("PixelSpacing", "ImagerPixelSpacing")
    row, col = (float(ps[0]), float(ps[1])) if ps is not None and len(ps) == 2 else (1.0, 1.0)
    thick = first("SpacingBetweenSlices", "SliceThickness")
    z = float(thick) if thick not in (None, "") and float(thick) > 0 else 1.0
    return row, col, z


def _frames(path: Path) -> tuple[np.ndarray, tuple[float, float, float], str]:
    """All frames of a 2D file: (F, H, W[, C]) array, (row, col, frame) spacing, modality."""
    ext = _ext(path)
    if ext in DICOM_EXTENSIONS:
        arr, ds = _dicom_frames(path)
        return arr, _dicom_spacing(ds), str(ds.get("Modality", ""))
    if ext in (".tif", ".tiff"):
        return _tiff_frames(path), (1.0, 1.0, 1.0), ""
    return _read_pil(path)[None], (1.0, 1.0, 1.0), ""


def _check_array(arr: np.ndarray, path: Path) -> None:
    if arr.size == 0 or min(arr.shape[1:3]) == 0:
        raise ImageReadError(f"{path}: image is empty (shape {arr.shape[1:]})")
    if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        raise InputError(f"{path}: image contains NaN or infinite values")


# ----------------------------------------------------------------------------- public API
def count_frames(path: PathLike) -> int:
    """Number of frames (pages) of a 2D file, read from the header where possible."""
    p = _check_file(path)
    ext = _ext(p)
    if ext in DICOM_EXTENSIONS:
        import pydicom
        from pydicom.errors import InvalidDicomError

        try:
            ds = pydicom.dcmread(str(p), stop_before_pixels=True)
        except (InvalidDicomError, OSError, EOFError, ValueError, TypeError) as exc:
            raise ImageReadError(f"{p}: not a readable DICOM file ({exc})") from None
        return int(ds.get("NumberOfFrames", 1) or 1)
    if ext in (".tif", ".tiff"):
        return int(_tiff_frames(p).shape[0])
    return 1


def read_image2d(path: PathLike, frame: int | None = None) -> Image2D:
    """Read one frame of a PNG / JPEG / TIFF / DICOM file.

    A multi-frame file needs ``frame`` (0-based); otherwise :class:`ImageReadError` says how many
    frames it has (read those as a volume with :func:`read_frames`).
    """
    p = _check_file(path)
    arr, (sy, sx, _), modality = _frames(p)
    _check_array(arr, p)
    n = arr.shape[0]
    if frame is None:
        if n > 1:
            raise ImageReadError(f"{p}: has {n} frames; choose one (frame=, CLI --slice) or read them as a "
                                 "volume (read_frames)")
        frame = 0
    if not 0 <= int(frame) < n:
        raise UsageError(f"{p}: frame {frame} does not exist (the file has {n} frame(s))")
    out = np.ascontiguousarray(arr[int(frame)])
    log.debug("read %s frame %d: %s %s", p, frame, out.shape, out.dtype)
    return Image2D(out, (sy, sx), p, modality)


def read_frames(path: PathLike) -> Image:
    """All frames of a grey 2D file as a 3D volume (axis 0 = frame), with the pixel spacing."""
    p = _check_file(path)
    arr, (sy, sx, sz), _ = _frames(p)
    _check_array(arr, p)
    if arr.ndim != 3:
        raise ImageReadError(f"{p}: colour frames (shape {arr.shape[1:]}) cannot form a scalar volume")
    return Image(np.ascontiguousarray(arr), spacing=(sx, sy, sz), origin=(0.0, 0.0, 0.0), direction=np.eye(3),
                 source_path=p)


def image2d_from_array(array: np.ndarray, spacing: tuple[float, float] = (1.0, 1.0)) -> Image2D:
    """Wrap an (H, W) or (H, W, C) array (checked for emptiness and NaN)."""
    a = np.asarray(array)
    if a.ndim not in (2, 3) or a.size == 0 or min(a.shape[:2]) == 0:
        raise InputError(f"2D image must be a non-empty (H, W) or (H, W, C) array, got shape {a.shape}")
    if not (np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_):
        raise InputError(f"2D image must be numeric, got dtype {a.dtype}")
    if np.issubdtype(a.dtype, np.floating) and not np.isfinite(a).all():
        raise InputError("2D image contains NaN or infinite values")
    return Image2D(a, tuple(float(s) for s in spacing))


def _mask_pixels(mask: np.ndarray, foreground: int = 1) -> np.ndarray:
    m = np.asarray(mask)
    if m.dtype == np.bool_:
        return m.astype(np.uint8) * np.uint8(foreground)
    if not np.issubdtype(m.dtype, np.integer):
        raise InputError(f"mask dtype {m.dtype} is not a label type; use bool or integers")
    if m.size and (int(m.min()) < 0 or int(m.max()) > 65535):
        raise InputError(f"mask labels must lie in 0..65535, got {int(m.min())}..{int(m.max())}")
    return m.astype(np.uint8 if not m.size or int(m.max()) <= 255 else np.uint16)


def write_mask2d(mask: np.ndarray, out_path: PathLike, foreground: int = 1) -> Path:
    """Write a 2D mask (bool -> 0/``foreground``: 0/1 by default, as every other mask output; 255 for
    viewers) or label map as PNG or TIFF; a (F, H, W) stack as multi-page TIFF. Atomic: written to a
    temporary file in the same folder, then renamed."""
    out = Path(out_path)
    ext = _ext(out)
    if ext not in WRITE_EXTENSIONS_2D:
        raise UsageError(f"{out}: unsupported 2D mask extension {ext or '(none)'!r}; use "
                         f"{', '.join(WRITE_EXTENSIONS_2D)}")
    if not 1 <= int(foreground) <= 255:
        raise UsageError(f"mask foreground value must lie in 1..255, got {foreground}")
    px = _mask_pixels(mask, int(foreground))
    if px.ndim == 3 and ext == ".png":
        raise UsageError(f"{out}: a stack of {px.shape[0]} masks needs a .tif output (multi-page)")
    if px.ndim not in (2, 3) or px.size == 0:
        raise InputError(f"mask must be a non-empty (H, W) array, got shape {px.shape}")
    if not out.parent.is_dir():
        raise UsageError(f"{out}: output folder {out.parent} does not exist")
    tmp = out.with_name(f".{out.name}.{secrets.token_hex(4)}.tmp{ext}")
    try:
        if ext == ".png":
            from PIL import Image as PILImage

            PILImage.fromarray(px).save(tmp, format="PNG")
        else:
            import tifffile

            tifffile.imwrite(tmp, px, photometric="minisblack", compression="zlib")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


__all__ = ["Image2D", "READ_EXTENSIONS_2D", "WRITE_EXTENSIONS_2D", "count_frames", "image2d_from_array",
           "is_2d_file", "read_frames", "read_image2d", "write_mask2d"]
