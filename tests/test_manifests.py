"""Full-size architectures: state-dict keys, shapes and parameter counts equal the official
manifests in shared/reference/."""
from __future__ import annotations

import json

import pytest
import torch
from conftest import REFERENCE

import voxprompt

MANIFESTS = {
    "sam-med3d": "sam_med3d_turbo_state_dict_shapes.json",
    "sam-vit-b": "sam_vit_b_state_dict_shapes.json",
    "sam-med2d": "sam_med2d_b_state_dict_shapes.json",
    "sam-unet": "sam_unet_state_dict_shapes.json",
    "sam-unet-res34": "sam_unet_res34_state_dict_shapes.json",
}
PARAMS = {
    "sam-med3d": 100_509_232,
    "sam-vit-b": 93_735_472,
    "sam-med2d": 271_241_776,
    "sam-unet": 138_428_204,
    "sam-unet-res34": 116_019_884,
}


@pytest.mark.parametrize("name", list(MANIFESTS))
def test_state_dict_equals_manifest(name):
    path = REFERENCE / MANIFESTS[name]
    if not path.exists():
        pytest.fail(f"manifest {path} missing")
    manifest = json.loads(path.read_text())
    model = voxprompt.load_model(name)
    own = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert own == manifest["state_dict_shapes"]
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == manifest["_meta"]["num_parameters"] == PARAMS[name]


def test_unknown_name_lists_known_names():
    with pytest.raises(voxprompt.UnknownModelError) as err:
        voxprompt.load_model("sam-med4d")
    for name in MANIFESTS:
        assert name in str(err.value)


def test_load_model_is_eval_and_on_device():
    model = voxprompt.load_model("sam-unet-res34", device=torch.device("cpu"))
    assert not model.training
    assert next(model.parameters()).device.type == "cpu"
