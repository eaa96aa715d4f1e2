"""The promptable model: image encoder + prompt encoder + mask decoder, stateless.

``encode`` takes exactly what the official image encoder takes (normalised, padded); ``decode``
returns the official decoder output unchanged (raw low-res logits and IoU, no selection, sigmoid
or upsampling). Per-user state (cached embeddings, previous logits) lives in a Session.
"""
from __future__ import annotations

import contextlib
import copy
import math
from contextlib import AbstractContextManager
from typing import Any

import torch
from torch import nn

from ..errors import InputError, PromptError, UsageError
from .common import MLPBlock, token_major
from .config import SamConfig
from .fast import reference_enabled
from .fast.channels_last import PatchSequential, run_patch_layout_supported
from .image_encoder import Block, ImageEncoder
from .mask_decoder import MaskDecoder
from .prompt_encoder import PromptEncoder
from .transformer import Attention

Points = tuple[torch.Tensor, torch.Tensor] | None
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class PromptableModel(nn.Module):
    """Shared input checks of every model (``encode``/``decode`` arguments)."""

    name: str = "model"
    spatial_dims: int
    img_size: int
    in_chans: int
    low_res_size: int
    supports_boxes: bool
    amp_dtype: torch.dtype | None = None  # runtime setting (set_precision), not in checkpoints

    def set_precision(self, precision: str) -> PromptableModel:
        """Run ``encode``/``decode`` under autocast: ``fp32`` (default, exact), ``bf16`` or ``fp16``
        (GPU); on CPU, bf16 decoding is mixed (:meth:`low_precision`). Outputs stay float32.
        Returns the model."""
        if precision not in PRECISIONS:
            raise UsageError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
        self.amp_dtype = PRECISIONS[precision]
        return self

    def autocast(self) -> AbstractContextManager[Any]:
        """The autocast context of ``encode``/``decode`` (a no-op in fp32)."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self._device_dtype()[0].type, dtype=self.amp_dtype)

    def low_precision(self, module: nn.Module) -> nn.Module:
        """``module`` itself, or, for bf16/fp16 inference (autograd off), a cached copy whose
        weights are stored in that dtype, so that they are not cast again on every call (on a
        2-core CPU the casts cost as much as the decoder's bf16 GEMMs save). The copy is not part
        of the model (no state-dict keys) and is rebuilt whenever a parameter of ``module``
        changes in place or moves (``load_state_dict``, an optimizer step, ``.to()``); the check
        reads the parameters it recorded, so it costs ~20 us per call, not a module walk
        (assigning a new ``nn.Parameter`` object to a submodule is not tracked).

        On GPU, and for fp16, every linear and convolution weight is cast and the copy runs under
        autocast: its output equals plain autocast's. On CPU, bf16 is *mixed* (:meth:`mixed_cpu`):
        only the large GEMMs run in bf16 -- the token MLPs and the mask upscaler (weights stored
        in bf16) and the image-side products of the cross-attentions -- and the rest in float32,
        without autocast: bf16 elementwise work and small-GEMM casts are slower than float32
        there."""
        if self.amp_dtype is None or torch.is_grad_enabled():
            return module
        mixed = self.mixed_cpu()
        cache: dict[int, tuple[Any, list, Any, nn.Module]] = self.__dict__.setdefault("_low_precision", {})
        hit = cache.get(id(module))
        if hit is not None and hit[0] == (self.amp_dtype, mixed) and _param_state(hit[1]) == hit[2]:
            return hit[3]
        params = list(module.parameters())
        with torch.inference_mode(False), torch.no_grad():
            shadow = copy.deepcopy(module)
            if mixed:
                _mix_precision(shadow, self.amp_dtype)
            else:
                for dst in shadow.modules():
                    if isinstance(dst, _WEIGHT_CAST):
                        dst.weight = nn.Parameter(dst.weight.to(self.amp_dtype), requires_grad=False)
        for src, dst in zip(module.modules(), shadow.modules()):
            if getattr(src, "_compiled_call_impl", None) is not None:  # a copy would call the original
                dst._compiled_call_impl = None
                dst.compile(**getattr(src, "_voxprompt_compile", {}))
        cache[id(module)] = ((self.amp_dtype, mixed), params, _param_state(params), shadow)
        return shadow

    def mixed_cpu(self) -> bool:
        """True when decoding runs mixed precision instead of autocast: bf16 on CPU, autograd off,
        fast paths (see :meth:`low_precision`)."""
        return (self.amp_dtype == torch.bfloat16 and not torch.is_grad_enabled() and not reference_enabled()
                and self._device_dtype()[0].type == "cpu")

    def decode_autocast(self) -> AbstractContextManager[Any]:
        """The context of the decoder: :meth:`autocast`, or none when decoding is mixed."""
        return contextlib.nullcontext() if self.mixed_cpu() else self.autocast()

    def compile_decoder(self, mode: str | None = None, dynamic: bool | None = None) -> PromptableModel:
        """``torch.compile`` the mask decoder in place (state-dict keys unchanged). ``mode``
        defaults to ``reduce-overhead`` (CUDA graphs) on GPU, ``default`` elsewhere. The compiled
        decoder always takes the fast paths.

        ``dynamic=None`` (automatic dynamic shapes): the first new prompt count compiles once more,
        shape-generic, and later counts reuse that graph (CUDA graphs record one replay per shape,
        cheaply). ``dynamic=False`` compiles every prompt count anew -- seconds on each click that
        adds a point, until torch's recompile limit falls back to eager."""
        if mode is None:
            mode = "reduce-overhead" if self._device_dtype()[0].type == "cuda" else "default"
        _compile(self.mask_decoder, mode, dynamic)
        return self

    def compile_encoder(self, mode: str | None = None) -> PromptableModel:
        """``torch.compile`` every ViT block in place (as :meth:`compile_decoder`; on GPU,
        ``reduce-overhead`` removes the launch overhead of the many small per-block kernels)."""
        if mode is None:
            mode = "reduce-overhead" if self._device_dtype()[0].type == "cuda" else "default"
        for module in self.modules():
            if isinstance(module, Block):
                _compile(module, mode)
        return self

    def _device_dtype(self) -> tuple[torch.device, torch.dtype]:
        p = next(self.parameters())
        return p.device, p.dtype

    def check_image(self, image: Any) -> torch.Tensor:
        """Validate an encoder input and move it to the model's device and dtype."""
        expected = ("B", self.in_chans) + (self.img_size,) * self.spatial_dims
        if not isinstance(image, torch.Tensor):
            raise InputError(f"{self.name}: image must be a torch.Tensor of shape {expected}, "
                             f"got {type(image).__name__}")
        if image.dim() != 2 + self.spatial_dims or tuple(image.shape[1:]) != expected[1:] or image.shape[0] < 1:
            raise InputError(
                f"{self.name}: image must have shape {expected} (normalised and padded), got {tuple(image.shape)}"
            )
        if not image.is_floating_point():
            raise InputError(f"{self.name}: image must be a floating-point tensor, got {image.dtype}")
        if not torch.isfinite(image).all():
            raise InputError(f"{self.name}: image contains NaN or infinite values")
        device, dtype = self._device_dtype()
        return image.to(device=device, dtype=dtype)

    def check_prompts(
        self,
        batch: int,
        points: Points,
        boxes: torch.Tensor | None,
        mask_input: torch.Tensor | None,
    ) -> tuple[Points, torch.Tensor | None, torch.Tensor | None]:
        """Validate prompts against an embedding batch; returns them on the model's device."""
        device, dtype = self._device_dtype()
        d, size = self.spatial_dims, float(self.img_size)
        rows: set[int] = set()
        if points is not None:
            if not isinstance(points, (tuple, list)) or len(points) != 2:
                raise PromptError(f"{self.name}: points must be a (coords, labels) pair")
            coords, labels = (torch.as_tensor(t) for t in points)
            if coords.dim() != 3 or coords.shape[2] != d or coords.shape[1] < 1:
                raise PromptError(f"{self.name}: point coords must have shape (B, N, {d}), got {tuple(coords.shape)}")
            if tuple(labels.shape) != tuple(coords.shape[:2]):
                raise PromptError(
                    f"{self.name}: point labels shape {tuple(labels.shape)} does not match coords {tuple(coords.shape)}"
                )
            if labels.is_floating_point():
                if not torch.equal(labels, labels.round()):
                    raise PromptError(f"{self.name}: point labels must be integers (1 positive, 0 negative)")
                labels = labels.long()
            lo, hi = _min_max(labels)
            if lo < -1 or hi > 1:
                raise PromptError(f"{self.name}: point labels must be 1 (positive), 0 (negative) or -1 (padding)")
            coords = coords.to(device=device, dtype=torch.float32)
            _check_range(self.name, "point", coords, size)
            rows.add(coords.shape[0])
            points = (coords, labels.to(device=device, dtype=torch.int64))
        if boxes is not None:
            if not self.supports_boxes:
                raise PromptError(f"{self.name}: this model was not trained with box prompts; use points")
            boxes = torch.as_tensor(boxes).to(device=device, dtype=torch.float32)
            if boxes.dim() == 3 and boxes.shape[1] == 1:
                boxes = boxes[:, 0]
            if boxes.dim() != 2 or boxes.shape[1] != 2 * d:
                raise PromptError(f"{self.name}: boxes must have shape (B, {2 * d}), got {tuple(boxes.shape)}")
            _check_range(self.name, "box", boxes.view(boxes.shape[0], 2, d), size)
            if (boxes[:, d:] < boxes[:, :d]).any():
                raise PromptError(f"{self.name}: box corners must be ordered (low corner first), got {boxes.tolist()}")
            rows.add(boxes.shape[0])
        if mask_input is not None:
            mask_input = torch.as_tensor(mask_input)
            expected = (1,) + (self.low_res_size,) * d
            if mask_input.dim() != 2 + d or tuple(mask_input.shape[1:]) != expected:
                raise PromptError(
                    f"{self.name}: mask_input must have shape (B, {', '.join(map(str, expected))}) "
                    f"(raw low-res logits), got {tuple(mask_input.shape)}"
                )
            if not all(math.isfinite(v) for v in _min_max(mask_input)):
                raise PromptError(f"{self.name}: mask_input contains NaN or infinite values")
            mask_input = mask_input.to(device=device, dtype=dtype)
            rows.add(mask_input.shape[0])
        if len(rows) > 1:
            raise PromptError(f"{self.name}: points, boxes and mask_input have different batch sizes {sorted(rows)}")
        prompt_rows = rows.pop() if rows else batch
        if batch not in (1, prompt_rows):
            raise PromptError(
                f"{self.name}: {prompt_rows} prompt rows for {batch} image embeddings; give one row per "
                "embedding, or a single embedding for several prompt rows"
            )
        return points, boxes, mask_input


_WEIGHT_CAST = (nn.Linear, nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def _mix_precision(module: nn.Module, dtype: torch.dtype) -> None:
    """CPU mixed precision in place: token MLPs and kernel==stride upscalers get ``dtype`` weights
    and biases (their GEMMs run in it), attentions run their image-side GEMMs in ``dtype`` with
    float32 weights; everything else stays float32."""
    for m in module.modules():
        if isinstance(m, (Attention, MLPBlock)):
            m.gemm_dtype = dtype
        if isinstance(m, MLPBlock) or (isinstance(m, PatchSequential) and run_patch_layout_supported(m)):
            for layer in m.modules():
                if isinstance(layer, _WEIGHT_CAST):
                    for name, p in list(layer.named_parameters(recurse=False)):
                        setattr(layer, name, nn.Parameter(p.to(dtype), requires_grad=False))


def _param_state(params: list) -> list:
    """Storage and version counter of each parameter (inference tensors have no counter)."""
    return [(p.data_ptr(), -1 if p.is_inference() else p._version) for p in params]


def _compile(module: nn.Module, mode: str, dynamic: bool | None = False) -> None:
    """``module.compile`` in place, remembering the settings (for :meth:`low_precision` copies)."""
    module._voxprompt_compile = {"mode": mode, "dynamic": dynamic}
    module.compile(mode=mode, dynamic=dynamic)


def _min_max(t: torch.Tensor) -> tuple[float, float]:
    """Smallest and largest entry in one pass (NaN if any entry is NaN); (0, 0) when empty."""
    if t.numel() == 0:
        return 0.0, 0.0
    lo, hi = torch.stack(torch.aminmax(t)).tolist()
    return lo, hi


def _check_range(name: str, what: str, coords: torch.Tensor, size: float) -> None:
    lo, hi = _min_max(coords)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise PromptError(f"{name}: {what} coordinates contain NaN or infinite values")
    if lo < 0 or hi > size:
        raise PromptError(
            f"{name}: {what} coordinates must lie in [0, {size:g}] (the network-input frame), "
            f"got range [{lo:g}, {hi:g}]"
        )


class SamModel(PromptableModel):
    """SAM ViT-B, SAM-Med2D and SAM-Med3D (and smaller configs of them)."""

    def __init__(self, cfg: SamConfig, name: str = "sam") -> None:
        super().__init__()
        self.cfg = cfg
        self.name = name
        self.spatial_dims = cfg.spatial_dims
        self.img_size = cfg.img_size
        self.in_chans = cfg.in_chans
        self.low_res_size = cfg.low_res_size
        self.supports_boxes = cfg.supports_boxes
        self.image_encoder = ImageEncoder(cfg)
        self.prompt_encoder = PromptEncoder(cfg)
        self.mask_decoder = MaskDecoder(cfg)

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        """``(B, C, *S)`` normalised, padded input -> image embedding ``(B, C_emb, *grid)``."""
        image = self.check_image(image)
        with self.autocast():
            emb = self.image_encoder(image)
        emb = emb.float() if self.amp_dtype is not None else emb
        return emb if reference_enabled() else token_major(emb)

    def decode(
        self,
        emb: torch.Tensor,
        points: Points = None,
        boxes: torch.Tensor | None = None,
        mask_input: torch.Tensor | None = None,
        multimask: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw low-res logits ``(B, M, *low_res)`` and IoU ``(B, M)``; M = 1, or 3 with multimask."""
        emb = self._check_embedding(emb)
        points, boxes, mask_input = self.check_prompts(emb.shape[0], points, boxes, mask_input)
        fine = None
        if self.cfg.fine_channels:
            emb, fine = self.mask_decoder.split(emb)
            if emb.requires_grad and not self._vit_trains():
                # only the boundary head's features need a gradient: without the cut, the whole
                # decoder would run backwards for the frozen ViT's part of the embedding
                emb = emb.detach()
        with self.decode_autocast():
            sparse, dense = self.prompt_encoder(points=points, boxes=boxes, masks=mask_input)
            low, iou = self.low_precision(self.mask_decoder)(
                image_embeddings=emb,
                image_pe=self.prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=multimask,
                fine=fine,
            )
        if self.amp_dtype is not None:
            return low.float(), iou.float()
        return low, iou

    def forward(self, image: torch.Tensor, **prompts: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode then decode (training and export)."""
        return self.decode(self.encode(image), **prompts)

    def _vit_trains(self) -> bool:
        """Whether a parameter of the image encoder outside the boundary head's stem needs a gradient."""
        return any(p.requires_grad for n, p in self.image_encoder.named_parameters() if not n.startswith("fine_stem."))

    def _check_embedding(self, emb: torch.Tensor | Any) -> torch.Tensor:
        expected = (self.cfg.embedding_channels,) + (self.cfg.grid_size,) * self.spatial_dims
        if not isinstance(emb, torch.Tensor) or emb.dim() != 2 + self.spatial_dims or tuple(emb.shape[1:]) != expected:
            got = tuple(emb.shape) if isinstance(emb, torch.Tensor) else type(emb).__name__
            raise InputError(f"{self.name}: embedding must have shape (B, {', '.join(map(str, expected))}), got {got}")
        return emb
