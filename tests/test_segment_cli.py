"""``voxprompt info`` / ``voxprompt segment`` in-process and as a subprocess (tiny random model)."""
from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from cli_volume import ORIGIN, SPACING_XYZ, write_cli_files
from conftest import ROOT

import voxprompt
from voxprompt.cli import common as segment_cli
from voxprompt.cli import main
from voxprompt.models.loading import shipped_weights


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    return write_cli_files(tmp_path_factory.mktemp("cli"))


def _read(path: Path) -> sitk.Image:
    return sitk.ReadImage(str(path))


def _same_geometry(a: sitk.Image, b: sitk.Image) -> None:
    assert a.GetSize() == b.GetSize()
    assert a.GetSpacing() == pytest.approx(b.GetSpacing(), abs=1e-6)
    assert a.GetOrigin() == pytest.approx(b.GetOrigin(), abs=1e-6)
    assert a.GetDirection() == pytest.approx(b.GetDirection(), abs=1e-6)


def test_info(files, capsys):
    assert main(["info", str(files["img"])]) == 0
    out = capsys.readouterr().out
    assert "36 x 40 x 16" in out and "LPS" in out and "0.9, 0.8, 3" in out and "intensity" in out


def test_info_orientation_names_its_letter_convention(files, capsys):
    """Issue 20 #15: the orientation letters say where each axis points TO (nibabel/DICOM convention)."""
    assert main(["info", str(files["img"])]) == 0
    line = next(t for t in capsys.readouterr().out.splitlines() if "orientation" in t)
    assert "LPS (letters name where each axis points TO" in line
    assert "i -> patient left, j -> patient posterior, k -> patient superior" in line
    assert "old ITK 'from' code: RAI" in line
    # an image whose i axis runs toward the patient's right (NIfTI's usual RAS storage) reads RAS
    img = sitk.ReadImage(str(files["img"]))
    img.SetDirection((-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0))
    ras = files["dir"] / "ras.nii.gz"
    sitk.WriteImage(img, str(ras))
    assert main(["info", str(ras)]) == 0
    line = next(t for t in capsys.readouterr().out.splitlines() if "orientation" in t)
    assert line.split()[1] == "RAS" and "i -> patient right, j -> patient anterior" in line


def test_segment_in_process_points_box_overlay(files, capsys):
    out, png = files["dir"] / "seg.nii.gz", files["dir"] / "seg.png"
    rc = main(["segment", str(files["img"]), "-o", str(out), "--checkpoint", str(files["ckpt"]),
               "--point", "18,20,8", "--point", "10,12,8:-", "--box", "8,10,4,28,30,12",
               "--overlay", str(png)])
    assert rc == 0, capsys.readouterr().err
    seg, ref = _read(out), _read(files["img"])
    _same_geometry(seg, ref)
    assert seg.GetPixelID() == sitk.sitkUInt8
    assert set(np.unique(sitk.GetArrayFromImage(seg))) <= {0, 1}
    assert png.stat().st_size > 1000
    assert "wrote" in capsys.readouterr().out


def test_segment_bf16_matches_fp32_mask(files, capsys):
    """``--precision bf16`` (mixed on CPU) segments the same structure as fp32: near-identical mask."""
    masks = {}
    for prec in ("fp32", "bf16"):
        out = files["dir"] / f"seg_{prec}.nii.gz"
        rc = main(["segment", str(files["img"]), "-o", str(out), "--checkpoint", str(files["ckpt"]),
                   "--point", "18,20,8", "--precision", prec])
        assert rc == 0, capsys.readouterr().err
        masks[prec] = sitk.GetArrayFromImage(_read(out)).astype(bool)
    a, b = masks["fp32"], masks["bf16"]
    assert a.any()
    assert (a ^ b).sum() <= 0.02 * a.sum()  # bf16 flips only a few boundary voxels


