"""RT Structure Set output: references, ROI names, and contours that rasterise back to the mask.

Each written file is read back with pydicom and its contours rasterised three ways: by this test alone
(from ContourData and each referenced instance's own ImagePositionPatient / ImageOrientationPatient /
PixelSpacing, scikit-image's polygon fill, even-odd), by ``voxprompt.io.rtstruct.read_rtstruct``, and by
pydicomrt's own reader. The Dice of each against the mask is recorded (``record_property``, and logged:
``pytest tests/test_rtstruct.py -o log_cli=true --log-cli-level=INFO`` shows them).

The bounds follow from how the contours are drawn: they are the 0.5 iso-lines of the mask, through the
midpoints between object and background pixel centres, so no pixel centre lies within 0.35 pixel of a
contour and a pixel-centre rasteriser must return the mask exactly (Dice 1). pydicomrt's reader rounds
every vertex to the nearest pixel centre first (it expects contours through boundary pixel centres), so
it may only differ from the mask within one pixel of the mask's boundary. The contour area differs
from the voxel area by at most 1/8 pixel per vertex (each diagonal step cuts or adds half a half-pixel square).
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from scipy import ndimage
from skimage.draw import polygon2mask
from test_dicom_seg import make_series  # the synthetic CT series writer of the DICOM SEG tests

from voxprompt.cli import main
from voxprompt.errors import InputError, UsageError
from voxprompt.io import read_image, write_mask
from voxprompt.io.dicom_seg import NotDicomError, write_dicom_seg
from voxprompt.io.rtstruct import (
    DEFAULT_RTSTRUCT_NAME,
    RTSTRUCT_SOP_CLASS,
    mask_contours,
    rasterise_contours,
    read_rtstruct,
    write_rtstruct,
)

log = logging.getLogger(__name__)

SLICES = 12  # make_series: 16 x 16 pixels, PixelSpacing (0.8, 0.7) mm (rows, columns), 2.5 mm apart


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total


def sphere(shape: tuple[int, int, int], centre_zyx, radius_mm: float) -> np.ndarray:
    """Voxels within ``radius_mm`` of a centre on make_series' grid (2.5, 0.8, 0.7 mm)."""
    z, y, x = np.indices(shape, dtype=np.float64)
    cz, cy, cx = centre_zyx
    return ((z - cz) * 2.5) ** 2 + ((y - cy) * 0.8) ** 2 + ((x - cx) * 0.7) ** 2 <= radius_mm ** 2


def shapes(shape: tuple[int, int, int]) -> dict[str, tuple[np.ndarray, dict[int, str]]]:
    """Label maps (z, y, x) and their ROI names: one per case of the issue."""
    out = {}
    out["sphere"] = (sphere(shape, (5.5, 7.3, 8.1), 5.0).astype(np.uint8), {1: "Sphere"})
    ring = np.zeros(shape, np.uint8)
    yy, xx = np.indices(shape[1:])
    r2 = ((yy - 7.5) * 0.8) ** 2 + ((xx - 7.0) * 0.7) ** 2
    ring[2:5] = (r2 <= 5.2 ** 2) & (r2 > 2.6 ** 2)  # a disc with a hole on three slices
    ring[3, 7, 7] = 1  # and an island in the hole on the middle one (a contour inside the hole's)
    ring[4, 0:2, 14:16] = 1  # plus a second component in the corner
    out["ring with hole"] = (ring, {1: "Ring"})
    two = np.zeros(shape, np.uint8)
    two[1:7, 2:6, 2:7] = 1  # a box
    two[3:9, 9:15, 10:13] = 2  # an L-shape beside it
    two[3:9, 13:15, 6:13] = 2
    out["two objects"] = (two, {1: "Box", 2: "L-shape"})
    thin = np.zeros(shape, np.uint8)
    thin[0, 5, 2:14] = 1  # one pixel wide, on the first slice
    thin[0, [8, 9, 10, 11], [3, 4, 5, 6]] = 1  # a diagonal chain: pixels touching at corners only
    thin[1, 12, 12] = 1  # a single voxel on the next
    out["few slices"] = (thin, {1: "Thin"})
    return out


