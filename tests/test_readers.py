"""Dataset readers: nnU-Net v2 raw (with / without targets.csv), Decathlon (4D), SAM-Med3D per-class."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from voxprompt.data import readers
from voxprompt.data.readers import DatasetError, Target, load_target, normalize_modality, open_dataset
from voxprompt.errors import InputError, UsageError

SHAPE = (6, 7, 8)  # z, y, x


def _write(arr: np.ndarray, path: Path, spacing=(1.0, 1.0, 2.0), origin=(0.0, 0.0, 0.0)) -> Path:
    """Write a 3D/4D scalar volume, or a 3D vector image when ``arr`` is (z, y, x, components)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    vector = arr.ndim == 4 and arr.shape[-1] <= 3
    img = sitk.GetImageFromArray(arr, isVector=vector)
    img.SetSpacing(spacing + (1.0,) * (img.GetDimension() - 3))
    img.SetOrigin(origin + (0.0,) * (img.GetDimension() - 3))
    sitk.WriteImage(img, str(path))
    return path


def _labels() -> np.ndarray:
    lab = np.zeros(SHAPE, dtype=np.uint8)
    lab[1:3, 1:4, 1:5] = 1  # 24 voxels
    lab[4:6, 2:6, 3:8] = 2  # 40 voxels
    return lab


def _image(value: float = 0.0) -> np.ndarray:
    return (np.arange(np.prod(SHAPE), dtype=np.float32).reshape(SHAPE) + value)


def _nnunet(root: Path, with_targets: bool) -> Path:
    (root).mkdir(parents=True, exist_ok=True)
    for case in ("case_a", "case_b"):
        _write(_image(), root / "imagesTr" / f"{case}_0000.nii.gz")
        _write(_labels(), root / "labelsTr" / f"{case}.nii.gz")
    d = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "liver": 1, "Thalamus_L": 2},
         "numTraining": 2, "file_ending": ".nii.gz"}
    (root / "dataset.json").write_text(json.dumps(d))
    if with_targets:
        (root / "targets.csv").write_text(
            "case,label,name,modality,voxels,split\n"
            "case_a,1,liver,CT,24,test\ncase_a,2,Thalamus_L,MR,40,train\ncase_b,2,Thalamus_L,MR,40,train\n")
    return root


@pytest.fixture(autouse=True)
def _fresh_cache():
    readers._cached.cache_clear()
    yield
    readers._cached.cache_clear()


