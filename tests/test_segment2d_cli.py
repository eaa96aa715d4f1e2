"""``voxprompt segment`` with 2D models: 2D images (PNG/JPEG/TIFF/DICOM) and volumes (slice, propagate)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import tifffile
from conftest import ROOT, load_golden
from golden_configs import sam_med2d_config
from io2d_files import phantom, write_dicom
from PIL import Image as PILImage

import voxprompt
from voxprompt.cli import main
from voxprompt.cli.segment2d import parse_box2d, parse_point2d
from voxprompt.errors import UsageError
from voxprompt.models.checkpoints import save_safetensors


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("seg2d")
    g = load_golden("sam_med2d_tiny.pt")
    model = voxprompt.load_model("sam-med2d", {k: v.contiguous() for k, v in g["state_dict"].items()},
                                 config=sam_med2d_config(g["config"]))
    ckpt = save_safetensors(model.state_dict(), d / "med2d.safetensors", "sam-med2d", model.cfg.to_dict())
    grey, mask = phantom(60, 80)
    PILImage.fromarray(grey).save(d / "img.png")
    PILImage.fromarray(np.stack([grey] * 3, -1)).save(d / "img.jpg")
    tifffile.imwrite(d / "img.tif", grey.astype(np.uint16) * 10)
    PILImage.fromarray(mask.astype(np.uint8) * 255).save(d / "prior.png")
    write_dicom(d / "ct.dcm", grey.astype(np.uint16) * 4)
    write_dicom(d / "frames.dcm", np.stack([grey] * 4).astype(np.uint16) * 4)
    vol = np.random.default_rng(0).normal(0, 5, (10, 40, 50)).astype(np.float32)
    vol[2:8, 10:30, 15:35] += 100
    img = sitk.GetImageFromArray(vol)
    img.SetSpacing((0.8, 0.8, 2.0))
    sitk.WriteImage(img, str(d / "vol.nii.gz"))
    return {"dir": d, "ckpt": ckpt, "png": d / "img.png", "jpg": d / "img.jpg", "tif": d / "img.tif",
            "dcm": d / "ct.dcm", "frames": d / "frames.dcm", "vol": d / "vol.nii.gz", "prior": d / "prior.png"}


def _seg(files, image, out, *extra) -> int:
    return main(["segment", str(files[image]), "-o", str(files["dir"] / out), "--model", "sam-med2d",
                 "--checkpoint", str(files["ckpt"]), *extra])


@pytest.mark.parametrize("image, out, extra", [
    ("png", "a.png", ["--box", "20,10,70,45", "--point", "44,27", "--point", "5,50:-"]),
    ("jpg", "b.tif", ["--point", "44,27", "--channel-order", "rgb"]),
    ("tif", "c.tiff", ["--box", "20,10,70,45"]),
    ("dcm", "d.png", ["--point", "44,27", "--window", "soft-tissue"]),
    ("png", "e.png", ["--mask-in", "PRIOR", "--point", "44,27"]),
])
def test_segment_2d_images(files, capsys, image, out, extra):
    extra = [str(files["prior"]) if e == "PRIOR" else e for e in extra]
    assert _seg(files, image, out, *extra) == 0, capsys.readouterr().err
    res = files["dir"] / out
    arr = np.asarray(PILImage.open(res)) if res.suffix == ".png" else tifffile.imread(res)
    assert arr.shape == (60, 80) and set(np.unique(arr)) <= {0, 1}
    assert "pixels" in capsys.readouterr().out


def test_segment_2d_mask_values_default_0_1_and_0_255_on_request(files, capsys):
    """Issue 20 #14: 2D masks hold 0/1 like 3D outputs; 0/255 only behind --mask-values 0,255."""
    assert _seg(files, "png", "v1.png", "--point", "44,27") == 0, capsys.readouterr().err
    a1 = np.asarray(PILImage.open(files["dir"] / "v1.png"))
    assert a1.max() == 1 and set(np.unique(a1)) == {0, 1}
    assert _seg(files, "png", "v255.png", "--point", "44,27", "--mask-values", "0,255") == 0
    a255 = np.asarray(PILImage.open(files["dir"] / "v255.png"))
    assert set(np.unique(a255)) == {0, 255} and np.array_equal(a255 > 0, a1 > 0)
    assert _seg(files, "png", "bad.png", "--point", "44,27", "--mask-values", "0,7") == 2
    assert "--mask-values" in capsys.readouterr().err