def series_planes(folder: Path) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, float, float]]:
    """SOPInstanceUID -> (IPP, row direction, column direction, row spacing, column spacing), from the files."""
    out = {}
    for f in sorted(folder.iterdir()):
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        iop = np.array(ds.ImageOrientationPatient, float)
        out[ds.SOPInstanceUID] = (np.array(ds.ImagePositionPatient, float), iop[:3], iop[3:],
                                  float(ds.PixelSpacing[0]), float(ds.PixelSpacing[1]))
    return out


def rasterise_independently(rs: pydicom.Dataset, roi_number: int, planes: dict, z_of: dict,
                            shape: tuple[int, int, int]) -> np.ndarray:
    """The ROI's mask from its ContourData and the series files alone (pixel centres, even-odd)."""
    item = next(c for c in rs.ROIContourSequence if int(c.ReferencedROINumber) == roi_number)
    mask = np.zeros(shape, bool)
    for contour in item.get("ContourSequence", []):
        assert contour.ContourGeometricType == "CLOSED_PLANAR"
        uid = contour.ContourImageSequence[0].ReferencedSOPInstanceUID
        ipp, u, v, dr, dc = planes[uid]
        xyz = np.array(contour.ContourData, float).reshape(-1, 3)
        assert int(contour.NumberOfContourPoints) == len(xyz)
        d = xyz - ipp
        assert np.allclose(d @ np.cross(u, v), 0, atol=1e-3)  # in the referenced instance's plane
        mask[z_of[uid]] ^= polygon2mask(shape[1:], np.stack([d @ v / dr, d @ u / dc], axis=1))
    return mask


def signed_area_mm2(rs: pydicom.Dataset, roi_number: int, planes: dict, mask: np.ndarray, z_of: dict) -> float:
    """Area enclosed by the ROI's contours (shoelace, mm²), a hole's counted negative."""
    item = next(c for c in rs.ROIContourSequence if int(c.ReferencedROINumber) == roi_number)
    total = 0.0
    for contour in item.get("ContourSequence", []):
        uid = contour.ContourImageSequence[0].ReferencedSOPInstanceUID
        ipp, u, v, dr, dc = planes[uid]
        d = np.array(contour.ContourData, float).reshape(-1, 3) - ipp
        x, y = d @ u, d @ v
        a = 0.5 * abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))
        total += a if _inside_is_object(mask[z_of[uid]], y / dr, x / dc) else -a
    return total


def _inside_is_object(mask2d: np.ndarray, r: np.ndarray, c: np.ndarray) -> bool:
    """Whether the pixels just inside a closed contour are object (an outer contour) or background (a hole)."""
    inside = polygon2mask(mask2d.shape, np.stack([r, c], axis=1))
    near = inside & ~ndimage.binary_erosion(inside)  # the ring of centres just inside the contour
    return bool(mask2d[near].mean() > 0.5)


