"""voxprompt.io: reading, validation errors, atomic mask writing, DICOM series, geometry."""
from __future__ import annotations

import gzip
import logging
import os

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import GOLDEN

from voxprompt.errors import ImageReadError, InputError, UsageError
from voxprompt.io import Image, describe, orientation_code, read_image, write_mask

GOLDEN_IMG = GOLDEN / "sam_med3d_preproc" / "img.nii.gz"


def _rotation(ax: float, az: float) -> np.ndarray:
    cx, sx, cz, sz = np.cos(ax), np.sin(ax), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ rx


def _sitk_volume(shape_zyx=(7, 9, 11), dtype=np.int16, direction=None) -> sitk.Image:
    arr = (np.arange(np.prod(shape_zyx)) % 200).reshape(shape_zyx).astype(dtype)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((0.7, 1.3, 2.9))
    img.SetOrigin((-12.5, 30.25, 7.0))
    d = _rotation(0.3, -0.2) if direction is None else direction
    img.SetDirection(np.asarray(d).ravel().tolist())
    return img


def _reference(shape_zyx=(7, 9, 11)) -> Image:
    img = _sitk_volume(shape_zyx)
    return Image(sitk.GetArrayFromImage(img), img.GetSpacing(), img.GetOrigin(),
                 np.reshape(img.GetDirection(), (3, 3)))


# ---------------------------------------------------------------- reading and geometry

