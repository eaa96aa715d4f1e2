"""``load_model`` and ``convert_checkpoint``: zoo name + checkpoint -> ready model."""
from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError, UsageError
from ..runtime import check_device, configure_cpu_threads
from .checkpoints import CheckpointLike, check_compatible, identify, read_checkpoint, save_safetensors
from .config import DEFAULT_MODEL, SamConfig, SamUNetConfig  # noqa: F401  (DEFAULT_MODEL: re-exported)
from .family import family
from .sam import SamModel
from .sam_unet import SamUNet
from .zoo import Config, build_model, get_spec

log = logging.getLogger(__name__)

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
Model = SamModel | SamUNet


def load_model(
    name: str,
    checkpoint: CheckpointLike | None = None,
    device: str | torch.device = "cpu",
    *,
    config: Config | Mapping[str, Any] | None = None,
    trust_pickle: bool = False,
    pretrained: bool = True,
) -> Model:
    """Build the zoo model ``name`` and load ``checkpoint`` strictly; returns it in ``eval()`` mode.

    ``checkpoint`` is ``None`` (the weights shipped with the package when ``name`` has some, see
    :func:`shipped_weights`, else random official initialisation; ``pretrained=False`` forces
    random initialisation), a path (``.pth``/``.pt`` in any
    official layout, or voxprompt ``.safetensors``) or an in-memory state dict. ``config``
    changes the architecture (smaller models of the same family): a config object replaces it, a
    mapping overrides only the keys it names, on top of the named model's zoo config (or of the
    config stored in voxprompt safetensors, which carry their own); the keys are the fields of
    :class:`SamConfig` (``SamUNetConfig``: ``sam``, ``resnet_depth``). ``sam-unet`` picks ResNet-34 or
    -50 from the checkpoint's keys.
    ``trust_pickle=True`` opens legacy pickles that hold Python objects (can run code: only
    for files you trust).
    """
    spec = get_spec(name)
    device = check_device(device)
    if checkpoint is None and pretrained and config is None:
        checkpoint = shipped_weights(name)
    cfg: Config = spec.config
    sd = None
    source = "checkpoint"
    if checkpoint is not None:
        source = str(checkpoint) if not isinstance(checkpoint, Mapping) else "state dict"
        sd, meta = read_checkpoint(checkpoint, trust_pickle=trust_pickle)
        if "config" in meta:
            stored = meta.get("voxprompt_model", name)
            if family(stored) != family(name):
                raise CheckpointError(f"{source} holds a {stored} model, not {name}; use load_model({stored!r}, ...)")
            cfg = _config_from(type(get_spec(stored).config), json.loads(meta["config"]))
        elif family(name) == "sam-unet" and family(identify(sd)) == "sam-unet":
            cfg = get_spec(identify(sd)).config
    if config is not None:
        cfg = config if isinstance(config, (SamConfig, SamUNetConfig)) else _overridden(cfg, config)
    model = build_model(cfg, name=name)
    if sd is not None:
        check_compatible(model, sd, name, source)
        model.load_state_dict(sd, strict=True)
    if device.type == "cpu":
        configure_cpu_threads()  # never more threads than the CPUs this process may use
    return model.to(device).eval()


def shipped_weights(name: str) -> Path | None:
    """Path of the weights shipped in the package for zoo model ``name``, or None."""
    get_spec(name)
    path = WEIGHTS_DIR / f"{name}.safetensors"
    return path if path.is_file() else None


def resolve_checkpoint(name: str, checkpoint: str | None = None) -> str:
    """A command's ``--checkpoint``, or the weights shipped for ``name``; refused when neither exists."""
    path = checkpoint or shipped_weights(name)
    if path is None:
        raise UsageError(f"no weights are shipped for {name}; give a checkpoint with --checkpoint PATH")
    if not Path(path).is_file():
        raise UsageError(f"--checkpoint {path}: no such file")
    return str(path)


def _overridden(base: Config, overrides: Mapping[str, Any]) -> Config:
    """``base`` with the keys of ``overrides`` replaced (a nested ``sam`` mapping key by key too)."""
    merged = base.to_dict()
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            value = {**merged[key], **value}
        merged[key] = value
    return _config_from(type(base), merged)


def _config_from(cls: type, d: Mapping[str, Any]) -> Config:
    try:
        return cls.from_dict(d)
    except TypeError as exc:
        raise UsageError(f"bad {cls.__name__}: {exc}") from None


def convert_checkpoint(
    src: CheckpointLike,
    dst: str | os.PathLike,
    name: str | None = None,
    trust_pickle: bool = False,
    config: Mapping[str, Any] | None = None,
    roi_spacing_mm: float | None = None,
    refine_band_mm: float | None = None,
    multimask_first: bool | None = None,
    flip_ensemble: int | None = None,
) -> tuple[Path, str]:
    """Read any official checkpoint, verify it loads strictly, write voxprompt safetensors.

    ``name`` defaults to the architecture the weights look like. ``roi_spacing_mm`` (3D models)
    sets the inference ROI spacing stored with the weights (what ``Session`` and ``voxprompt
    segment`` use; see ``benchmarks/roi_spacing.py`` to choose it); ``refine_band_mm`` the boundary
    refinement those use by default (0 = off; ``benchmarks/refine_band.py``); ``multimask_first``
    whether their first click chooses among the multimask outputs (only for weights trained for it,
    ``TrainConfig.multimask_first``); ``flip_ensemble`` how many mirror images of each ROI a session
    averages (1 = off). None keeps the stored value. Returns ``(path, name)``."""
    if Path(dst).suffix != ".safetensors":
        raise UsageError(f"output {dst}: the file name must end in .safetensors")
    sd, meta = read_checkpoint(src, trust_pickle=trust_pickle)
    if name is None:
        name = meta.get("voxprompt_model") or identify(sd)
        get_spec(name)  # a description of an unsupported model raises UnknownModelError here
    stored = meta.get("voxprompt_model")
    if stored and family(stored) != family(name):
        raise CheckpointError(f"{src} holds a {stored} model, not {name}; convert it with --model {stored}")
    if config is None and "config" in meta:
        config = json.loads(meta["config"])
    model = load_model(name, sd, config=config)
    cfg = model.cfg.to_dict()
    for key, value, flag in (("roi_spacing_mm", roi_spacing_mm, "--roi-spacing"),
                             ("refine_band_mm", refine_band_mm, "--refine-band"),
                             ("multimask_first", multimask_first, "--multimask-first"),
                             ("flip_ensemble", flip_ensemble, "--flip-ensemble")):
        if value is None:
            continue
        if cfg.get("spatial_dims") != 3:
            raise UsageError(f"{flag}: {name} is not a 3D model (its input is a whole 2D image)")
        cfg = _config_from(type(model.cfg), {**cfg, key: type(cfg[key])(value)}).to_dict()
    path = save_safetensors(model.state_dict(), dst, name, cfg)
    return path, name
