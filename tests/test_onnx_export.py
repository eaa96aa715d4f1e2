"""ONNX export of every model family (tiny golden configs) checked with onnxruntime on CPU against
``encode`` / ``decode``: dynamic batch, any number of points, boxes, with and without mask input."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from voxprompt.cli import main  # noqa: E402
from voxprompt.errors import PromptError  # noqa: E402
from voxprompt.models.onnx import decoder_prompt, export_onnx  # noqa: E402

ATOL = 1e-4  # onnxruntime vs torch, fp32 (measured <= 3e-5 on the tiny models)


def _image(g: dict) -> torch.Tensor:
    return (g["image_encoder_input"] if "image_encoder_input" in g else g["image"]).float()


@pytest.mark.parametrize("fixture", ["tiny_med3d", "tiny_fine", "tiny_sam", "tiny_med2d", "tiny_unet"])
def test_onnx_matches_torch(fixture, request, tmp_path):
    g, model, emb = request.getfixturevalue(fixture)
    unet = isinstance(emb, dict)
    paths = export_onnx(model, tmp_path, name="m")
    spec = json.loads(paths["spec"].read_text())
    assert spec["decoder"]["outputs"][0] == "low_res_masks"

    image = _image(g).numpy()
    enc = ort.InferenceSession(str(paths["encoder"]), providers=["CPUExecutionProvider"])
    outs = enc.run(None, {"image": np.concatenate([image, image])})  # dynamic batch
    ref = [emb["image_embeddings"], emb["multi_scale_feature"]] if unet else [emb]
    for o, r in zip(outs, ref):
        np.testing.assert_allclose(o[:1], r.numpy(), atol=ATOL)
        np.testing.assert_allclose(o[1:], r.numpy(), atol=ATOL)

    dec = ort.InferenceSession(str(paths["decoder"]), providers=["CPUExecutionProvider"])
    d, size = model.spatial_dims, model.img_size
    rng = np.random.default_rng(0)
    cases = [(1, None, True), (3, None, False)]
    if model.supports_boxes:
        cases.append((1, [size * 0.2] * d + [size * 0.7] * d, True))
    for n, box, with_mask in cases:
        pts = rng.uniform(0, size - 1, (n, d)).astype(np.float32)
        labels = [1, 0, 1][:n]
        coords, labs = decoder_prompt(model, pts, labels, box)
        mask = rng.standard_normal((1, 1) + (model.low_res_size,) * d).astype(np.float32)
        feeds = {"image_embeddings": outs[0][:1], "point_coords": coords, "point_labels": labs,
                 "mask_input": mask, "has_mask_input": np.array([1.0 if with_mask else 0.0], np.float32)}
        if unet:
            feeds["multi_scale_feature"] = outs[1][:1]
        got = dec.run(None, feeds)
        with torch.no_grad():
            low, iou = model.decode(
                emb, points=(torch.from_numpy(pts)[None], torch.tensor([labels])),
                boxes=None if box is None else torch.tensor([box], dtype=torch.float32),
                mask_input=torch.from_numpy(mask) if with_mask else None,
            )
        np.testing.assert_allclose(got[0], low.numpy(), atol=ATOL * max(1.0, float(low.abs().max())))
        if iou is not None:
            np.testing.assert_allclose(got[1], iou.numpy(), atol=ATOL)


def test_decoder_prompt_checks(tiny_med3d):
    _, model, _ = tiny_med3d
    coords, labels = decoder_prompt(model, [[1, 2, 3]], [1])
    assert coords.shape == (1, 2, 3) and labels.tolist() == [[1.0, -1.0]]
    with pytest.raises(PromptError):
        decoder_prompt(model, [[1, 2]], [1])
    with pytest.raises(PromptError):
        decoder_prompt(model, [], [], box=[0, 0, 0, 5, 5, 5])  # SAM-Med3D has no box embeddings


def test_export_onnx_cli(tmp_path, capsys):
    assert main(["export-onnx", "voxprompt-med3d-small", str(tmp_path)]) == 0
    assert (tmp_path / "voxprompt-med3d-small.encoder.onnx").is_file()
    assert (tmp_path / "voxprompt-med3d-small.decoder.onnx").is_file()
    assert "wrote" in capsys.readouterr().out
    assert main(["export-onnx", "no-such-model", str(tmp_path)]) == 2


def test_export_onnx_refuses_random_weights_unless_asked(tmp_path, capsys, monkeypatch):
    """Issue 20, item 2: no --checkpoint and no shipped weights is a usage error, as for ``segment``;
    ``--random-weights`` exports a randomly initialised model on purpose."""
    from voxprompt.models import onnx as onnx_export
    from voxprompt.models.loading import load_model

    out = tmp_path / "out"
    assert main(["export-onnx", "sam-med3d", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--checkpoint" in err and "--random-weights" in err
    assert not out.exists()

    seen = {}

    def fake_export(model, out_dir, name, **kw):
        seen["model"] = model
        return {k: tmp_path / f"{name}.{k}" for k in ("encoder", "decoder", "spec")}

    monkeypatch.setattr(onnx_export, "export_onnx", fake_export)
    assert main(["export-onnx", "voxprompt-med3d-small", str(out), "--random-weights"]) == 0
    shipped = load_model("voxprompt-med3d-small").state_dict()
    assert any(not torch.equal(v, shipped[k]) for k, v in seen["model"].state_dict().items())
    assert main(["export-onnx", "voxprompt-med3d-small", str(out)]) == 0  # the shipped weights
    assert all(torch.equal(v, shipped[k]) for k, v in seen["model"].state_dict().items())
    ckpt = tmp_path / "w.safetensors"
    from voxprompt.models.checkpoints import save_safetensors

    save_safetensors(shipped, ckpt, "voxprompt-med3d-small", load_model("voxprompt-med3d-small").cfg.to_dict())
    assert main(["export-onnx", "voxprompt-med3d-small", str(out), "--checkpoint", str(ckpt),
                 "--random-weights"]) == 2
    assert "--random-weights" in capsys.readouterr().err
