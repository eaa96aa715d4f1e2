"""StarDist's 3D demo as a training source: pinned wheel fetch (fake wheel, no network), the case builder
(a tiny tifffile stack) and, where the wheel is cached, the real stack."""
from __future__ import annotations

import csv
import hashlib
import json
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tifffile

from voxprompt.data import fetch, sources
from voxprompt.data.build import build_dataset
from voxprompt.data.fetch import DataUnavailable, StarDistDemo, cache_dir
from voxprompt.errors import InputError
from voxprompt.io import read_image

IMG, MASK, LICENCE = fetch.STARDIST_FILES
WHEEL_NAME = "stardist-0.9.2-cp311-cp311-manylinux_2_24_x86_64.manylinux_2_28_x86_64.whl"
LICENCE_TEXT = b"BSD 3-Clause License\n\nCopyright (c) 2018-2025, Uwe Schmidt, Martin Weigert\nAll rights reserved.\n"


def _prefix(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def _fake_wheel(path: Path, members: dict[str, bytes]) -> bytes:
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(zipfile.ZipInfo(name, date_time=(2025, 12, 15, 21, 40, 0)), data)
    return path.read_bytes()


@pytest.fixture
def fake_pip(tmp_path, monkeypatch):
    """``pip download`` replaced by a copy of a small fake stardist wheel; pins set to its files.

    Returns (member bytes, list of the pip commands run).
    """
    members = {IMG: b"image bytes", MASK: b"mask bytes", LICENCE: LICENCE_TEXT,
               "stardist/lib/stardist3d.so": b"compiled code, never extracted"}
    wheel = _fake_wheel(tmp_path / "fake.whl", members)
    calls: list[list[str]] = []

    def run(cmd, **kwargs):
        calls.append(list(cmd))
        dest = Path(cmd[cmd.index("-d") + 1])
        (dest / WHEEL_NAME).write_bytes(wheel)
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(fetch.subprocess, "run", run)
    monkeypatch.setattr(fetch, "STARDIST_WHEEL", _prefix(wheel))
    monkeypatch.setattr(fetch, "STARDIST_FILES", {m: _prefix(members[m]) for m in fetch.STARDIST_FILES})
    return members, calls


def test_stardist_pins_are_the_wheel_members():
    assert list(fetch.STARDIST_FILES) == ["stardist/data/images/img3d.tif", "stardist/data/images/mask3d.tif",
                                          "stardist-0.9.2.dist-info/licenses/LICENSE.txt"]
    for prefix in [fetch.STARDIST_WHEEL, *fetch.STARDIST_FILES.values()]:
        assert len(prefix) == 16 and int(prefix, 16) >= 0
    assert fetch.STARDIST == ("stardist", "0.9.2")


def test_fetch_stardist_downloads_the_pinned_platform_wheel(tmp_path, fake_pip):
    members, calls = fake_pip
    got = fetch.fetch_stardist(tmp_path / "cache")
    assert isinstance(got, StarDistDemo)
    assert got.image.read_bytes() == members[IMG] and got.mask.read_bytes() == members[MASK]
    assert got.licence.read_bytes() == LICENCE_TEXT
    (cmd,) = calls
    text = " ".join(cmd)
    assert cmd[-1] == "stardist==0.9.2" and "--no-deps" in cmd
    for flag in ("--only-binary :all:", "--platform manylinux_2_28_x86_64", "--python-version 3.11",
                 "--implementation cp", "--abi cp311"):
        assert flag in text  # one wheel file on every machine, whatever runs the build
    root = tmp_path / "cache" / "stardist-0.9.2"
    extracted = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and p.parent.name != "wheel")
    assert extracted == sorted(fetch.STARDIST_FILES)  # the compiled code stays in the zip
    fetch.fetch_stardist(tmp_path / "cache")
    assert len(calls) == 1  # cached: pip is not run again


