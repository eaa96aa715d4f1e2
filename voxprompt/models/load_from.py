"""SAM-Med2D's ``load_from``: initialise a SAM model of another input size from SAM weights.

The official builder (``segment_anything/build_sam.py``) falls back to it when a SAM ViT-B 1024
checkpoint does not load into the 256 px SAM-Med2D: ``pos_embed`` is resized bilinearly (64 -> 16
tokens), every relative-position table whose length differs (the global blocks': 127 -> 31) is
resized bilinearly, the decoder's ``mask_tokens``, ``output_hypernetworks_mlps`` and
``iou_prediction_head`` are dropped (re-initialised), and whatever the checkpoint lacks (the
adapters) keeps the model's fresh initialisation. Here the tables to resize are picked by shape,
not by the official substring match on block numbers (same result for ViT-B/L/H).
"""
from __future__ import annotations

import logging
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CheckpointError

log = logging.getLogger(__name__)

DROPPED = ("mask_decoder.mask_tokens", "mask_decoder.output_hypernetworks_mlps", "mask_decoder.iou_prediction_head")


def resize_pos_embed(pos: torch.Tensor, grid: int) -> torch.Tensor:
    """``(1, G, G, C)`` -> ``(1, grid, grid, C)``, bilinear (align_corners=False)."""
    x = pos.permute(0, 3, 1, 2).float()
    x = F.interpolate(x, (grid, grid), mode="bilinear", align_corners=False)
    return x.permute(0, 2, 3, 1).to(pos.dtype)


def resize_rel_pos(table: torch.Tensor, length: int) -> torch.Tensor:
    """``(L, C)`` -> ``(length, C)``: bilinear on the (1, 1, L, C) image, as the official code."""
    x = F.interpolate(table[None, None].float(), (length, table.shape[1]), mode="bilinear", align_corners=False)
    return x[0, 0].to(table.dtype)


def load_from(model: nn.Module, sd: Mapping[str, torch.Tensor], drop_decoder_heads: bool = True) -> dict:
    """A full state dict for ``model``: ``sd`` resized where shapes differ (see module doc).

    Keys of ``sd`` the model lacks are ignored; model keys ``sd`` lacks keep the model's current
    values. Returns the dict to pass to ``model.load_state_dict``; logs what was resized / kept.
    """
    own = model.state_dict()
    out = dict(own)
    resized, kept_fresh, ignored = [], [], []
    for key, value in sd.items():
        if key not in own:
            ignored.append(key)
            continue
        if drop_decoder_heads and key.startswith(DROPPED):
            kept_fresh.append(key)
            continue
        target = own[key]
        if value.shape == target.shape:
            out[key] = value.to(target.dtype)
        elif key.endswith("pos_embed") and value.dim() == 4 and target.dim() == 4 and value.shape[3] == target.shape[3]:
            out[key] = resize_pos_embed(value, target.shape[1]).to(target.dtype)
            resized.append(key)
        elif ".rel_pos" in key and value.dim() == 2 and value.shape[1] == target.shape[1]:
            out[key] = resize_rel_pos(value, target.shape[0]).to(target.dtype)
            resized.append(key)
        else:
            raise CheckpointError(f"load_from: {key} has shape {tuple(value.shape)} in the checkpoint and "
                                  f"{tuple(target.shape)} in the model; only pos_embed and rel-pos tables are resized")
    missing = [k for k in own if k not in sd]
    if len(missing) == len(own):
        raise CheckpointError("load_from: the checkpoint shares no key with the model")
    log.info("load_from: %d tensors resized, %d decoder-head tensors and %d missing (e.g. adapter) tensors "
             "initialised fresh, %d checkpoint tensors ignored", len(resized), len(kept_fresh), len(missing),
             len(ignored))
    return out


__all__ = ["DROPPED", "load_from", "resize_pos_embed", "resize_rel_pos"]
