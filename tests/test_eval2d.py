"""2D models in ``voxprompt eval``: the SAM-Med2D slice protocol and 3D protocols via propagation."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import FakeTarget, load_golden
from fake2d import BrightInBox
from golden_configs import sam_med2d_config

import voxprompt
from voxprompt.cli import main
from voxprompt.eval.runner import evaluate
from voxprompt.eval.runner2d import evaluate_slices, pick_slices, slice_session_factory
from voxprompt.io.image import Image
from voxprompt.models.checkpoints import save_safetensors

SHAPE = (24, 40, 40)


def _volume() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    img = rng.normal(0.0, 5.0, SHAPE).astype(np.float32)
    lab = np.zeros(SHAPE, np.uint8)
    zz, yy, xx = np.indices(SHAPE)
    lab[(zz - 12) ** 2 / 64 + (yy - 15) ** 2 / 49 + (xx - 14) ** 2 / 49 <= 1] = 1
    lab[6:18, 24:34, 22:34] = 2
    img[lab > 0] += 100.0
    return img, lab


def _targets() -> tuple[list[FakeTarget], callable]:
    img, lab = _volume()
    image = Image(img, spacing=(1.0, 1.0, 2.0), origin=(0.0, 0.0, 0.0), direction=np.eye(3))
    targets = [FakeTarget("synth", 1, "liver", "CT", "test"), FakeTarget("synth", 2, "vertebrae_T1", "CT", "test")]
    return targets, lambda t: (image, lab == t.label)


def test_pick_slices():
    _, lab = _volume()
    gt = lab == 1
    s = pick_slices(gt, 0, 3)
    assert s[0] == 12 and len(s) == 3 and len(set(s)) == 3 and all(gt[i].any() for i in s)
    assert pick_slices(gt, 2, 1) == [14]
    assert pick_slices(np.zeros(SHAPE, bool), 0, 3) == []
    assert pick_slices(gt, 0, 3, min_fraction=0.5) == []


def test_sam_med2d_protocol_rows_with_a_fake_model():
    targets, loader = _targets()
    rows = evaluate_slices(targets, BrightInBox(), seed=1, loader=loader, slices=2)
    again = evaluate_slices(targets[::-1], BrightInBox(), seed=1, loader=loader, slices=2)[::-1]
    for r, a in zip(rows, again):
        assert r["clicks"] == a["clicks"] and r["dice"] == a["dice"]  # per-target streams
    liver, cube = rows
    assert liver["protocol"] == "sam-med2d" and liver["n_clicks"] == 5 and len(liver["dice"]) == 5
    assert liver["box_dice"] > 0.9 and cube["box_dice"] > 0.9  # the fake segments bright pixels in the box
    assert liver["dice"][-1] >= liver["dice"][0] and len(liver["clicks"]) == 10  # 2 slices x 5 points
    assert len(liver["box"]) == 2 and liver["slices"] == pick_slices(loader(targets[0])[1], 0, 2)
    assert all(len(c) == 4 and c[0] in liver["slices"] for c in liver["clicks"])  # (z, y, x, label)
    nobox = evaluate_slices(targets[:1], BrightInBox(), loader=loader, use_box=False, n_clicks=2, axis=2)
    assert nobox[0]["box_dice"] is None and nobox[0]["box"] is None and len(nobox[0]["dice"]) == 2


def test_2d_model_on_3d_protocols_via_propagation():
    targets, loader = _targets()
    factory = slice_session_factory(BrightInBox(), axis=0)
    (row,) = evaluate(targets[1:], factory, "cvpr25", 0, n_clicks=2, loader=loader)
    assert row["box_dice"] > 0.9  # box on z_mid, propagated within the z range
    (row,) = evaluate(targets[:1], factory, "sam-med3d", 0, n_clicks=2, loader=loader)
    assert row["dice"][0] > 0.3 and np.isnan(row["final_roi_dice"])


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("eval2d") / "Dataset002_synth"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    img, lab = _volume()
    for arr, path in ((img, root / "imagesTr" / "synth_0000.nii.gz"), (lab, root / "labelsTr" / "synth.nii.gz")):
        im = sitk.GetImageFromArray(arr)
        im.SetSpacing((1.0, 1.0, 2.0))
        sitk.WriteImage(im, str(path))
    (root / "dataset.json").write_text(json.dumps({"name": "synth", "channel_names": {"0": "CT"},
                                                   "labels": {"background": 0, "liver": 1, "vertebrae_T1": 2},
                                                   "numTraining": 1, "file_ending": ".nii.gz"}))
    with open(root / "targets.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["case", "label", "name", "modality", "voxels", "split"])
        w.writerows([["synth", 1, "liver", "CT", int((lab == 1).sum()), "test"],
                     ["synth", 2, "vertebrae_T1", "CT", int((lab == 2).sum()), "test"]])
    g = load_golden("sam_med2d_tiny.pt")
    model = voxprompt.load_model("sam-med2d", {k: v.contiguous() for k, v in g["state_dict"].items()},
                                 config=sam_med2d_config(g["config"]))
    ckpt = save_safetensors(model.state_dict(), root.parent / "med2d.safetensors", "sam-med2d", model.cfg.to_dict())
    return root, ckpt


def test_cli_sam_med2d_protocol_and_propagation(dataset, tmp_path, capsys):
    root, ckpt = dataset
    out = tmp_path / "r2d"
    rc = main(["eval", "--model", "sam-med2d", "--checkpoint", str(ckpt), "--data", str(root), "--protocol",
               "sam-med2d", "--out", str(out), "--slices", "2", "--clicks", "3"])
    assert rc == 0, capsys.readouterr().err
    doc = json.loads((out / "results.json").read_text())
    assert doc["meta"]["protocol"] == "sam-med2d" and doc["meta"]["slices_per_target"] == 2
    assert [r["name"] for r in doc["results"]] == ["liver", "vertebrae_T1"]
    assert all(len(r["dice"]) == 3 and r["box_dice"] is not None for r in doc["results"])
    assert (out / "summary.md").is_file() and (out / "best_case.png").is_file()
    out3 = tmp_path / "r3d"
    rc = main(["eval", "--model", "sam-med2d", "--checkpoint", str(ckpt), "--data", str(root), "--protocol",
               "cvpr25", "--out", str(out3), "--clicks", "1", "--limit", "1"])
    assert rc == 0, capsys.readouterr().err
    assert json.loads((out3 / "results.json").read_text())["meta"]["slice_axis"] == "k"


def test_cli_refuses_sam_med2d_for_3d_models(dataset, tmp_path, capsys):
    root, _ = dataset
    rc = main(["eval", "--model", "random-walker", "--data", str(root), "--protocol", "sam-med2d",
               "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert rc == 2 and "for 2D models" in err and err.count("\n") == 1