def test_point_mm_mask_in_and_ijk_order(files, monkeypatch):
    seen = []
    from voxprompt import session as session_mod

    orig = session_mod.Session.add_point

    def spy(self, index, positive=True):
        seen.append((tuple(index), positive))
        return orig(self, index, positive)

    monkeypatch.setattr(session_mod.Session, "add_point", spy)
    # world LPS point of IJK (18, 20, 8): origin + spacing * ijk (identity direction)
    mm = [o + s * i for o, s, i in zip(ORIGIN, SPACING_XYZ, (18, 20, 8))]
    ras = [-mm[0], -mm[1], mm[2]]
    out = files["dir"] / "mm.nrrd"
    rc = main(["segment", str(files["img"]), "-o", str(out), "--checkpoint", str(files["ckpt"]),
               "--point", "5,6,7:-", f"--point-mm={','.join(map(str, ras))}",
               f"--point-mm={','.join(map(str, ras))}:-", "--frame", "RAS", "--mask-in", str(files["prior"])])
    assert rc == 0
    assert seen == [((7, 6, 5), False), ((8, 20, 18), True), ((8, 20, 18), False)]  # --point first, then mm
    _same_geometry(_read(out), _read(files["img"]))
    seen.clear()
    assert main(["segment", str(files["img"]), "-o", str(out), "--checkpoint", str(files["ckpt"]),
                 f"--point-mm={','.join(map(str, mm))}"]) == 0  # default frame LPS
    assert seen == [((8, 20, 18), True)]


def test_segment_warns_on_a_poor_result_writes_it_and_exits_0(files, caplog, monkeypatch):
    from voxprompt import session as session_mod

    cleans = []
    init, decode = session_mod.Session.__init__, session_mod.Session._decode

    def spy(self, *args, **kw):
        init(self, *args, **kw)
        cleans.append(self.clean)

    monkeypatch.setattr(session_mod.Session, "__init__", spy)
    monkeypatch.setattr(session_mod.Session, "_decode", lambda self, *a: (decode(self, *a)[0], 0.01))
    base = ["segment", str(files["img"]), "--checkpoint", str(files["ckpt"]), "--point", "18,20,8"]
    out = files["dir"] / "poor.nii.gz"
    with caplog.at_level(logging.WARNING, logger="voxprompt.cli.segment"):
        assert main(base + ["-o", str(out)]) == 0
    assert out.exists()  # written all the same: the user decides
    assert "check the result: low confidence: predicted IoU 0.01 <" in caplog.text
    assert main(base + ["-o", str(out), "--clean"]) == 0 and main(base + ["-o", str(out), "--no-clean"]) == 0
    assert cleans == [False, True, False]  # an official model: off unless asked for
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="voxprompt.cli.segment"):
        assert main(base[:4] + ["-o", str(out), "--box", "8,10,4,28,30,12"]) == 0  # a box alone reports too
    assert "predicted IoU 0.01" in caplog.text


def test_segment_box_switches_reach_the_session(files, monkeypatch):
    from voxprompt import session as session_mod

    seen = []
    init = session_mod.Session.__init__

    def spy(self, *args, **kw):
        init(self, *args, **kw)
        seen.append((self.box_search, self.box_negatives, self.retry_missed, self.monotone_clicks,
                     len(self.predictor.flips)))

    monkeypatch.setattr(session_mod.Session, "__init__", spy)
    base = ["segment", str(files["img"]), "--checkpoint", str(files["ckpt"]), "--box", "8,10,4,28,30,12",
            "-o", str(files["dir"] / "box.nii.gz")]
    assert main(base) == 0
    assert main(base + ["--box-search", "--no-box-negatives", "--retry-missed", "--monotone-clicks",
                        "--flip-ensemble", "2"]) == 0
    # an official model: centre click, face negatives, the model's result replaces the mask, no flips
    assert seen == [(False, True, False, False, 1), (True, False, True, True, 2)]


def _run_err(files, capsys, *extra, output="bad.nii.gz"):
    out = files["dir"] / output
    argv = ["segment", str(files["img"]), "-o", str(out), *extra]
    rc = main(argv)
    err = capsys.readouterr().err
    assert not out.exists()
    assert err.count("\n") == 1 and err.startswith("voxprompt: error:") and "Traceback" not in err
    return rc, err


@pytest.mark.parametrize("extra, code, words", [
    (["--point", "1,2"], 2, "three values"),
    (["--point", "1,2,x"], 2, "integers"),
    (["--point", "1,2,3:?"], 2, "polarity"),
    (["--point", "36,2,3"], 3, "36,2,3"),
    (["--box", "1,2,3,1,5,6"], 2, "empty"),
    (["--box", "0,0,0,10,10,17"], 3, "outside"),
    (["--model", "nope", "--point", "1,2,3"], 2, "unknown model"),
    (["--device", "cuda", "--point", "1,2,3"], 2, "cuda"),
    (["--precision", "int8", "--point", "1,2,3"], 2, "--precision"),
    (["--point-mm=999,999,999"], 3, "outside"),
    ([], 2, "needs a prompt"),
])
def test_segment_errors(files, capsys, extra, code, words):
    if extra[:2] == ["--device", "cuda"]:
        import torch

        if torch.cuda.is_available():
            pytest.skip("CUDA present")
    rc, err = _run_err(files, capsys, "--checkpoint", str(files["ckpt"]), *extra)
    assert rc == code and words in err
    if "outside" in words and "--point" in " ".join(extra):
        assert "36x40x16" in err  # names the volume size