@pytest.fixture(scope="module")
def series(tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("rt")
    uids, _ = make_series(d / "ct", slices=SLICES)
    image = read_image(d / "ct")
    first = pydicom.dcmread(next((d / "ct").iterdir()), stop_before_pixels=True)
    return {"dir": d / "ct", "uids": uids, "image": image, "planes": series_planes(d / "ct"),
            "z_of": {u: z for z, u in enumerate(uids)}, "frame": first.FrameOfReferenceUID,
            "series_uid": first.SeriesInstanceUID, "study_uid": first.StudyInstanceUID}


@pytest.mark.parametrize("case", ["sphere", "ring with hole", "two objects", "few slices"])
def test_rtstruct_contours_rasterise_back_to_the_mask(series, tmp_path, case, record_property):
    from pydicomrt.rs import calc_image_series_affine_mapping, check_rtstruct_iod, rtstruct_to_masks

    image = series["image"]
    labels, names = shapes(image.shape)[case]
    out = write_rtstruct(labels, series["dir"], tmp_path / "rs.dcm", image=image, segments=names,
                         model_name="voxprompt-med3d-small")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rs.dcm"]  # no temporary left
    rs = pydicom.dcmread(out)

    # references: study, frame of reference, series and every instance; ROI names, numbers and frames
    assert rs.SOPClassUID == RTSTRUCT_SOP_CLASS and rs.Modality == "RTSTRUCT"
    assert rs.StudyInstanceUID == series["study_uid"] and rs.SeriesInstanceUID != series["series_uid"]
    ref = rs.ReferencedFrameOfReferenceSequence[0]
    assert ref.FrameOfReferenceUID == series["frame"]
    ref_series = ref.RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
    assert ref_series.SeriesInstanceUID == series["series_uid"]
    assert sorted(c.ReferencedSOPInstanceUID for c in ref_series.ContourImageSequence) == sorted(series["uids"])
    assert [(int(r.ROINumber), r.ROIName) for r in rs.StructureSetROISequence] == list(
        enumerate(names.values(), 1))
    assert all(r.ReferencedFrameOfReferenceUID == series["frame"] for r in rs.StructureSetROISequence)
    assert all(r.ROIGenerationAlgorithm == "AUTOMATIC" and "voxprompt-med3d-small" in r.ROIGenerationDescription
               for r in rs.StructureSetROISequence)
    assert rs.Manufacturer == "voxprompt" and rs.StructureSetLabel == "VOXPROMPT"
    assert check_rtstruct_iod(rs) == {"result": True, "content": []}  # pydicomrt's own IOD check

    headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in series["dir"].iterdir()]
    headers.sort(key=lambda ds: float(ds.ImagePositionPatient[2]))  # pydicomrt wants them along the normal
    affine, vol_shape = calc_image_series_affine_mapping(headers)
    by_pydicomrt = rtstruct_to_masks(rs, affine, vol_shape)
    ours = {r.number: r for r in read_rtstruct(out, series["dir"], image=image)}
    for number, (value, name) in enumerate(names.items(), 1):
        truth = labels == value
        mine = rasterise_independently(rs, number, series["planes"], series["z_of"], image.shape)
        d_test, d_read = dice(mine, truth), dice(ours[number].mask, truth)
        theirs = by_pydicomrt[name]["mask_volume"].astype(bool)
        d_lib = dice(theirs, truth)
        area = signed_area_mm2(rs, number, series["planes"], truth, series["z_of"])
        ratio = area / (truth.sum() * 0.8 * 0.7)
        for key, value_ in (("test", d_test), ("read_rtstruct", d_read), ("pydicomrt", d_lib)):
            record_property(f"dice[{case}/{name}/{key}]", round(value_, 4))
        record_property(f"area_ratio[{case}/{name}]", round(ratio, 4))
        log.info("RTSTRUCT %s / %s: Dice %.4f (test's rasteriser), %.4f (read_rtstruct), %.4f (pydicomrt's "
                 "reader); contour area / voxel area %.3f; %d voxels", case, name, d_test, d_read, d_lib, ratio,
                 int(truth.sum()))
        assert d_test == 1.0 and d_read == 1.0  # the bound for pixel-centre rasterisers (module docstring)
        np.testing.assert_array_equal(ours[number].mask, truth)
        assert ours[number].name == name and ours[number].color == tuple(rs.ROIContourSequence[number - 1]
                                                                         .ROIDisplayColor)
        band = np.zeros_like(truth)  # within one pixel (in-plane) of the mask's boundary
        for z in range(truth.shape[0]):
            band[z] = ndimage.binary_dilation(truth[z], np.ones((3, 3))) & ~ndimage.binary_erosion(
                truth[z], np.ones((3, 3)))
        assert not np.any((theirs != truth) & ~band), "pydicomrt's reader differs away from the boundary"
        # the contour area against the voxel area: at most 1/8 pixel per vertex apart
        vertices = sum(int(c.NumberOfContourPoints) for c in rs.ROIContourSequence[number - 1].ContourSequence)
        assert abs(area - truth.sum() * 0.8 * 0.7) <= vertices * 0.8 * 0.7 / 8 + 1e-6


def test_empty_mask_writes_an_roi_without_contours(series, tmp_path):
    image = series["image"]
    out = write_rtstruct(np.zeros(image.shape, bool), series["dir"], tmp_path, label_name="Nothing")
    assert out == tmp_path / DEFAULT_RTSTRUCT_NAME
    rs = pydicom.dcmread(out)
    assert [r.ROIName for r in rs.StructureSetROISequence] == ["Nothing"]
    assert len(rs.ROIContourSequence[0].get("ContourSequence", [])) == 0
    (roi,) = read_rtstruct(out, series["dir"], image=image)
    assert roi.name == "Nothing" and roi.contours == 0 and not roi.mask.any()