def test_nnunet_with_targets_csv(tmp_path):
    root = _nnunet(tmp_path / "Dataset001_x", with_targets=True)
    targets = open_dataset(root)
    assert [(t.case, t.label, t.name, t.modality, t.voxels, t.split) for t in targets] == [
        ("case_a", 1, "liver", "CT", 24, "test"), ("case_a", 2, "Thalamus_L", "MR", 40, "train"),
        ("case_b", 2, "Thalamus_L", "MR", 40, "train")]
    assert targets[0].image_path == root / "imagesTr" / "case_a_0000.nii.gz"
    assert targets[0].label_path == root / "labelsTr" / "case_a.nii.gz"
    assert [t.case for t in open_dataset(root, split="train")] == ["case_a", "case_b"]
    assert [t.name for t in open_dataset(root / "dataset.json", split="test")] == ["liver"]
    image, mask = load_target(targets[1])
    assert mask.dtype == np.bool_ and mask.shape == SHAPE and int(mask.sum()) == 40
    assert image.shape == SHAPE and image.spacing == (1.0, 1.0, 2.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        targets[0].label = 3  # type: ignore[misc]
    assert open_dataset(root, split="val") == []  # a known split this dataset has no targets of
    with pytest.raises(UsageError, match="validation"):
        open_dataset(root, split="validation")


def test_nnunet_without_targets_csv(tmp_path):
    root = _nnunet(tmp_path / "ds", with_targets=False)
    targets = open_dataset(root)
    assert [(t.case, t.label, t.name, t.modality, t.split, t.voxels) for t in targets] == [
        ("case_a", 1, "liver", "CT", "", 0), ("case_a", 2, "Thalamus_L", "CT", "", 0),
        ("case_b", 1, "liver", "CT", "", 0), ("case_b", 2, "Thalamus_L", "CT", "", 0)]
    assert open_dataset(root, split="test") == []
    assert int(load_target(targets[0])[1].sum()) == 24


def test_decathlon_4d_image_reads_channel_0(tmp_path):
    root = tmp_path / "Task01_BrainTumour"
    four_d = np.stack([_image(0.0), _image(1000.0)])  # (channel, z, y, x)
    _write(four_d, root / "imagesTr" / "BRATS_001.nii.gz")
    _write(_labels(), root / "labelsTr" / "BRATS_001.nii.gz")
    d = {"modality": {"0": "FLAIR", "1": "T1w"}, "labels": {"0": "background", "1": "edema", "2": "tumour"},
         "training": [{"image": "./imagesTr/BRATS_001.nii.gz", "label": "./labelsTr/BRATS_001.nii.gz"}],
         "test": ["./imagesTs/BRATS_999.nii.gz"]}
    (root / "dataset.json").write_text(json.dumps(d))
    targets = open_dataset(root)
    assert [(t.case, t.label, t.name, t.modality) for t in targets] == [
        ("BRATS_001", 1, "edema", "MR"), ("BRATS_001", 2, "tumour", "MR")]
    image, mask = load_target(targets[1])
    assert image.shape == SHAPE and int(mask.sum()) == 40
    np.testing.assert_array_equal(image.array, _image(0.0))


def test_vector_image_reads_component_0(tmp_path):
    root = tmp_path / "Task02_x"
    _write(np.stack([_image(0.0), _image(7.0)], axis=-1), root / "imagesTr" / "x_1.nii.gz")  # 2 components
    _write(_labels(), root / "labelsTr" / "x_1.nii.gz")
    d = {"modality": {"0": "CT"}, "labels": {"0": "background", "1": "organ"},
         "training": [{"image": "imagesTr/x_1.nii.gz", "label": "labelsTr/x_1.nii.gz"}]}
    (root / "dataset.json").write_text(json.dumps(d))
    (t,) = open_dataset(root)
    image, mask = load_target(t)
    np.testing.assert_array_equal(image.array, _image(0.0))
    assert t.modality == "CT" and int(mask.sum()) == 24


def test_sammed3d_per_class_layout(tmp_path):
    root = tmp_path / "medical_preprocessed"
    binary = (_labels() == 1).astype(np.uint8)
    for cls, ds in (("liver", "ct_WORD"), ("liver", "ct_AMOS"), ("hippocampus", "mr_Task04")):
        _write(_image(), root / cls / ds / "imagesTr" / "img_01.nii.gz")
        _write(binary, root / cls / ds / "labelsTr" / "img_01.nii.gz")
    targets = open_dataset(root)
    assert [(t.case, t.label, t.name, t.modality, t.split) for t in targets] == [
        ("mr_Task04/img_01", 1, "hippocampus", "MR", ""), ("ct_AMOS/img_01", 1, "liver", "CT", ""),
        ("ct_WORD/img_01", 1, "liver", "CT", "")]
    assert int(load_target(targets[0])[1].sum()) == 24
    (root / "liver" / "ct_WORD" / "labelsTr" / "img_01.nii.gz").unlink()
    with pytest.raises(DatasetError, match="img_01.nii.gz: file listed"):
        open_dataset(root)


def test_unrecognised_folder_is_a_typed_error(tmp_path):
    (tmp_path / "stuff").mkdir()
    with pytest.raises(DatasetError, match=str(tmp_path)) as err:
        open_dataset(tmp_path)
    assert isinstance(err.value, InputError)
    with pytest.raises(DatasetError, match="not found"):
        open_dataset(tmp_path / "missing")
    (tmp_path / "dataset.json").write_text("{not json")
    with pytest.raises(DatasetError, match="unreadable JSON"):
        open_dataset(tmp_path)
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": {"a": "b"}}))
    with pytest.raises(DatasetError, match="neither"):
        open_dataset(tmp_path)


def test_missing_file_and_grid_mismatch(tmp_path):
    root = _nnunet(tmp_path / "ds", with_targets=True)
    (root / "imagesTr" / "case_b_0000.nii.gz").unlink()
    with pytest.raises(DatasetError, match="case_b_0000.nii.gz"):
        open_dataset(root)
    _write(_image(), root / "imagesTr" / "case_b_0000.nii.gz", origin=(5.0, 0.0, 0.0))
    t = open_dataset(root)[2]
    with pytest.raises(DatasetError, match="does not match the image"):
        load_target(t)
    _write(np.zeros((6, 7, 9), np.uint8), root / "labelsTr" / "case_b.nii.gz")
    with pytest.raises(DatasetError, match="label shape"):
        load_target(dataclasses.replace(t))


def test_load_target_reads_each_file_once(tmp_path, monkeypatch):
    root = _nnunet(tmp_path / "ds", with_targets=False)
    calls: list[Path] = []
    real = readers._read_channel0

    def counting(path: Path):
        calls.append(path)
        return real(path)

    monkeypatch.setattr(readers, "_read_channel0", counting)
    targets = open_dataset(root)
    images = [load_target(t)[0] for t in targets]
    assert len(calls) == 4  # 2 cases x (image + label), 4 targets
    images[0].array[0, 0, 0] = -1.0  # each call gets its own writable copy
    assert load_target(targets[1])[0].array[0, 0, 0] == 0.0


def test_normalize_modality():
    assert [normalize_modality(m) for m in ("CT", "ct", "MRI", "T1w", "FLAIR", "US", "", "image")] == [
        "CT", "CT", "MR", "MR", "MR", "US", "", "image"]


def test_reads_built_dataset(tmp_path):
    """The output of the builder reads back through targets.csv."""
    from voxprompt.data.build import build_dataset
    from voxprompt.data.sources import SourceCase
    from voxprompt.io import Image

    lab = np.zeros((10, 12, 14), dtype=np.uint8)
    lab[1:9, 1:6, 1:8] = 1  # 280 voxels
    lab[1:9, 6:11, 8:13] = 2  # 200 voxels

    def source(cache: Path) -> SourceCase:
        image = Image(lab.astype(np.int16) * 40, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), np.eye(3))
        return SourceCase("tiny", image, Image(lab, image.spacing, image.origin, image.direction),
                          {1: "liver", 2: "rib_left_1"}, "CT", "test", "synthetic")

    build_dataset(tmp_path / "ds", [("tiny", source)], spacing=1.0, progress=False)
    targets = open_dataset(tmp_path / "ds")
    assert {t.name: (t.split, t.voxels) for t in targets} == {"liver": ("test", 280), "rib_left_1": ("train", 200)}
    assert all(isinstance(t, Target) for t in targets)
    for t in targets:
        assert int(load_target(t)[1].sum()) == t.voxels