def test_fetch_stardist_refuses_a_changed_wheel(tmp_path, fake_pip, monkeypatch):
    monkeypatch.setattr(fetch, "STARDIST_WHEEL", "0" * 16)
    with pytest.raises(DataUnavailable, match="does not match the pinned 0000000000000000"):
        fetch.fetch_stardist(tmp_path / "cache")


def test_fetch_stardist_refuses_a_changed_member(tmp_path, fake_pip, monkeypatch):
    monkeypatch.setitem(fetch.STARDIST_FILES, MASK, "f" * 16)
    with pytest.raises(DataUnavailable, match="mask3d.tif: sha256 does not match"):
        fetch.fetch_stardist(tmp_path / "cache")


def test_fetch_stardist_refuses_a_tampered_cached_file(tmp_path, fake_pip):
    got = fetch.fetch_stardist(tmp_path / "cache")
    got.image.write_bytes(b"tampered")
    with pytest.raises(DataUnavailable, match="img3d.tif: sha256 does not match"):
        fetch.fetch_stardist(tmp_path / "cache")


def test_fetch_stardist_unavailable_offline(tmp_path, monkeypatch):
    def offline(cmd, **kwargs):
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution found for stardist==0.9.2")

    monkeypatch.setattr(fetch.subprocess, "run", offline)
    with pytest.raises(DataUnavailable, match="cannot download the stardist==0.9.2 wheel.*No matching"):
        fetch.fetch_stardist(tmp_path / "cache")


# --- the case builder ----------------------------------------------------------------------------

def _demo(folder: Path, mask: np.ndarray, image: np.ndarray | None = None) -> StarDistDemo:
    folder.mkdir(parents=True, exist_ok=True)
    if image is None:
        image = (100 + 10 * np.arange(mask.size) % 250).astype(np.uint16).reshape(mask.shape)
    files = StarDistDemo(folder / "img3d.tif", folder / "mask3d.tif", folder / "LICENSE.txt")
    tifffile.imwrite(files.image, image)
    tifffile.imwrite(files.mask, mask)
    files.licence.write_bytes(LICENCE_TEXT)
    return files


def _tiny_mask() -> np.ndarray:
    """(z, y, x) = 6x16x16 with instances 3 (4x5x5 = 100 voxels), 7 (2x4x4 = 32) and 40 (1 voxel)."""
    mask = np.zeros((6, 16, 16), np.uint16)
    mask[1:5, 2:7, 2:7] = 3
    mask[2:4, 9:13, 8:12] = 7
    mask[5, 15, 15] = 40
    return mask


def test_stardist_case_keeps_instances_and_intensities(tmp_path, monkeypatch):
    mask = _tiny_mask()
    files = _demo(tmp_path / "demo", mask)
    monkeypatch.setattr(sources, "fetch_stardist", lambda cache: files)
    sc = sources.stardist_nuclei(tmp_path)
    assert sc.case == "stardist_nuclei" and sc.split == "train" and sc.modality == "microscopy"
    assert sc.names == {3: "nucleus_3", 7: "nucleus_7", 40: "nucleus_40"}
    assert sc.image.array.dtype == np.float32 and sc.labels.array.dtype == np.uint16
    np.testing.assert_array_equal(sc.image.array, tifffile.imread(files.image).astype(np.float32))
    np.testing.assert_array_equal(sc.labels.array, mask)
    assert sc.image.spacing == sources.STARDIST_SPACING_XYZ == (1.5, 1.5, 3.0)  # (x, y, z): z twice the pixel
    assert sc.labels.spacing == sc.image.spacing and sc.image.origin == (0.0, 0.0, 0.0)
    assert sc.licence.startswith("BSD 3-Clause License") and "Uwe Schmidt, Martin Weigert" in sc.licence
    assert "stardist==0.9.2" in sc.origin