def test_label_map_rois_names_colours_and_missing_labels(series, tmp_path):
    image = series["image"]
    labels = np.zeros(image.shape, np.uint16)
    labels[2, 3:6, 3:6] = 7
    labels[4, 9:12, 9:12] = 300
    out = write_rtstruct(labels, series["dir"], tmp_path / "a.dcm", image=image,
                         segments={300: "Second listed first", 7: "Seven"}, colors={7: (1, 2, 3)},
                         algorithm_type="SEMIAUTOMATIC")
    rois = read_rtstruct(out, series["dir"], image=image)
    assert [(r.number, r.name) for r in rois] == [(1, "Second listed first"), (2, "Seven")]
    assert rois[1].color == (1, 2, 3) and rois[0].color != rois[1].color
    np.testing.assert_array_equal(rois[0].mask, labels == 300)
    np.testing.assert_array_equal(rois[1].mask, labels == 7)
    assert {r.ROIGenerationAlgorithm for r in pydicom.dcmread(out).StructureSetROISequence} == {"SEMIAUTOMATIC"}
    # refused before anything is written: an unlisted label, a label map without names, a bad colour
    for kwargs, err in (({"segments": {7: "Seven"}}, InputError), ({}, InputError),
                        ({"segments": {7: "a", 300: "b"}, "colors": {7: (0, 0, 256)}}, UsageError),
                        ({"segments": {7: "a", 300: "b"}, "algorithm_type": "GUESSED"}, UsageError)):
        with pytest.raises(err):
            write_rtstruct(labels, series["dir"], tmp_path / "bad.dcm", image=image, **kwargs)
        assert not (tmp_path / "bad.dcm").exists()


def test_refuses_non_dicom_sources_mismatched_masks_and_a_missing_library(series, tmp_path, monkeypatch):
    image = series["image"]
    with pytest.raises(InputError, match="shape"):
        write_rtstruct(np.zeros((3, 16, 16), bool), series["dir"], tmp_path / "s.dcm", image=image)
    write_mask(np.zeros(image.shape, np.uint8), image, tmp_path / "ct.nii.gz")
    with pytest.raises(NotDicomError, match="DICOM"):
        write_rtstruct(np.zeros(image.shape, bool), tmp_path / "ct.nii.gz", tmp_path / "s.dcm")
    with pytest.raises(UsageError, match="does not exist"):
        write_rtstruct(np.zeros(image.shape, bool), series["dir"], tmp_path / "no" / "s.dcm", image=image)
    monkeypatch.setitem(sys.modules, "pydicomrt.rs", None)  # import fails as if not installed
    with pytest.raises(UsageError, match=r"voxprompt\[rtstruct\]"):
        write_rtstruct(np.zeros(image.shape, bool), series["dir"], tmp_path / "s.dcm", image=image)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct.nii.gz"]


def test_reader_refuses_other_objects_and_other_series(series, tmp_path):
    image = series["image"]
    mask = np.zeros(image.shape, bool)
    mask[3, 4:9, 4:9] = True
    seg = write_dicom_seg(mask, series["dir"], tmp_path / "seg.dcm", image=image)
    with pytest.raises(InputError, match="not an RT Structure Set"):
        read_rtstruct(seg, series["dir"], image=image)
    out = write_rtstruct(mask, series["dir"], tmp_path / "rs.dcm", image=image)
    make_series(tmp_path / "other", slices=SLICES, seed=3)  # same geometry, another frame of reference
    with pytest.raises(InputError, match="frame of reference"):
        read_rtstruct(out, tmp_path / "other")
    with pytest.raises(UsageError, match="does not exist"):
        read_rtstruct(tmp_path / "missing.dcm", series["dir"], image=image)


