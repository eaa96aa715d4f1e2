"""Which parameters a fine-tuning run trains: name prefixes, or a preset per model family.

Presets (``freeze:`` in the training config):

* ``paper``: what each paper trains. SAM-Med2D: adapters + prompt encoder + mask decoder (the ViT
  without its adapters is frozen). SAM-UNet: everything but the SAM ViT (ResNet branch,
  reshapers, bridges, fusion decoder, prompt encoder). SAM ViT-B: the mask decoder (as
  MedSAM-style decoder fine-tuning). SAM-Med3D: everything.
* ``decoder``: the mask decoder only. ``fine``: the boundary head only (``fine_channels``; the
  rest keeps the weights it grew from). ``none``: every parameter (SAM-UNet's ViT included).

A list of prefixes freezes the parameters whose names start with one of them and leaves the
others as the model has them (SAM-UNet's ViT is frozen by construction).
"""
from __future__ import annotations

from collections.abc import Callable

from torch import nn

from ..errors import UsageError

PRESETS = ("paper", "decoder", "fine", "none")
Rule = Callable[[str], bool]  # parameter name -> trainable


def preset_rule(model: nn.Module, preset: str) -> Rule:
    """The trainable-or-not rule of a preset for this model."""
    from ..models.family import model_family

    fam = model_family(model)
    if preset == "none":
        return lambda name: True
    if preset == "decoder":
        return lambda name: name.startswith("mask_decoder.")
    if preset == "fine":
        return lambda name: name.startswith(("image_encoder.fine_stem.", "mask_decoder.fine_head."))
    if preset != "paper":
        raise UsageError(f"freeze preset {preset!r}: choose one of {PRESETS} or give a list of name prefixes")
    if fam == "sam-med2d" or (fam == "sam-vit-b" and getattr(model.cfg, "adapter", False)):  # adapters train
        return lambda name: ".Adapter." in name or not name.startswith("image_encoder.")
    if fam == "sam-unet":
        return lambda name: not name.startswith("image_encoder.")
    if fam == "sam-vit-b":
        return lambda name: name.startswith("mask_decoder.")
    return lambda name: True


def apply_freeze(model: nn.Module, spec: str | list | tuple) -> None:
    """Set ``requires_grad`` per ``spec`` (a preset name or a list of frozen name prefixes)."""
    if isinstance(spec, str):
        rule = preset_rule(model, spec)
        for name, p in model.named_parameters():
            p.requires_grad_(rule(name))
    elif isinstance(spec, (list, tuple)):
        prefixes = [str(s) for s in spec]
        for name, p in model.named_parameters():
            if any(name.startswith(prefix) for prefix in prefixes):
                p.requires_grad_(False)
    else:
        raise UsageError(f"freeze must be a preset ({', '.join(PRESETS)}) or a list of prefixes, got {spec!r}")
    if not any(p.requires_grad for p in model.parameters()):
        what = f"preset {spec!r}" if isinstance(spec, str) else f"prefixes {list(spec)}"
        raise UsageError(f"freeze {what} freeze every parameter")


__all__ = ["PRESETS", "apply_freeze", "preset_rule"]
