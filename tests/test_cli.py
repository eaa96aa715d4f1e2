"""CLI: exit codes, one-line errors, conversion."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import voxprompt
from voxprompt import load_model
from voxprompt.cli import main
from voxprompt.models.checkpoints import save_safetensors


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "voxprompt", *args], capture_output=True, text=True)


def test_models_lists_zoo(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "sam-med3d" in out and "sam-unet-res34" in out


def test_convert_detects_architecture(tmp_path, capsys):
    """A full-size SAM ViT-B state dict is detected as sam-vit-b."""
    src = tmp_path / "sam_vit_b_01ec64.pth"
    torch.save(load_model("sam-vit-b").state_dict(), src)
    out = tmp_path / "sam.safetensors"
    assert main(["convert", str(src), str(out)]) == 0
    assert "sam-vit-b" in capsys.readouterr().out
    assert out.exists()


def test_errors_are_one_line_with_exit_codes(tmp_path):
    r = run("convert", str(tmp_path / "missing.pth"), str(tmp_path / "o.safetensors"))
    assert r.returncode == 3
    assert r.stderr.count("\n") == 1 and "no such file" in r.stderr and "Traceback" not in r.stderr
    r = run("convert", "a.pth", "b.bin")
    assert r.returncode == 2 and "safetensors" in r.stderr
    r = run("frobnicate")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    r = run("convert", str(tmp_path / "x.pth"), str(tmp_path / "o.safetensors"), "--model", "nope")
    assert r.returncode in (2, 3) and "Traceback" not in r.stderr


@pytest.mark.parametrize("content", [b"garbage"])
def test_convert_refuses_corrupt_input_without_partial_output(tmp_path, content):
    src = tmp_path / "bad.pth"
    src.write_bytes(content)
    out = tmp_path / "o.safetensors"
    assert main(["convert", str(src), str(out)]) == 3
    assert not out.exists() and not list(tmp_path.glob(".*tmp"))


def test_convert_sets_roi_spacing(tmp_path, capsys, tiny_med2d):
    """--roi-spacing stores the inference spacing with the weights; Session uses it; bad values and
    2D models are refused without output."""
    from voxprompt.session import Session

    src = tmp_path / "small.safetensors"
    model = load_model("voxprompt-med3d-small", pretrained=False)
    save_safetensors(model.state_dict(), src, "voxprompt-med3d-small", model.cfg.to_dict())
    out = tmp_path / "small-2mm.safetensors"
    assert main(["convert", str(src), str(out), "--roi-spacing", "2"]) == 0
    converted = load_model("voxprompt-med3d-small", out)
    assert converted.cfg.roi_spacing_mm == 2.0 and model.cfg.roi_spacing_mm != 2.0
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), converted.state_dict().values()))
    assert Session(converted).roi_spacing == 2.0
    # --refine-band: the sessions' default boundary refinement, kept by a later conversion
    banded = tmp_path / "small-refine.safetensors"
    assert main(["convert", str(out), str(banded), "--refine-band", "6"]) == 0
    session = Session(load_model("voxprompt-med3d-small", banded))
    assert session.refine is not None and session.refine.band_mm == 6.0 and session.roi_spacing == 2.0
    assert Session(load_model("voxprompt-med3d-small", banded), refine=False).refine is None
    assert main(["convert", str(banded), str(out), "--refine-band", "0"]) == 0
    assert Session(load_model("voxprompt-med3d-small", out)).refine is None
    # --multimask-first: weights trained for it choose among their multimask outputs on a first click
    multi = tmp_path / "small-multimask.safetensors"
    assert Session(load_model("voxprompt-med3d-small", out)).multimask_first is False
    assert main(["convert", str(out), str(multi), "--multimask-first"]) == 0
    session = Session(load_model("voxprompt-med3d-small", multi))
    assert session.multimask_first is True and session.roi_spacing == 2.0
    assert Session(load_model("voxprompt-med3d-small", multi), multimask_first=False).multimask_first is False
    assert main(["convert", str(multi), str(out), "--no-multimask-first"]) == 0
    assert Session(load_model("voxprompt-med3d-small", out)).multimask_first is False
    # --flip-ensemble: how many mirror images of each ROI a session averages, kept by a later conversion
    flipped = tmp_path / "small-flips.safetensors"
    assert len(Session(load_model("voxprompt-med3d-small", out)).predictor.flips) == 1
    assert main(["convert", str(out), str(flipped), "--flip-ensemble", "4"]) == 0
    assert main(["convert", str(flipped), str(multi), "--roi-spacing", "2"]) == 0
    assert len(Session(load_model("voxprompt-med3d-small", multi)).predictor.flips) == 4
    assert len(Session(load_model("voxprompt-med3d-small", multi), flip_ensemble=1).predictor.flips) == 1
    assert main(["convert", str(out), str(flipped), "--flip-ensemble", "3"]) == 2
    bad = tmp_path / "bad.safetensors"
    assert main(["convert", str(src), str(bad), "--roi-spacing", "-1"]) == 2
    assert "roi_spacing_mm must be positive" in capsys.readouterr().err
    assert main(["convert", str(src), str(bad), "--refine-band", "-3"]) == 2
    assert "refine_band_mm must be >= 0" in capsys.readouterr().err
    assert main(["convert", str(src), str(bad), "--model", "sam-med2d"]) == 3  # holds a 3D model
    assert "not sam-med2d" in capsys.readouterr().err
    _, model2d, _ = tiny_med2d
    with pytest.raises(voxprompt.UsageError, match="not a 3D model"):
        voxprompt.convert_checkpoint(model2d.state_dict(), bad, name="sam-med2d", config=model2d.cfg.to_dict(),
                                     roi_spacing_mm=1.0)
    assert not bad.exists()