def test_segment_2d_overlay(files, capsys):
    png = files["dir"] / "ov.png"
    assert _seg(files, "png", "o.png", "--box", "20,10,70,45", "--overlay", str(png)) == 0
    assert png.stat().st_size > 1000 and "wrote" in capsys.readouterr().out


def test_segment_volume_slice_and_propagate(files, capsys):
    out = files["dir"] / "v.nii.gz"
    assert _seg(files, "vol", "v.nii.gz", "--point", "25,20,4") == 0
    seg = sitk.ReadImage(str(out))
    assert seg.GetSize() == (50, 40, 10) and seg.GetSpacing() == pytest.approx((0.8, 0.8, 2.0))
    arr = sitk.GetArrayFromImage(seg)
    assert np.flatnonzero(arr.any(axis=(1, 2))).tolist() in ([], [4])  # one slice only
    capsys.readouterr()
    assert _seg(files, "vol", "p.nii.gz", "--box", "15,10,3,35,30,7", "--propagate", "--slice", "5",
                "--overlay", str(files["dir"] / "vov.png")) == 0
    arr = sitk.GetArrayFromImage(sitk.ReadImage(str(files["dir"] / "p.nii.gz")))
    assert set(np.flatnonzero(arr.any(axis=(1, 2))).tolist()) <= set(range(3, 7))  # inside the box's k range
    assert "slice 5" in capsys.readouterr().out
    # along the i axis (sagittal slices of the array): the point's i picks the slice
    assert _seg(files, "vol", "s.nii.gz", "--point", "25,20,4", "--slice-axis", "i") == 0
    arr = sitk.GetArrayFromImage(sitk.ReadImage(str(files["dir"] / "s.nii.gz")))
    assert np.flatnonzero(arr.any(axis=(0, 1))).tolist() in ([], [25])
    # a multi-frame DICOM is a volume of frames: multi-page TIFF out
    assert _seg(files, "frames", "f.tif", "--point", "44,27,1", "--propagate") == 0
    assert tifffile.imread(files["dir"] / "f.tif").shape == (4, 60, 80)


def _err(files, capsys, image, out, *extra, model="sam-med2d"):
    argv = ["segment", str(files[image]), "-o", str(files["dir"] / out), "--model", model,
            "--checkpoint", str(files["ckpt"]), *extra]
    rc = main(argv)
    err = capsys.readouterr().err
    assert not (files["dir"] / out).exists()
    assert err.count("\n") == 1 and err.startswith("voxprompt: error:") and "Traceback" not in err
    return rc, err


@pytest.mark.parametrize("image, out, extra, code, words", [
    ("png", "x.png", ["--box", "70,10,20,45"], 2, "wrong order"),
    ("png", "x.png", ["--point", "1,2,3"], 2, "two values"),
    ("png", "x.png", ["--point", "90,20"], 3, "outside the image of 80x60"),
    ("png", "x.png", ["--box", "0,0,81,10"], 3, "outside"),
    ("png", "x.jpg", ["--point", "4,5"], 2, "extension"),
    ("png", "x.png", [], 2, "needs a prompt"),
    ("png", "x.png", ["--point", "4,5", "--propagate"], 2, "for volumes"),
    ("png", "x.png", ["--point", "4,5", "--window", "wide"], 2, "window"),
    ("vol", "x.nii.gz", ["--point", "25,20,4", "--point", "25,20,5"], 3, "one slice"),
    ("vol", "x.nii.gz", ["--point", "25,20,40"], 3, "outside the volume"),
    ("vol", "x.png", ["--point", "25,20,4"], 2, "extension"),
    ("vol", "x.nii.gz", ["--point", "25,20,4", "--slice", "11"], 2, "--slice 11"),
    ("frames", "x.tif", ["--point", "4,5,1", "--mask-in", "m.png"], 2, "--mask-in"),
])
def test_segment_2d_errors(files, capsys, image, out, extra, code, words):
    rc, err = _err(files, capsys, image, out, *extra)
    assert rc == code and words in err, err


