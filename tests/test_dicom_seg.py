"""DICOM SEG output: frames reference the right source instances; CLI writes it for DICOM input."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from conftest import load_golden
from golden_configs import sam_med3d_config
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

import voxprompt
from voxprompt.cli import main
from voxprompt.errors import InputError, UsageError
from voxprompt.io import read_image
from voxprompt.io.dicom_seg import NotDicomError, write_dicom_seg
from voxprompt.models.checkpoints import save_safetensors

SLICES, ROWS, COLS = 4, 16, 16
PIXEL_SPACING = (0.8, 0.7)  # (row spacing, column spacing) mm
SLICE_STEP = 2.5
ORIGIN = np.array([-30.0, 12.0, 100.0])


def make_series(folder: Path, seed: int = 0, slices: int = SLICES, number: int = 3, description: str = "",
                prefix: str = "im") -> tuple[list[str], np.ndarray]:
    """A CT series (axial, LPS-aligned; 4 slices by default) written in shuffled file order.

    Returns the SOPInstanceUIDs in spatial (z ascending) order and the pixel volume (z, y, x).
    """
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    vol = rng.integers(0, 200, (slices, ROWS, COLS)).astype(np.int16)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    uids = [generate_uid() for _ in range(slices)]
    # file names / instance numbers do not follow the slice position
    order = [2, 0, 3, 1] if slices == 4 else list(range(slices))[::-1]
    for n, z in enumerate(order):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = uids[z]
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, uids[z]
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Test^Phantom", "P1", "19700101", "O"
        ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20240101", "120000", "1", "A1"
        ds.ReferringPhysicianName = ""
        ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "CT", number, n + 1
        if description:
            ds.SeriesDescription = description
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [float(v) for v in ORIGIN + np.array([0, 0, SLICE_STEP * z])]
        ds.PixelSpacing = list(PIXEL_SPACING)
        ds.SliceThickness = SLICE_STEP
        ds.Rows, ds.Columns = ROWS, COLS
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = 0, 1
        ds.PixelData = vol[z].tobytes()
        ds.save_as(folder / f"{prefix}{n:02d}.dcm", enforce_file_format=True)
    return uids, vol


def frames_by_instance(path: Path) -> dict[str, np.ndarray]:
    """Read a SEG back with pydicom: referenced SOPInstanceUID -> frame pixels (bool)."""
    seg = pydicom.dcmread(path)
    assert seg.Modality == "SEG" and seg.SegmentationType == "BINARY"
    frames = seg.pixel_array.reshape(int(seg.NumberOfFrames), seg.Rows, seg.Columns)
    shared = seg.SharedFunctionalGroupsSequence[0]
    out = {}
    for i, fg in enumerate(seg.PerFrameFunctionalGroupsSequence):
        ref = fg.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        ident = fg.get("SegmentIdentificationSequence") or shared.SegmentIdentificationSequence
        assert ident[0].ReferencedSegmentNumber == 1
        out[ref] = frames[i].astype(bool)
    return out


def test_seg_frames_reference_the_right_instances(tmp_path):
    uids, vol = make_series(tmp_path / "ct")
    image = read_image(tmp_path / "ct")
    assert image.shape == (SLICES, ROWS, COLS)
    np.testing.assert_array_equal(image.array, vol)  # SimpleITK order = spatial order
    mask = np.zeros(image.shape, bool)
    mask[0, 2:6, 3:9] = True
    mask[2, 8:14, 1:4] = True
    mask[3, 0, 15] = True  # slice 1 empty: omitted from the SEG
    out = write_dicom_seg(mask, tmp_path / "ct", tmp_path / "seg.dcm", image=image, label_name="Liver",
                          model_name="voxprompt-med3d-small")
    frames = frames_by_instance(out)
    assert set(frames) == {uids[0], uids[2], uids[3]}
    for z in (0, 2, 3):
        np.testing.assert_array_equal(frames[uids[z]], mask[z])
    seg = pydicom.dcmread(out)
    desc = seg.SegmentSequence[0]
    assert desc.SegmentLabel == "Liver" and desc.SegmentAlgorithmType == "AUTOMATIC"
    assert desc.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "85756007"  # Tissue
    assert desc.SegmentedPropertyTypeCodeSequence[0].CodeValue == "91772007"  # Organ
    alg = desc.SegmentationAlgorithmIdentificationSequence[0]
    assert "voxprompt-med3d-small" in alg.AlgorithmName and alg.AlgorithmVersion == voxprompt.__version__
    assert seg.StudyInstanceUID == pydicom.dcmread(tmp_path / "ct" / "im00.dcm").StudyInstanceUID
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct", "seg.dcm"]  # no temporary left
    # highdicom reads it back as a volume on the source geometry
    import highdicom as hd

    hseg = hd.seg.segread(out)
    pix = hseg.get_pixels_by_source_instance(uids, segment_numbers=[1])  # slice 1: absent -> empty
    np.testing.assert_array_equal(pix[..., 0].astype(bool), mask)


def test_seg_without_image_reads_the_series_and_handles_an_empty_mask(tmp_path):
    uids, _ = make_series(tmp_path / "ct", seed=1)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = write_dicom_seg(np.zeros((SLICES, ROWS, COLS), bool), tmp_path / "ct", out_dir)
    assert out.parent == out_dir and out.suffix == ".dcm"
    frames = frames_by_instance(out)
    assert set(frames) == set(uids) and not any(f.any() for f in frames.values())


def test_seg_refuses_non_dicom_and_mismatched_masks(tmp_path):
    make_series(tmp_path / "ct")
    image = read_image(tmp_path / "ct")
    with pytest.raises(InputError, match="shape"):
        write_dicom_seg(np.zeros((3, ROWS, COLS), bool), tmp_path / "ct", tmp_path / "s.dcm", image=image)
    import SimpleITK as sitk

    sitk.WriteImage(image.to_sitk(), str(tmp_path / "ct.nii.gz"))
    with pytest.raises(NotDicomError, match="DICOM"):
        write_dicom_seg(np.zeros(image.shape, bool), tmp_path / "ct.nii.gz", tmp_path / "s.dcm")
    assert not (tmp_path / "s.dcm").exists()


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> Path:
    g = load_golden("sam_med3d_tiny.pt")
    model = voxprompt.load_model("sam-med3d", g["state_dict"], config=sam_med3d_config(g["config"]))
    return save_safetensors(model.state_dict(), tmp_path_factory.mktemp("ckpt") / "tiny.safetensors",
                            "sam-med3d", model.cfg.to_dict())


def test_cli_writes_dicom_seg_for_a_dicom_series(tmp_path, tiny_ckpt, capsys):
    uids, _ = make_series(tmp_path / "ct")
    out = tmp_path / "seg.dcm"
    rc = main(["segment", str(tmp_path / "ct"), "-o", str(out), "--checkpoint", str(tiny_ckpt),
               "--point", "8,8,1", "--label-name", "Lesion"])
    assert rc == 0, capsys.readouterr().err
    seg = pydicom.dcmread(out)
    assert seg.SegmentSequence[0].SegmentLabel == "Lesion"
    frames = frames_by_instance(out)
    assert set(frames) <= set(uids)
    # NIfTI output of the same run still works, and a .dcm output from a NIfTI input is refused
    nii = tmp_path / "seg.nii.gz"
    assert main(["segment", str(tmp_path / "ct"), "-o", str(nii), "--checkpoint", str(tiny_ckpt),
                 "--point", "8,8,1"]) == 0
    mask = read_image(nii).array.astype(bool)
    for z, uid in enumerate(uids):
        np.testing.assert_array_equal(frames.get(uid, np.zeros((ROWS, COLS), bool)), mask[z])
    rc = main(["segment", str(nii), "-o", str(tmp_path / "bad.dcm"), "--checkpoint", str(tiny_ckpt),
               "--point", "8,8,1"])
    err = capsys.readouterr().err
    assert rc == 2 and "DICOM" in err and err.count("\n") == 1
    assert not (tmp_path / "bad.dcm").exists()


# ---------------------------------------------------------------- issue 20: correct and unsurprising commands

def test_output_without_extension_is_a_new_seg_folder(tmp_path, tiny_ckpt, capsys):
    """Item 4: for a DICOM input, an output path without an extension is a folder, made if needed."""
    make_series(tmp_path / "ct")
    out = tmp_path / "new_folder"
    rc = main(["segment", str(tmp_path / "ct"), "-o", str(out), "--checkpoint", str(tiny_ckpt),
               "--point", "8,8,1"])
    assert rc == 0, capsys.readouterr().err
    assert (out / "voxprompt_seg.dcm").is_file()
    assert pydicom.dcmread(out / "voxprompt_seg.dcm").Modality == "SEG"
    rc = main(["segment", str(tmp_path / "ct"), "-o", str(tmp_path / "missing" / "deeper"), "--checkpoint",
               str(tiny_ckpt), "--point", "8,8,1"])
    assert rc == 2 and "does not exist" in capsys.readouterr().err


def test_empty_seg_is_written_with_a_warning(tmp_path, tiny_ckpt, capsys, caplog):
    """Item 5: an empty DICOM SEG is still written (exit 0), with a warning naming the file."""
    from voxprompt.io import write_mask

    make_series(tmp_path / "ct")
    image = read_image(tmp_path / "ct")
    write_mask(np.zeros(image.shape, np.uint8), image, tmp_path / "zeros.nii.gz")
    out = tmp_path / "empty.dcm"
    with caplog.at_level("WARNING"):
        rc = main(["segment", str(tmp_path / "ct"), "-o", str(out), "--checkpoint", str(tiny_ckpt),
                   "--mask-in", str(tmp_path / "zeros.nii.gz")])
    assert rc == 0, capsys.readouterr().err
    assert out.is_file()
    assert "empty" in caplog.text and str(out) in caplog.text


@pytest.fixture()
def two_series(tmp_path) -> dict:
    ct = tmp_path / "two"
    uids_a, vol_a = make_series(ct, seed=0, number=3, description="Axial soft", prefix="a")
    uids_b, vol_b = make_series(ct, seed=1, slices=3, number=7, description="Low dose", prefix="b")
    uid_a = pydicom.dcmread(ct / "a00.dcm").SeriesInstanceUID
    uid_b = pydicom.dcmread(ct / "b00.dcm").SeriesInstanceUID
    return {"dir": ct, "a": (uid_a, vol_a), "b": (uid_b, vol_b)}


def test_info_lists_the_series_of_a_folder(two_series, capsys):
    """Item 7: ``info FOLDER`` lists every series (UID, number, description, slices, size)."""
    assert main(["info", str(two_series["dir"])]) == 0
    out = capsys.readouterr().out
    for key, slices, desc, number in (("a", 4, "Axial soft", "3"), ("b", 3, "Low dose", "7")):
        line = next(ln for ln in out.splitlines() if two_series[key][0] in ln)
        assert desc in line and f"{slices} slices" in line and number in line and f"{COLS} x {ROWS} x {slices}" in line
    assert "--series" in out
    assert main(["info", str(two_series["dir"]), "--series", "7"]) == 0
    assert f"{COLS} x {ROWS} x 3" in capsys.readouterr().out


def test_segment_chooses_a_series(two_series, tiny_ckpt, tmp_path, capsys):
    """Item 7: ``segment --series UID|NUMBER`` picks the series; an unknown one is a usage error."""
    folder, (uid_b, vol_b) = two_series["dir"], two_series["b"]
    for choice in (uid_b, "7"):
        out = tmp_path / f"b_{len(choice)}.nii.gz"
        rc = main(["segment", str(folder), "-o", str(out), "--checkpoint", str(tiny_ckpt), "--point", "8,8,1",
                   "--series", choice])
        assert rc == 0, capsys.readouterr().err
        assert read_image(out).shape == vol_b.shape
    rc = main(["segment", str(folder), "-o", str(tmp_path / "x.nii.gz"), "--checkpoint", str(tiny_ckpt),
               "--point", "8,8,1", "--series", "42"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "42" in err
    assert two_series["a"][0] in err and uid_b in err  # lists the available series
    assert not (tmp_path / "x.nii.gz").exists()


def _codes(path: Path) -> tuple[tuple[str, str, str], tuple[str, str, str]]:
    desc = pydicom.dcmread(path).SegmentSequence[0]
    cat, typ = desc.SegmentedPropertyCategoryCodeSequence[0], desc.SegmentedPropertyTypeCodeSequence[0]
    return ((cat.CodeValue, cat.CodingSchemeDesignator, cat.CodeMeaning),
            (typ.CodeValue, typ.CodingSchemeDesignator, typ.CodeMeaning))


def test_seg_category_and_type_codes_are_settable(tmp_path, tiny_ckpt, capsys):
    """Issue 20 #18: --seg-category / --seg-type (presets or VALUE,SCHEME,MEANING), read back."""
    make_series(tmp_path / "ct")
    base = ["segment", str(tmp_path / "ct"), "--checkpoint", str(tiny_ckpt), "--point", "8,8,1"]
    out = tmp_path / "lesion.dcm"
    rc = main([*base, "-o", str(out), "--seg-category", "lesion", "--seg-type", "Lesion"])
    assert rc == 0, capsys.readouterr().err
    assert _codes(out) == (("49755003", "SCT", "Morphologically Abnormal Structure"),
                           ("52988006", "SCT", "Lesion"))
    out = tmp_path / "liver.dcm"
    rc = main([*base, "-o", str(out), "--seg-category", "anatomical-structure", "--seg-type", "10200004,SCT,Liver"])
    assert rc == 0, capsys.readouterr().err
    assert _codes(out) == (("91723000", "SCT", "Anatomical Structure"), ("10200004", "SCT", "Liver"))
    import highdicom as hd
    from pydicom.sr.codedict import codes

    seg = hd.seg.segread(out)
    desc = seg.get_segment_description(1)
    assert desc.segmented_property_category == codes.SCT.AnatomicalStructure
    assert desc.segmented_property_type.value == "10200004"
    # the default stays Tissue / Organ; a bad code or the flags on a non-SEG output are usage errors
    out = tmp_path / "default.dcm"
    assert main([*base, "-o", str(out)]) == 0
    assert _codes(out) == (("85756007", "SCT", "Tissue"), ("91772007", "SCT", "Organ"))
    capsys.readouterr()
    for extra, output in ((["--seg-type", "banana"], "x.dcm"), (["--seg-category", "1,SCT"], "x.dcm"),
                          (["--seg-type", "organ"], "x.nii.gz")):
        rc = main([*base, "-o", str(tmp_path / output), *extra])
        err = capsys.readouterr().err
        assert rc == 2 and extra[0] in err and err.count("\n") == 1, (extra, err)
        assert not (tmp_path / output).exists()