@pytest.mark.parametrize("ext", [".nii.gz", ".nii", ".nrrd", ".mha", ".mhd"])
def test_read_formats_geometry(tmp_path, ext):
    src = _sitk_volume()
    path = tmp_path / f"vol{ext}"
    sitk.WriteImage(src, str(path))
    im = read_image(path)
    assert im.shape == (7, 9, 11) and im.array.dtype == np.int16
    np.testing.assert_array_equal(im.array, sitk.GetArrayFromImage(src))
    np.testing.assert_allclose(im.spacing, src.GetSpacing(), atol=1e-5)
    np.testing.assert_allclose(im.origin, src.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(im.direction.ravel(), src.GetDirection(), atol=1e-5)
    assert not im.is_dicom and im.source_path == path


def test_affines_follow_numpy_index_order():
    src = _sitk_volume()
    im = _reference()
    pts = np.array([[0, 0, 0], [6, 8, 10], [2.5, 1.25, 9.75]])  # (z, y, x)
    for p in pts:
        expected = src.TransformContinuousIndexToPhysicalPoint(p[::-1].tolist())  # sitk wants (x,y,z)
        np.testing.assert_allclose(im.index_to_world(p), expected, atol=1e-9)
        ras = im.index_to_world(p, frame="RAS")
        np.testing.assert_allclose(ras, np.array(expected) * [-1, -1, 1], atol=1e-9)
    world = im.index_to_world(pts)
    np.testing.assert_allclose(im.world_to_index(world), pts, atol=1e-9)
    np.testing.assert_allclose(im.world_to_index(im.index_to_world(pts, "RAS"), "RAS"), pts, atol=1e-9)
    np.testing.assert_allclose(im.affine_zyx_to_ras(), np.diag([-1, -1, 1, 1]) @ im.affine_zyx_to_lps())
    with pytest.raises(UsageError):
        im.index_to_world(pts, frame="XYZ")


def test_orientation_and_describe():
    im = read_image(GOLDEN_IMG)
    assert orientation_code(im) == "LPS"
    ras = Image(im.array, im.spacing, im.origin, np.diag([-1.0, -1.0, 1.0]))
    assert orientation_code(ras) == "RAS"
    info = describe(im)
    assert info["shape_zyx"] == [40, 110, 260] and info["orientation"] == "LPS"
    assert info["dtype"] == "int16"
    assert info["min"] == float(im.array.min()) and info["max"] == float(im.array.max())
    assert info["mean"] == pytest.approx(float(im.array.mean(dtype=np.float64)))


def test_single_slice_volume_allowed(tmp_path):
    path = tmp_path / "one.nii.gz"
    sitk.WriteImage(_sitk_volume((1, 9, 11)), str(path))
    assert read_image(path).shape == (1, 9, 11)


# ---------------------------------------------------------------- read errors

def test_missing_file(tmp_path):
    with pytest.raises(ImageReadError, match="not found"):
        read_image(tmp_path / "nope.nii.gz")


def test_empty_file(tmp_path):
    path = tmp_path / "empty.nii.gz"
    path.write_bytes(b"")
    with pytest.raises(ImageReadError, match="empty"):
        read_image(path)


def test_unsupported_extension(tmp_path):
    path = tmp_path / "image.png"
    path.write_bytes(b"\x89PNG....")
    with pytest.raises(ImageReadError, match="unsupported"):
        read_image(path)


@pytest.mark.parametrize("name", ["garbage.nii.gz", "garbage.nii", "garbage.nrrd", "garbage.mha"])
def test_garbage_bytes(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(os.urandom(2048))
    with pytest.raises(ImageReadError, match=str(path.name)):
        read_image(path)


@pytest.mark.parametrize("ext", [".nii.gz", ".nii", ".mha", ".nrrd"])
def test_truncated_file(tmp_path, ext):
    path = tmp_path / f"vol{ext}"
    sitk.WriteImage(_sitk_volume((20, 30, 40)), str(path))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError) as info:
        read_image(path)
    assert path.name in str(info.value) and "\n" not in str(info.value)


def test_truncated_gzip_of_uncompressed_header(tmp_path):
    """A .nii.gz cut inside the header (only a gzip fragment left)."""
    path = tmp_path / "cut.nii.gz"
    path.write_bytes(gzip.compress(b"\x5c\x01\x00\x00" + b"\x00" * 100)[:40])
    with pytest.raises(ImageReadError):
        read_image(path)


def test_4d_image(tmp_path):
    vols = [_sitk_volume((4, 5, 6), direction=np.eye(3)) for _ in range(3)]
    img4 = sitk.JoinSeries(vols)
    path = tmp_path / "t.nii.gz"
    sitk.WriteImage(img4, str(path))
    with pytest.raises(ImageReadError, match="4D"):
        read_image(path)


def test_vector_image(tmp_path):
    comp = sitk.Compose([_sitk_volume((4, 5, 6))] * 3)
    path = tmp_path / "rgb.mha"
    sitk.WriteImage(comp, str(path))
    with pytest.raises(ImageReadError, match="multi-component"):
        read_image(path)


def test_2d_image_rejected(tmp_path):
    path = tmp_path / "flat.mha"
    sitk.WriteImage(sitk.Image(8, 8, sitk.sitkUInt8), str(path))
    with pytest.raises(ImageReadError, match="2D"):
        read_image(path)


def _mha_header(dims: str) -> bytes:
    return (f"ObjectType = Image\nNDims = 3\nDimSize = {dims}\nElementType = MET_SHORT\n"
            "ElementSpacing = 1 1 1\nElementDataFile = LOCAL\n").encode() + b"\x00" * 64


def test_huge_header_mha(tmp_path):
    path = tmp_path / "huge.mha"
    path.write_bytes(_mha_header("100000 100000 100000"))
    with pytest.raises(ImageReadError, match="limit"):
        read_image(path)


def test_huge_header_nrrd(tmp_path):
    path = tmp_path / "huge.nrrd"
    path.write_bytes(b"NRRD0004\ntype: short\ndimension: 3\nsizes: 100000 100000 100000\n"
                     b"encoding: raw\nendian: little\nspace: left-posterior-superior\n"
                     b"space directions: (1,0,0) (0,1,0) (0,0,1)\nspace origin: (0,0,0)\n\n"
                     + b"\x00" * 64)
    with pytest.raises(ImageReadError, match="limit"):
        read_image(path)


def test_configurable_voxel_limit(tmp_path):
    path = tmp_path / "v.nrrd"
    sitk.WriteImage(_sitk_volume(), str(path))
    with pytest.raises(ImageReadError, match="limit"):
        read_image(path, max_voxels=100)


def test_zero_size_dimension(tmp_path):
    path = tmp_path / "zero.mha"
    path.write_bytes(_mha_header("0 10 10"))
    with pytest.raises(ImageReadError):
        read_image(path)


def test_nan_voxels(tmp_path):
    img = _sitk_volume(dtype=np.float32)
    arr = sitk.GetArrayFromImage(img)
    arr[3, 4, 5] = np.nan
    arr[0, 0, 0] = np.inf
    bad = sitk.GetImageFromArray(arr)
    bad.CopyInformation(img)
    path = tmp_path / "nan.nrrd"
    sitk.WriteImage(bad, str(path))
    with pytest.raises(InputError, match="2 voxel"):
        read_image(path)


# ---------------------------------------------------------------- writing

@pytest.mark.parametrize("ext", [".nii.gz", ".nii", ".nrrd", ".mha"])
def test_write_mask_roundtrip(tmp_path, ext):
    ref = _reference()
    mask = (ref.array % 3 == 0)
    out = write_mask(mask, ref, tmp_path / f"m{ext}")
    back = read_image(out)
    assert back.array.dtype == np.uint8
    np.testing.assert_array_equal(back.array, mask.astype(np.uint8))
    np.testing.assert_allclose(back.spacing, ref.spacing, atol=1e-5)
    np.testing.assert_allclose(back.origin, ref.origin, atol=1e-4)
    np.testing.assert_allclose(back.direction, ref.direction, atol=1e-5)
    assert [p.name for p in tmp_path.iterdir()] == [f"m{ext}"]


def test_write_mask_uint16_and_bad_labels(tmp_path):
    ref = _reference()
    labels = np.zeros(ref.shape, np.int32)
    labels[1, 2, 3] = 300
    back = read_image(write_mask(labels, ref, tmp_path / "l.nrrd"))
    assert back.array.dtype == np.uint16 and back.array[1, 2, 3] == 300
    with pytest.raises(InputError):
        write_mask(labels - 1, ref, tmp_path / "neg.nrrd")
    with pytest.raises(InputError):
        write_mask(labels.astype(np.float32), ref, tmp_path / "float.nrrd")


def test_write_mask_errors_write_nothing(tmp_path):
    ref = _reference()
    with pytest.raises(UsageError, match="extension"):
        write_mask(np.zeros(ref.shape, bool), ref, tmp_path / "m.png")
    with pytest.raises(InputError, match="shape"):
        write_mask(np.zeros((7, 9, 10), bool), ref, tmp_path / "m.nii.gz")
    assert list(tmp_path.iterdir()) == []


def test_write_mask_failure_leaves_no_partial_file(tmp_path, monkeypatch):
    ref = _reference()
    out = tmp_path / "m.nii.gz"
    write_mask(np.ones(ref.shape, bool), ref, out)
    before = out.read_bytes()

    def broken(image, path, *args, **kwargs):
        with open(path, "wb") as fh:
            fh.write(b"partial")
        raise RuntimeError("disk full")

    monkeypatch.setattr(sitk, "WriteImage", broken)
    with pytest.raises(OSError, match="disk full"):
        write_mask(np.zeros(ref.shape, bool), ref, out)
    assert out.read_bytes() == before  # the previous output is untouched
    assert [p.name for p in tmp_path.iterdir()] == ["m.nii.gz"]  # no temp file left
    out2 = tmp_path / "new.nrrd"
    with pytest.raises(OSError):
        write_mask(np.zeros(ref.shape, bool), ref, out2)
    assert not out2.exists()


# ---------------------------------------------------------------- DICOM

def _write_dicom_series(vol: sitk.Image, folder, series_uid: str, number: int = 1, description: str = "") -> None:
    folder.mkdir(exist_ok=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    d = vol.GetDirection()
    common = {
        "0008|0060": "CT",
        "0008|0008": "ORIGINAL\\PRIMARY\\AXIAL",
        "0020|000d": "1.2.826.0.1.3680043.2.1125.1.1",
        "0020|000e": series_uid,
        "0020|0052": "1.2.826.0.1.3680043.2.1125.1.3",
        "0020|0037": "\\".join(f"{v:.10f}" for v in (d[0], d[3], d[6], d[1], d[4], d[7])),
        "0018|0050": str(vol.GetSpacing()[2]),
        "0010|0010": "Synthetic^Patient",
        "0020|0011": str(number),
        "0008|103e": description,
    }
    for k in range(vol.GetDepth()):
        sl = vol[:, :, k]
        for tag, value in common.items():
            sl.SetMetaData(tag, value)
        pos = vol.TransformIndexToPhysicalPoint((0, 0, k))
        sl.SetMetaData("0020|0032", "\\".join(f"{v:.6f}" for v in pos))
        sl.SetMetaData("0020|0013", str(k + 1))
        sl.SetMetaData("0008|0018", f"{series_uid}.{k + 1}")
        writer.SetFileName(str(folder / f"{series_uid[-3:]}_{k:03d}.dcm"))
        writer.Execute(sl)


def test_dicom_series_geometry(tmp_path, caplog):
    vol = _sitk_volume((6, 16, 20), direction=_rotation(0.2, 0.1))
    folder = tmp_path / "dcm"
    _write_dicom_series(vol, folder, "1.2.826.0.1.3680043.2.1125.1.200")
    small = _sitk_volume((3, 16, 20), direction=np.eye(3))
    _write_dicom_series(small, folder, "1.2.826.0.1.3680043.2.1125.1.300")
    with caplog.at_level(logging.WARNING, logger="voxprompt.io.read"):
        im = read_image(folder)
    assert "2 DICOM series" in caplog.text
    assert im.is_dicom and len(im.dicom_files) == 6
    assert im.shape == (6, 16, 20)
    np.testing.assert_array_equal(im.array, sitk.GetArrayFromImage(vol))
    np.testing.assert_allclose(im.spacing, vol.GetSpacing(), atol=1e-4)
    np.testing.assert_allclose(im.origin, vol.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(im.direction.ravel(), vol.GetDirection(), atol=1e-6)


def test_folder_without_dicom(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ImageReadError, match="no DICOM"):
        read_image(tmp_path)


# ---------------------------------------------------------------- issue 20: correct and unsurprising commands

@pytest.mark.parametrize("ext", [".nii.gz", ".nii"])
def test_nan_in_nifti_is_refused_like_other_formats(tmp_path, ext):
    """Item 8: SimpleITK's NIfTI reader turns NaN into 0; read_image refuses it as for NRRD/MHA."""
    img = _sitk_volume(dtype=np.float32)
    arr = sitk.GetArrayFromImage(img)
    arr[3, 4, 5] = np.nan
    arr[0, 0, 0] = -np.inf
    bad = sitk.GetImageFromArray(arr)
    bad.CopyInformation(img)
    path = tmp_path / f"nan{ext}"
    sitk.WriteImage(bad, str(path))
    with pytest.raises(InputError, match="2 voxel"):
        read_image(path)
    good = tmp_path / f"ok{ext}"
    sitk.WriteImage(img, str(good))
    np.testing.assert_array_equal(read_image(good).array, sitk.GetArrayFromImage(img))


def test_nan_in_float64_big_endian_nifti_is_refused(tmp_path):
    """The raw NIfTI scan follows the header's datatype and byte order."""
    arr = np.arange(2 * 3 * 4, dtype=">f8").reshape(4, 3, 2)  # file axes (i, j, k)
    arr[1, 2, 0] = np.nan
    hdr = bytearray(352)
    hdr[0:4] = (348).to_bytes(4, "big")
    dims = np.array([3, 4, 3, 2, 1, 1, 1, 1], ">i2")
    hdr[40:56] = dims.tobytes()
    hdr[70:72] = np.array([64], ">i2").tobytes()  # float64
    hdr[72:74] = np.array([64], ">i2").tobytes()
    hdr[76:108] = np.array([1, 1, 1, 1, 1, 1, 1, 1], ">f4").tobytes()
    hdr[108:112] = np.array([352], ">f4").tobytes()
    hdr[112:116] = np.array([1], ">f4").tobytes()  # scl_slope
    hdr[344:348] = b"n+1\0"
    path = tmp_path / "be.nii"
    path.write_bytes(bytes(hdr) + arr.tobytes(order="F"))
    with pytest.raises(InputError, match="1 voxel"):
        read_image(path)


def test_dicom_folder_series_choice(tmp_path, caplog):
    """Item 7: ``read_image(folder, series=UID | number)`` picks a series; an unknown one is a usage
    error listing the available ones; without a choice the largest is read with a warning saying how."""
    big = _sitk_volume((5, 16, 20), direction=np.eye(3))
    small = _sitk_volume((3, 12, 10), direction=np.eye(3))
    folder = tmp_path / "dcm"
    uid_big, uid_small = "1.2.826.0.1.3680043.2.1125.1.500", "1.2.826.0.1.3680043.2.1125.1.600"
    _write_dicom_series(big, folder, uid_big, number=2, description="Axial")
    _write_dicom_series(small, folder, uid_small, number=9, description="Scout")
    with caplog.at_level(logging.WARNING, logger="voxprompt.io.read"):
        assert read_image(folder).shape == (5, 16, 20)
    assert "series=" in caplog.text and "--series" in caplog.text
    for choice in (uid_small, 9, "9"):
        im = read_image(folder, series=choice)
        assert im.shape == (3, 12, 10) and len(im.dicom_files) == 3
        np.testing.assert_array_equal(im.array, sitk.GetArrayFromImage(small))
    assert read_image(folder, series=uid_big).shape == (5, 16, 20)
    with pytest.raises(UsageError) as err:
        read_image(folder, series="4")
    msg = str(err.value)
    assert uid_big in msg and uid_small in msg and "Scout" in msg and "\n" not in msg
    with pytest.raises(UsageError, match="DICOM folder"):
        read_image(tmp_path / "dcm" / os.listdir(folder)[0], series=9)


def test_list_dicom_series(tmp_path):
    from voxprompt.io.read import list_dicom_series

    _write_dicom_series(_sitk_volume((5, 16, 20), direction=np.eye(3)), tmp_path / "d", "1.2.3.4.5", number=2,
                        description="Axial")
    (info,) = list_dicom_series(tmp_path / "d")
    assert (info.uid, info.number, info.description, info.slices, info.size_xyz) == (
        "1.2.3.4.5", 2, "Axial", 5, (20, 16, 5))
