"""Checkpoints: every official format, safe loading, architecture detection, conversion.

Official layouts read here:

* SAM (``sam_vit_b_01ec64.pth``): a plain state dict.
* SAM-Med3D (``sam_med3d_turbo.pth``): ``{'model_state_dict': ..., [epoch, args, ...]}``.
* SAM-Med2D (``sam-med2d_b.pth``) and SAM-UNet: ``{'model': ..., 'optimizer': <pickled object>}``.
* DataParallel/DDP ``module.`` prefixes; voxprompt's own ``.safetensors`` (config in metadata).

Files are opened with ``torch.load(weights_only=True)``, which never runs code from the file.
A file that holds pickled Python objects (SAM-Med2D's optimizer) is refused; converting it once
with ``voxprompt convert CKPT OUT.safetensors --trust-pickle`` opens it with full pickle, which can
run arbitrary code: do that only for files from a source you trust.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import pickle
import re
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError
from .family import family

log = logging.getLogger(__name__)

StateDict = dict[str, torch.Tensor]
CheckpointLike = str | os.PathLike | Mapping[str, Any]
WRAPPER_KEYS = ("model_state_dict", "model", "state_dict")


def read_checkpoint(checkpoint: CheckpointLike, trust_pickle: bool = False) -> tuple[StateDict, dict[str, str]]:
    """Return ``(state_dict, metadata)`` from a path or an in-memory (possibly wrapped) dict.

    ``metadata`` is non-empty only for voxprompt safetensors (keys ``voxprompt_model``, ``config``).
    """
    metadata: dict[str, str] = {}
    if isinstance(checkpoint, Mapping):
        obj: Any = checkpoint
        source = "state dict"
    else:
        path = Path(checkpoint)
        source = str(path)
        if not path.is_file():
            raise CheckpointError(f"checkpoint {path}: no such file")
        if path.suffix == ".safetensors":
            obj, metadata = _read_safetensors(path)
        else:
            obj = _torch_load(path, trust_pickle)
    return unwrap_state_dict(obj, source), metadata


def _read_safetensors(path: Path) -> tuple[StateDict, dict[str, str]]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
            return {k: f.get_tensor(k) for k in f.keys()}, metadata
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {path}: not a readable safetensors file ({exc})") from None


def _torch_load(path: Path, trust_pickle: bool) -> Any:
    if trust_pickle:
        log.warning("opening %s with full pickle (trust_pickle=True): this can run code from the file", path)
        try:
            return torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc:  # noqa: BLE001 - any failure of an untrusted format is a user error
            raise CheckpointError(f"checkpoint {path}: cannot be read ({type(exc).__name__}: {exc})") from None
    try:
        # SAM-Med3D's training script stores its argparse Namespace: a plain attribute bag, safe.
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch's own text advises allow-listing the class (add_safe_globals), which makes every later
        # load of any file trust it: pass on only the class name and our safe conversion path.
        found = re.search(r"GLOBAL\s+([\w.]+)", str(exc))
        what = f" (e.g. {found.group(1)})" if found else ""
        raise CheckpointError(
            f"checkpoint {path} holds pickled Python objects{what} besides the weights, which safe loading "
            "refuses. If you trust its source, convert it once: "
            f"`voxprompt convert {path} OUT.safetensors --trust-pickle` (full pickle can run code from the file)"
        ) from None
    except (RuntimeError, zipfile.BadZipFile, EOFError, OSError, ValueError) as exc:
        raise CheckpointError(
            f"checkpoint {path}: not a readable PyTorch checkpoint (truncated or corrupt? {type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''})"
        ) from None


def unwrap_state_dict(obj: Any, source: str = "checkpoint") -> StateDict:
    """Find the weights in an official checkpoint dict and strip ``module.`` prefixes."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{source}: expected a dict of tensors, got {type(obj).__name__}")
    for key in WRAPPER_KEYS:
        inner = obj.get(key)
        if isinstance(inner, Mapping) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
            obj = inner
            break
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(
            f"{source}: no tensors found (top-level keys: {sorted(map(str, obj))[:8]}); "
            f"expected a state dict or one under {', '.join(WRAPPER_KEYS)}"
        )
    if len(tensors) != len(obj):
        others = sorted(str(k) for k in obj if k not in tensors)
        raise CheckpointError(f"{source}: mixes tensors with other entries {others[:5]}; not a state dict")
    if all(k.startswith("module.") for k in tensors):
        tensors = {k[len("module."):]: v for k, v in tensors.items()}
    return tensors


def identify(sd: Mapping[str, torch.Tensor]) -> str:
    """Name the architecture a state dict looks like (a zoo name or a description)."""
    if "resnet.stage0.0.weight" in sd:
        return "sam-unet" if "resnet.stage1.0.conv3.weight" in sd else "sam-unet-res34"
    patch = sd.get("image_encoder.patch_embed.proj.weight")
    if patch is None:
        return "an unknown architecture (no SAM image encoder keys)"
    embed = patch.shape[0]
    if patch.dim() == 5:
        if embed == 768:
            return "sam-med3d"
        if embed == 192 and patch.shape[-1] == 8:
            return "voxprompt-med3d-small"
        return f"a SAM-Med3D-style 3D model with a {embed}-wide encoder"
    if embed != 768:
        sizes = {1024: "SAM ViT-L", 1280: "SAM ViT-H"}
        return f"{sizes.get(embed, f'a SAM {embed}-wide')} model (not supported)"
    if any(".Adapter." in k for k in sd):
        return "sam-med2d"
    grid = sd["image_encoder.pos_embed"].shape[1] if "image_encoder.pos_embed" in sd else 0
    if grid == 64:
        return "sam-vit-b"
    return f"a SAM ViT-B at {grid * 16} px without adapters"


def _looks_like(looks: str) -> str:
    """'it looks like ...' for a zoo name ('a sam-vit-b checkpoint') or a description from :func:`identify`
    (which may carry its own article: 'a SAM-Med3D-style 3D model ...', 'an unknown architecture ...')."""
    if " " not in looks:
        return f"it looks like a {looks} checkpoint"
    return f"it looks like {looks if looks.startswith(('a ', 'an ')) else 'a ' + looks}"


def check_compatible(model: torch.nn.Module, sd: Mapping[str, torch.Tensor], name: str, source: str) -> None:
    """Strict key and shape check with a readable error before ``load_state_dict``."""
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shapes = [f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in sd and sd[k].shape != own[k].shape]
    if not (missing or unexpected or shapes):
        return
    looks = identify(sd)
    parts = [f"{source} does not fit {name}"]
    if family(looks) != family(name):
        parts.append(_looks_like(looks))
    else:
        parts.append(f"detected architecture: {looks} (another configuration of it?)")
    for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)):
        if items:
            more = f" and {len(items) - 5} more" if len(items) > 5 else ""
            parts.append(f"{len(items)} {label}: {', '.join(items[:5])}{more}")
    raise CheckpointError("; ".join(parts))


def save_safetensors(sd: Mapping[str, torch.Tensor], path: str | os.PathLike, name: str,
                     config: Mapping[str, Any] | None = None) -> Path:
    """Write a state dict as safetensors with voxprompt metadata, atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise CheckpointError(f"output {path}: the file name must end in .safetensors")
    meta = {"voxprompt_model": name, "format": "voxprompt-1"}
    if config is not None:
        meta["config"] = json.dumps(dict(config))
    tensors = {k: v.detach().contiguous().cpu() for k, v in sd.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=meta)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the usual file mode
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
