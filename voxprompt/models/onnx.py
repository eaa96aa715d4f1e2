"""ONNX export of a model's image encoder and its prompt decoder (prompt encoder + mask decoder).

Encoder ``NAME.encoder.onnx``: ``image`` ``(B, C, *S)`` (normalised, padded, as ``encode``) ->
``image_embeddings`` (and ``multi_scale_feature`` for SAM-UNet); the batch is dynamic.

Decoder ``NAME.decoder.onnx`` (batch 1, any number of points), SAM's ONNX convention:

* ``image_embeddings`` (and ``multi_scale_feature`` for SAM-UNet), as the encoder returns them;
* ``point_coords`` ``(1, N, d)`` float32, network-input frame, coordinate order as ``decode``;
* ``point_labels`` ``(1, N)`` float32: 1 positive, 0 negative, -1 padding, 2 / 3 the low / high box
  corner (models with boxes). Exactly like ``decode``, a prompt without a box ends with one
  padding point ``(0, .., 0)`` labelled -1: :func:`decoder_prompt` builds these arrays;
* ``mask_input`` ``(1, 1, *low_res)`` previous low-res logits and ``has_mask_input`` ``(1,)``
  (1 uses ``mask_input``, 0 the learned no-mask embedding);
* outputs ``low_res_masks`` ``(1, M, *low_res)`` and ``iou_predictions`` ``(1, M)`` (no IoU for
  SAM-UNet); M = 1, or 3 when exported with ``multimask``.

The graphs are traced from the exact fast paths (TorchScript exporter, ``dynamo=False``, which
needs only the ``onnx`` package).
"""
from __future__ import annotations

import copy
import json
import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import PromptError, UsageError
from .prompt_encoder import PromptEncoder
from .sam import SamModel
from .sam_unet import SamUNet

log = logging.getLogger(__name__)
OPSET = 17
Model = SamModel | SamUNet


def _require_onnx() -> None:
    try:
        import onnx  # noqa: F401
    except ImportError:  # pragma: no cover - depends on the environment
        raise UsageError("ONNX export needs the 'onnx' package: pip install voxprompt[onnx]") from None


class EncoderGraph(nn.Module):
    """``encode`` without the input checks."""

    def __init__(self, model: Model) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> Any:
        if isinstance(self.model, SamUNet):
            out = self.model._encode(image)
            return out["image_embeddings"], out["multi_scale_feature"]
        return self.model.image_encoder(image)