def test_rasterise_contours_through_pixel_centres_keeps_boundary_pixels():
    """Contours through boundary pixel centres (rt-utils, many TPS exports): outer ones keep their edge
    pixels, holes give theirs back to the object, and a one-pixel ring survives."""
    square = np.array([[2, 2], [2, 10], [10, 10], [10, 2]], float)  # pixels 2..10 in both axes
    hole = np.array([[4, 4], [4, 8], [8, 8], [8, 4]], float)  # object pixels around the hole 5..7
    want = np.zeros((13, 13), bool)
    want[2:11, 2:11] = True
    want[5:8, 5:8] = False
    np.testing.assert_array_equal(rasterise_contours([square, hole], (13, 13)), want)
    thin_hole = np.array([[3, 3], [3, 9], [9, 9], [9, 3]], float)  # a ring one pixel wide
    ring = np.zeros((13, 13), bool)
    ring[2:11, 2:11] = True
    ring[4:9, 4:9] = False
    np.testing.assert_array_equal(rasterise_contours([square, thin_hole], (13, 13)), ring)
    # our own contours of the same masks give them back too, and a contour off the grid is clipped
    for m in (want, ring):
        np.testing.assert_array_equal(rasterise_contours(mask_contours(m), m.shape), m)
    big = np.array([[-5, -5], [-5, 20], [20, 20], [20, -5]], float)
    assert rasterise_contours([big], (4, 6)).all()


def test_cli_writes_rtstruct_for_a_dicom_series(series, tmp_path, capsys):
    """``segment -o x.dcm --dicom-format rtstruct``: the mask it segments comes back from the contours."""
    image = series["image"]
    prior = sphere(image.shape, (6.0, 8.0, 7.5), 4.0)
    write_mask(prior.astype(np.uint8), image, tmp_path / "prior.nii.gz")
    out = tmp_path / "rs.dcm"
    base = ["segment", str(series["dir"]), "--mask-in", str(tmp_path / "prior.nii.gz")]
    rc = main([*base, "-o", str(out), "--dicom-format", "rtstruct", "--label-name", "Lesion"])
    assert rc == 0, capsys.readouterr().err
    assert f"wrote {out}" in capsys.readouterr().out
    (roi,) = read_rtstruct(out, series["dir"])
    assert roi.name == "Lesion"
    np.testing.assert_array_equal(roi.mask, prior)  # --mask-in alone: the session's mask is the prior
    # a folder output gets FOLDER/voxprompt_rtstruct.dcm (made if needed, as for a SEG)
    rc = main([*base, "-o", str(tmp_path / "new_folder"), "--dicom-format", "rtstruct"])
    assert rc == 0, capsys.readouterr().err
    assert pydicom.dcmread(tmp_path / "new_folder" / DEFAULT_RTSTRUCT_NAME).Modality == "RTSTRUCT"
    # the default stays DICOM SEG
    assert main([*base, "-o", str(tmp_path / "seg.dcm")]) == 0
    assert pydicom.dcmread(tmp_path / "seg.dcm").Modality == "SEG"


def test_cli_rtstruct_errors_are_one_line_and_write_nothing(series, tmp_path, capsys, monkeypatch):
    image = series["image"]
    write_mask(np.zeros(image.shape, np.uint8), image, tmp_path / "ct.nii.gz")
    ct = str(series["dir"])
    cases = [  # (input, output, extra flags, what the message names)
        (str(tmp_path / "ct.nii.gz"), "bad.dcm", [], "DICOM"),  # a NIfTI input
        (ct, "bad.nii.gz", [], "--dicom-format"),  # not a DICOM output
        (ct, "bad.dcm", ["--seg-type", "organ"], "--seg-type"),  # SEG codes on an RTSTRUCT
        (ct, "missing/bad.dcm", [], "does not exist"),
    ]
    for image_in, output, extra, needle in cases:
        rc = main(["segment", image_in, "-o", str(tmp_path / output), "--point", "8,8,5",
                   "--dicom-format", "rtstruct", *extra])
        err = capsys.readouterr().err
        assert rc == 2 and needle in err and err.count("\n") == 1, (output, extra, err)
    monkeypatch.setitem(sys.modules, "pydicomrt.rs", None)
    rc = main(["segment", ct, "-o", str(tmp_path / "bad.dcm"), "--point", "8,8,5", "--dicom-format", "rtstruct"])
    err = capsys.readouterr().err
    assert rc == 2 and "pip install 'voxprompt[rtstruct]'" in err and err.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct.nii.gz"]