def test_stardist_build_writes_one_train_target_per_nucleus(tmp_path, monkeypatch):
    files = _demo(tmp_path / "demo", _tiny_mask())
    monkeypatch.setattr(sources, "fetch_stardist", lambda cache: files)
    out = tmp_path / "ds"
    res = build_dataset(out, [("stardist", sources.stardist_nuclei)], spacing=1.5, min_voxels=10, progress=False)
    with open(out / "targets.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    # 1.5 mm keeps x and y and repeats every 3 mm slice twice: twice the voxels; the 1-voxel nucleus is dropped
    assert [(r["name"], r["modality"], r["voxels"], r["split"]) for r in rows] == [
        ("nucleus_3", "microscopy", "200", "train"), ("nucleus_7", "microscopy", "64", "train")]
    assert res.count("train") == 2 and res.count("test") == 0 and res.count("val") == 0
    d = json.loads((out / "dataset.json").read_text())
    case = d["cases"]["stardist_nuclei"]
    assert case["split"] == "train" and case["shape_zyx"] == [12, 16, 16]
    assert case["source_label_ids"] == {"nucleus_3": 3, "nucleus_7": 7, "nucleus_40": 40}
    assert d["licence"]["stardist_nuclei"].startswith("BSD 3-Clause License")
    img = read_image(out / "imagesTr" / "stardist_nuclei_0000.nii.gz")
    lab = read_image(out / "labelsTr" / "stardist_nuclei.nii.gz")
    assert img.spacing == (1.5, 1.5, 1.5) and lab.shape == img.shape == (12, 16, 16)
    assert img.array.dtype == np.float32
    for name, n in (("nucleus_3", 200), ("nucleus_7", 64)):
        assert int((lab.array == d["labels"][name]).sum()) == n


def test_stardist_case_rejects_mismatched_stacks(tmp_path, monkeypatch):
    mask = _tiny_mask()
    files = _demo(tmp_path / "demo", mask, image=np.zeros((5, 16, 16), np.uint16))
    monkeypatch.setattr(sources, "fetch_stardist", lambda cache: files)
    with pytest.raises(InputError, match="does not match the image"):
        sources.stardist_nuclei(tmp_path)
    files = _demo(tmp_path / "demo2", mask[0])  # a 2D mask
    monkeypatch.setattr(sources, "fetch_stardist", lambda cache: files)
    with pytest.raises(InputError, match="expected a 3D stack"):
        sources.stardist_nuclei(tmp_path)


def test_stardist_in_the_default_build():
    from voxprompt.cli import build_parser
    from voxprompt.data.build import parse_sources

    assert parse_sources("stardist") == ["stardist"] and sources.SOURCES["stardist"] is sources.stardist_nuclei
    args = build_parser().parse_args(["data", "build", "out"])
    assert "stardist" in args.sources.split(",")


# --- the real stack (where the wheel is cached) ------------------------------------------------------

def _stardist_cached() -> bool:
    root = cache_dir() / "stardist-0.9.2"
    return all((root / m).exists() for m in fetch.STARDIST_FILES) or any((root / "wheel").glob("stardist-*.whl"))


@pytest.mark.skipif(not _stardist_cached(), reason="stardist 0.9.2 wheel not cached (run `voxprompt data build` once)")
def test_real_stardist_build(tmp_path):
    res = build_dataset(tmp_path / "ds", [("stardist", sources.stardist_nuclei)], spacing=1.5, progress=False)
    assert res.cases == ["stardist_nuclei"] and not res.skipped
    assert len(res.targets) == 51 and {t.split for t in res.targets} == {"train"}
    ml = np.array([t.voxels for t in res.targets]) * 1.5 ** 3 / 1000
    assert 0.8 < ml.min() and ml.max() < 15 and 4 < np.median(ml) < 6  # small instances, 1 to 14 ml
    d = json.loads((tmp_path / "ds" / "dataset.json").read_text())
    assert d["cases"]["stardist_nuclei"]["shape_zyx"] == [62, 61, 57]
