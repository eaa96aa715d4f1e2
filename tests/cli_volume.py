"""The tiny SAM-Med3D checkpoint, CT-like volume and mask prior the CLI tests run on (one home)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk
from conftest import load_golden
from golden_configs import sam_med3d_config

import voxprompt
from voxprompt.models.checkpoints import save_safetensors

SPACING_XYZ = (0.9, 0.8, 3.0)
ORIGIN = (10.0, -20.0, 5.0)
SIZE_XYZ = (36, 40, 16)


def write_cli_files(d: Path) -> dict:
    """Write ``tiny.safetensors``, ``img.nii.gz`` (identity direction: LPS) and ``prior.nii.gz`` into ``d``."""
    g = load_golden("sam_med3d_tiny.pt")
    model = voxprompt.load_model("sam-med3d", g["state_dict"], config=sam_med3d_config(g["config"]))
    ckpt = save_safetensors(model.state_dict(), d / "tiny.safetensors", "sam-med3d", model.cfg.to_dict())
    arr = np.random.default_rng(0).normal(100, 20, SIZE_XYZ[::-1]).astype(np.float32)
    arr[4:12, 10:30, 8:28] += 60
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(SPACING_XYZ)
    img.SetOrigin(ORIGIN)
    sitk.WriteImage(img, str(d / "img.nii.gz"))
    prior = sitk.GetImageFromArray((arr > 150).astype(np.uint8))
    prior.CopyInformation(img)
    sitk.WriteImage(prior, str(d / "prior.nii.gz"))
    return {"dir": d, "ckpt": ckpt, "img": d / "img.nii.gz", "prior": d / "prior.nii.gz", "model": model}