def embed_prompts(pe: PromptEncoder, coords: torch.Tensor, labels: torch.Tensor,
                  mask_input: torch.Tensor, has_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The prompt encoder with labelled points (box corners as labels 2 / 3) and a mask switch,
    written without data-dependent indexing; equal to ``PromptEncoder.forward``."""
    emb = pe.pe_layer.forward_with_coords(coords + 0.5, pe.input_image_size)
    lab = labels.unsqueeze(-1)
    emb = torch.where(lab == -1, torch.zeros_like(emb), emb)
    emb = emb + (lab == -1).to(emb.dtype) * pe.not_a_point_embed.weight
    for i, table in enumerate(pe.point_embeddings):
        emb = emb + (lab == i).to(emb.dtype) * table.weight
    shape = (1, -1) + (1,) * pe.spatial_dims
    no_mask = pe.no_mask_embed.weight.reshape(shape)
    h = has_mask.reshape((-1,) + (1,) * (pe.spatial_dims + 1))
    dense = h * pe.downscale_mask(mask_input) + (1 - h) * no_mask
    return emb, dense


class DecoderGraph(nn.Module):
    """Prompt encoder + mask decoder of one image embedding."""

    def __init__(self, model: Model, multimask: bool = False) -> None:
        super().__init__()
        self.model = model
        self.multimask = multimask

    def forward(self, image_embeddings: torch.Tensor, *args: torch.Tensor) -> Any:
        m = self.model
        if isinstance(m, SamUNet):
            msf, coords, labels, mask_input, has_mask = args
            sparse, dense = embed_prompts(m.prompts, coords, labels, mask_input, has_mask)
            return m.mask_decoder(image_embeddings, m.prompts.get_dense_pe(), sparse, dense, msf)
        coords, labels, mask_input, has_mask = args
        pe = m.prompt_encoder
        sparse, dense = embed_prompts(pe, coords, labels, mask_input, has_mask)
        return m.mask_decoder(image_embeddings, pe.get_dense_pe(), sparse, dense, multimask_output=self.multimask)


def decoder_prompt(model: Model, points: Sequence[Sequence[float]] | None = None,
                   labels: Sequence[int] | None = None, box: Sequence[float] | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
    """``point_coords`` ``(1, N, d)`` and ``point_labels`` ``(1, N)`` for the decoder graph,
    as ``decode(points=..., boxes=...)`` would embed them."""
    d = model.spatial_dims
    pts = [list(map(float, p)) for p in ([] if points is None else points)]
    labs = [float(v) for v in ([] if labels is None else labels)]
    if len(pts) != len(labs) or any(len(p) != d for p in pts):
        raise PromptError(f"points must be {d}-D and match labels one to one")
    if box is not None:
        if not model.supports_boxes:
            raise PromptError(f"{model.name}: this model was not trained with box prompts")
        pts += [list(map(float, box[:d])), list(map(float, box[d:]))]
        labs += [2.0, 3.0]
    else:
        pts.append([0.0] * d)
        labs.append(-1.0)
    return np.asarray([pts], dtype=np.float32), np.asarray([labs], dtype=np.float32)


def _example_inputs(model: Model) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    d, device = model.spatial_dims, next(model.parameters()).device
    image = torch.zeros(1, model.in_chans, *([model.img_size] * d), device=device)
    with torch.no_grad():
        emb = EncoderGraph(model)(image)
    coords = torch.full((1, 2, d), model.img_size / 2, device=device)
    labels = torch.tensor([[1.0, -1.0]], device=device)
    mask = torch.zeros(1, 1, *([model.low_res_size] * d), device=device)
    has_mask = torch.ones(1, device=device)
    embs = emb if isinstance(emb, tuple) else (emb,)
    return image, (*embs, coords, labels, mask, has_mask)


def export_onnx(model: Model, out_dir: str | Path, name: str | None = None,
                multimask: bool = False, opset: int = OPSET) -> dict[str, Path]:
    """Write ``NAME.encoder.onnx``, ``NAME.decoder.onnx`` and ``NAME.onnx.json`` (input / output
    names and sizes) into ``out_dir``; returns their paths."""
    _require_onnx()
    name = name or model.name
    if multimask and isinstance(model, SamUNet):
        raise UsageError(f"{name}: SAM-UNet predicts a single mask; export without --multimask")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = copy.deepcopy(model).eval()  # tracing must not touch the caller's model or its caches
    unet = isinstance(model, SamUNet)
    image, dec_inputs = _example_inputs(model)
    emb_names = ["image_embeddings", "multi_scale_feature"] if unet else ["image_embeddings"]
    dec_names = emb_names + ["point_coords", "point_labels", "mask_input", "has_mask_input"]
    dec_out = ["low_res_masks"] if unet else ["low_res_masks", "iou_predictions"]
    paths = {"encoder": out / f"{name}.encoder.onnx", "decoder": out / f"{name}.decoder.onnx",
             "spec": out / f"{name}.onnx.json"}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about Python ints taken from shapes
        torch.onnx.export(
            EncoderGraph(model), (image,), str(paths["encoder"]), input_names=["image"], output_names=emb_names,
            dynamic_axes={"image": {0: "batch"}, **{n: {0: "batch"} for n in emb_names}},
            opset_version=opset, dynamo=False,
        )
        log.info("wrote %s", paths["encoder"])
        torch.onnx.export(
            DecoderGraph(model, multimask), dec_inputs, str(paths["decoder"]), input_names=dec_names,
            output_names=dec_out, dynamic_axes={"point_coords": {1: "num_points"}, "point_labels": {1: "num_points"}},
            opset_version=opset, dynamo=False,
        )
        log.info("wrote %s", paths["decoder"])
    spec = {
        "model": name,
        "spatial_dims": model.spatial_dims,
        "img_size": model.img_size,
        "in_chans": model.in_chans,
        "low_res_size": model.low_res_size,
        "supports_boxes": model.supports_boxes,
        "multimask": multimask,
        "opset": opset,
        "encoder": {"inputs": ["image"], "outputs": emb_names},
        "decoder": {"inputs": dec_names, "outputs": dec_out},
        "point_labels": {"1": "positive", "0": "negative", "-1": "padding (end of a prompt without box)",
                         "2": "box low corner", "3": "box high corner"},
    }
    paths["spec"].write_text(json.dumps(spec, indent=1))
    return paths