def test_segment_needs_a_checkpoint_and_valid_output(files, capsys):
    assert shipped_weights("sam-med3d") is None  # official weights cannot be shipped
    rc, err = _run_err(files, capsys, "--model", "sam-med3d", "--point", "1,2,3")
    assert rc == 2 and "--checkpoint" in err
    rc, err = _run_err(files, capsys, "--checkpoint", str(files["ckpt"]), "--point", "1,2,3", output="bad.png")
    assert rc == 2 and "extension" in err
    rc, err = _run_err(files, capsys, "--checkpoint", str(files["ckpt"]), "--point", "1,2,3",
                       "--overlay", str(files["dir"] / "o.jpg"))
    assert rc == 2 and "--overlay" in err
    assert not (files["dir"] / "o.jpg").exists()


def test_segment_subprocess(files):
    out = files["dir"] / "sub.mha"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "voxprompt", "segment", str(files["img"]), "-o", str(out),
           "--checkpoint", str(files["ckpt"]), "--point", "18,20,8"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    _same_geometry(_read(out), _read(files["img"]))
    bad = subprocess.run(cmd[:-1] + ["99,20,8"], capture_output=True, text=True, env=env, timeout=120)
    assert bad.returncode == 3 and bad.stderr.count("\n") == 1 and "Traceback" not in bad.stderr


def test_unreadable_image_is_one_line(files, capsys):
    assert main(["info", str(files["dir"] / "missing.nii.gz")]) == 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "missing.nii.gz" in err


# ---------------------------------------------------------------- issue 20: correct and unsurprising commands

TINY_OVERRIDES = {"embed_dim": 64, "depth": 2, "num_heads": 4, "global_attn_indexes": [1], "prompt_embed_dim": 48}


def test_partial_config_json_applies_on_top_of_the_named_model(files, capsys):
    """Item 1: a partial --config-json overrides the named model's zoo config (here 3D), not the class
    defaults (a 2D ViT-B); a full config still works."""
    import json

    import torch

    from voxprompt.models.zoo import get_spec

    full = {**get_spec("sam-med3d").config.to_dict(), **TINY_OVERRIDES}
    torch.manual_seed(0)
    model = voxprompt.build_model(voxprompt.SamConfig.from_dict(full), name="sam-med3d")
    torch.save(model.state_dict(), files["dir"] / "tiny3d.pth")
    (files["dir"] / "partial.json").write_text(json.dumps(TINY_OVERRIDES))
    (files["dir"] / "full.json").write_text(json.dumps(full))
    for cfg in ("partial.json", "full.json"):
        out = files["dir"] / f"cfg_{cfg}.nii.gz"
        rc = main(["segment", str(files["img"]), "-o", str(out), "--point", "18,20,8", "--model", "sam-med3d",
                   "--checkpoint", str(files["dir"] / "tiny3d.pth"), "--config-json", str(files["dir"] / cfg)])
        assert rc == 0, capsys.readouterr().err
        assert out.exists()
    (files["dir"] / "typo.json").write_text(json.dumps({"embed_dimm": 64}))
    rc, err = _run_err(files, capsys, "--point", "18,20,8", "--model", "sam-med3d", "--checkpoint",
                       str(files["dir"] / "tiny3d.pth"), "--config-json", str(files["dir"] / "typo.json"))
    assert rc == 2 and "embed_dimm" in err and "known keys" in err