def test_2d_image_needs_a_2d_model(files, capsys):
    rc, err = _err(files, capsys, "png", "x.png", "--point", "4,5", model="sam-med3d")
    assert rc == 2 and "needs a 2D model" in err
    rc, err = _err(files, capsys, "png", "x.png", "--point", "4,5", "--autozoom")
    assert rc == 2 and "--propagate" in err
    rc, err = _err(files, capsys, "png", "x.png", "--point", "4,5", "--refine")
    assert rc == 2 and "--refine is for 3D models" in err


def test_rgba_png_is_refused(files, capsys):
    PILImage.fromarray(np.zeros((20, 30, 4), np.uint8), "RGBA").save(files["dir"] / "rgba.png")
    files["rgba"] = files["dir"] / "rgba.png"
    rc, err = _err(files, capsys, "rgba", "x.png", "--point", "4,5")
    assert rc == 3 and "4 channels" in err


def test_parsers():
    assert parse_point2d("3.5,4:-") == ((3.5, 4.0), False) and parse_box2d("1,2,3,4") == (1, 2, 3, 4)
    for bad in ("1,2,3,x", "1,2,3"):
        with pytest.raises(UsageError):
            parse_box2d(bad)


def test_segment_2d_subprocess(files):
    out = files["dir"] / "sub.png"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "voxprompt", "segment", str(files["png"]), "-o", str(out), "--model", "sam-med2d",
           "--checkpoint", str(files["ckpt"]), "--box", "20,10,70,45"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert np.asarray(PILImage.open(out)).shape == (60, 80)


# ---------------------------------------------------------------- issue 20: correct and unsurprising commands

@pytest.mark.parametrize("image", ["png", "dcm"])
@pytest.mark.parametrize("model", ["sam-med3d", None])
def test_single_slice_inputs_need_a_2d_model_alike(files, capsys, image, model):
    """Item 6: a PNG and a single-frame DICOM file get the same refusal from a 3D model."""
    out = files["dir"] / ("x.png" if image == "png" else "x.nii.gz")  # a 3D model writes volumes
    argv = ["segment", str(files[image]), "-o", str(out), "--point", "4,5,0"]
    argv += ["--model", model, "--checkpoint", str(files["ckpt"])] if model else []
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1, err
    assert "single slice" in err and "3D model" in err and "sam-med2d" in err
    assert not out.exists()


@pytest.mark.parametrize("out", ["empty.png", "empty.tif"])
def test_empty_2d_mask_is_written_with_a_warning(files, capsys, caplog, out):
    """Item 5: an empty 2D mask is written (exit 0) with a warning naming the file."""
    PILImage.fromarray(np.zeros((60, 80), np.uint8)).save(files["dir"] / "zeros.png")
    with caplog.at_level("WARNING"):
        rc = _seg(files, "png", out, "--mask-in", str(files["dir"] / "zeros.png"))
    assert rc == 0, capsys.readouterr().err
    assert (files["dir"] / out).exists()
    assert "empty" in caplog.text and str(files["dir"] / out) in caplog.text


def test_2d_point_with_spaces_says_use_commas():
    """Issue 20 #16: a point or box given with spaces gets the comma form in the message."""
    with pytest.raises(UsageError, match=r"use commas.*--point 44,27:-$"):
        parse_point2d("44 27:-")
    with pytest.raises(UsageError, match=r"use commas.*--box 1,2,3,4$"):
        parse_box2d("1 2 3 4")