def test_write_dicom_seg_takes_codes_from_python(tmp_path):
    from pydicom.sr.codedict import codes

    make_series(tmp_path / "ct")
    image = read_image(tmp_path / "ct")
    mask = np.zeros(image.shape, bool)
    mask[1, 4:8, 4:8] = True
    out = write_dicom_seg(mask, tmp_path / "ct", tmp_path / "s.dcm", image=image,
                          category=codes.SCT.MorphologicallyAbnormalStructure, segment_type="tumor")
    assert _codes(out) == (("49755003", "SCT", "Morphologically Abnormal Structure"),
                           ("108369006", "SCT", "Tumor"))


def test_seg_of_a_label_map_has_one_named_segment_per_label(tmp_path):
    """``segments``: label value -> segment label; segments numbered in the mapping's order (an empty
    one kept), other values background; SEMIAUTOMATIC for masks a person steered."""
    import highdicom as hd

    uids, _ = make_series(tmp_path / "ct")
    image = read_image(tmp_path / "ct")
    labels = np.zeros(image.shape, np.uint8)
    labels[0, 2:6, 3:9] = 3
    labels[2, 8:14, 1:4] = 1
    labels[3, 0:2, 0:2] = 9  # not listed: background
    out = write_dicom_seg(labels, tmp_path / "ct", tmp_path / "seg.dcm", image=image,
                          segments={3: "liver", 1: "spleen", 4: "empty"}, algorithm_type="SEMIAUTOMATIC")
    seg = pydicom.dcmread(out)
    assert [(d.SegmentNumber, d.SegmentLabel, d.SegmentAlgorithmType) for d in seg.SegmentSequence] == [
        (1, "liver", "SEMIAUTOMATIC"), (2, "spleen", "SEMIAUTOMATIC"), (3, "empty", "SEMIAUTOMATIC")]
    hseg = hd.seg.segread(out)
    pix = hseg.get_pixels_by_source_instance(uids, segment_numbers=[1, 2, 3]).astype(bool)
    np.testing.assert_array_equal(pix[..., 0], labels == 3)
    np.testing.assert_array_equal(pix[..., 1], labels == 1)
    assert not pix[..., 2].any()
    with pytest.raises(UsageError, match="SEMIAUTOMATIC"):
        write_dicom_seg(labels, tmp_path / "ct", tmp_path / "s.dcm", image=image, algorithm_type="BY HAND")