def test_config_json_help_lists_the_keys(capsys):
    with pytest.raises(SystemExit):
        main(["segment", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for key in ("embed_dim", "global_attn_indexes", "roi_spacing_mm", "resnet_depth"):
        assert key in out


def _zeros_like_image(files, name: str) -> Path:
    img = _read(files["img"])
    zeros = sitk.Image(img.GetSize(), sitk.sitkUInt8)
    zeros.CopyInformation(img)
    path = files["dir"] / name
    sitk.WriteImage(zeros, str(path))
    return path


@pytest.mark.parametrize("ext", [".nii.gz", ".nrrd", ".mha"])
def test_empty_mask_is_written_with_a_warning(files, capsys, caplog, ext):
    """Item 5: an empty result is written (exit 0) with a warning naming the file."""
    zeros = _zeros_like_image(files, "zeros.nii.gz")
    out = files["dir"] / f"empty{ext}"
    with caplog.at_level(logging.WARNING):
        rc = main(["segment", str(files["img"]), "-o", str(out), "--checkpoint", str(files["ckpt"]),
                   "--mask-in", str(zeros)])
    assert rc == 0, capsys.readouterr().err
    assert out.exists()
    assert "empty" in caplog.text and str(out) in caplog.text


def test_empty_mask_warning_reaches_stderr(files):
    zeros = _zeros_like_image(files, "zeros_sub.nii.gz")
    out = files["dir"] / "empty_sub.nii.gz"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-m", "voxprompt", "segment", str(files["img"]), "-o", str(out),
                        "--checkpoint", str(files["ckpt"]), "--mask-in", str(zeros)],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "WARNING" in r.stderr and "empty" in r.stderr and str(out) in r.stderr


def test_single_slice_volume_needs_a_2d_model(files, capsys):
    """Item 6: a one-voxel-thick volume is refused by a 3D model, pointing to the 2D models."""
    arr = np.random.default_rng(1).normal(100, 20, (1, 40, 36)).astype(np.float32)
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(files["dir"] / "one.nii.gz"))
    for model in (["--checkpoint", str(files["ckpt"])], []):  # an official 3D model, the default one
        rc = main(["segment", str(files["dir"] / "one.nii.gz"), "-o", str(files["dir"] / "one_seg.nii.gz"),
                   "--point", "18,20,0", *model])
        err = capsys.readouterr().err
        assert rc == 2 and err.count("\n") == 1, err
        assert "single slice" in err and "3D model" in err and "sam-med2d" in err
        assert not (files["dir"] / "one_seg.nii.gz").exists()


def test_nan_in_nifti_is_a_data_error(files, capsys):
    """Item 8: NaN in a float NIfTI is refused (exit 3, one line), as in NRRD/MHA."""
    arr = sitk.GetArrayFromImage(_read(files["img"]))
    arr[3, 4, 5] = np.nan
    bad = sitk.GetImageFromArray(arr)
    bad.CopyInformation(_read(files["img"]))
    for ext in (".nii.gz", ".nii", ".nrrd"):
        path = files["dir"] / f"nan{ext}"
        sitk.WriteImage(bad, str(path))
        rc = main(["segment", str(path), "-o", str(files["dir"] / "nan_seg.nii.gz"), "--checkpoint",
                   str(files["ckpt"]), "--point", "18,20,8"])
        err = capsys.readouterr().err
        assert rc == 3 and err.count("\n") == 1 and "NaN" in err and str(path) in err, (ext, err)
        assert not (files["dir"] / "nan_seg.nii.gz").exists()


@pytest.mark.parametrize("flag", [["--window", "lung"], ["--propagate"], ["--slice-axis", "j"],
                                  ["--channel-order", "rgb"], ["--slice", "3"], ["--mask-values", "0,255"]])
def test_2d_only_flags_are_refused_with_a_3d_model(files, capsys, flag):
    """Item 9: flags of the 2D models are not silently ignored by a 3D model."""
    rc, err = _run_err(files, capsys, "--checkpoint", str(files["ckpt"]), "--point", "18,20,8", *flag)
    assert rc == 2 and flag[0] in err and "2D" in err, err


def test_point_with_spaces_says_use_commas(files, capsys):
    """Issue 20 #16: --point "378 198 40" -> the message shows the comma form."""
    with pytest.raises(segment_cli.UsageError, match=r"use commas.*--point 378,198,40$"):
        segment_cli.parse_point("378 198 40")
    with pytest.raises(segment_cli.UsageError, match=r"use commas.*--point-mm 1.5,2,3:-$"):
        segment_cli.parse_point("1.5 2 3:-", world=True)
    with pytest.raises(segment_cli.UsageError, match=r"use commas.*--box 1,2,3,4,5,6$"):
        segment_cli.parse_box("1 2 3 4 5 6")
    rc = main(["segment", str(files["img"]), "-o", str(files["dir"] / "sp.nii.gz"), "--checkpoint",
               str(files["ckpt"]), "--point", "18 20 8"])
    err = capsys.readouterr().err
    assert rc == 2 and "--point 18,20,8" in err and "use commas" in err, err
