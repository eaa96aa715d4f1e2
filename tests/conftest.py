"""Shared test fixtures. The golden files from the official code live in tests/golden/ (override:
VOXPROMPT_SHARED=/path/to/shared reads its golden/ and reference/ folders; see golden_paths.py)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from golden_paths import golden_dirs

ROOT = Path(__file__).resolve().parents[1]
GOLDEN, REFERENCE = golden_dirs()

torch.set_num_threads(min(2, os.cpu_count() or 1))


def golden_path(name: str) -> Path:
    path = GOLDEN / name
    if not path.exists():
        pytest.fail(f"golden fixture {path} is missing (tests/golden/ is part of the repository; "
                    "VOXPROMPT_SHARED, if set, must name a shared/ folder with golden/ and reference/)")
    return path


def load_golden(name: str) -> dict:
    return torch.load(golden_path(name), weights_only=True)


@dataclass(frozen=True)
class FakeTarget:
    """Stand-in for an eval target with the fields the runner reads (no files involved)."""

    case: str
    label: int
    name: str
    modality: str
    split: str


def _tiny(fixture: str, name: str, config_fn, image_key: str):
    import voxprompt

    g = load_golden(fixture)
    sd = {k: v.contiguous() for k, v in g["state_dict"].items()}
    model = voxprompt.load_model(name, sd, config=config_fn(g["config"]))
    with torch.no_grad():
        emb = model.encode(g[image_key].float())
    return g, model, emb


@pytest.fixture(scope="session")
def tiny_med3d():
    """(golden dict, tiny SAM-Med3D with the fixture's weights, its image embedding)."""
    from golden_configs import sam_med3d_config

    return _tiny("sam_med3d_tiny.pt", "sam-med3d", sam_med3d_config, "image")


@pytest.fixture(scope="session")
def tiny_sam():
    from golden_configs import sam_config

    return _tiny("sam_tiny.pt", "sam-vit-b", sam_config, "image_encoder_input")


@pytest.fixture(scope="session")
def tiny_med2d():
    from golden_configs import sam_med2d_config

    return _tiny("sam_med2d_tiny.pt", "sam-med2d", sam_med2d_config, "image")


@pytest.fixture(scope="session")
def tiny_unet():
    from golden_configs import sam_unet_config

    return _tiny("sam_unet_tiny.pt", "sam-unet", sam_unet_config, "image_encoder_input")


@pytest.fixture(scope="session")
def tiny_fine():
    """(golden dict, tiny SAM-Med3D grown by a boundary head with a non-zero last layer, its embedding)."""
    import dataclasses

    from golden_configs import sam_med3d_config

    import voxprompt
    from voxprompt.train.trainer import grow

    g = load_golden("sam_med3d_tiny.pt")
    cfg = dataclasses.replace(sam_med3d_config(g["config"]), fine_channels=3)
    model = voxprompt.load_model("sam-med3d", None, config=cfg, pretrained=False)
    grow(model, {k: v.contiguous() for k, v in g["state_dict"].items()}, "tiny")
    torch.manual_seed(0)
    with torch.no_grad():
        head = model.mask_decoder.fine_head.to_logits
        head.weight.normal_(0, 0.2)
        head.bias.fill_(0.1)
        emb = model.encode(g["image"].float())
    return g, model, emb
