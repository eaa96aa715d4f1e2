"""The training loop: AdamW, warm-up + cosine, autocast, gradient accumulation, optional EMA,
exact resume, and data-parallel training under ``torchrun`` (DDP; gloo on CPU, nccl on GPU).

Exact resume: every batch is a pure function of ``(seed, step, rank, micro-batch)`` and the
learning rate a pure function of the step, so ``N`` steps equal ``N/2`` steps + resume + ``N/2``
steps bit for bit on CPU. A checkpoint is a folder ``checkpoints/step_XXXXXXX`` holding
``model.safetensors`` (voxprompt format, loadable by ``load_model``) and ``state.pt``
(optimizer, EMA, step; tensors and plain types only, read with ``weights_only=True``).
"""
from __future__ import annotations

import contextlib
import csv
import json
import logging
import math
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import load_file
from tqdm import tqdm

from ..errors import CheckpointError, UsageError
from ..models.checkpoints import save_safetensors
from ..models.loading import load_model, shipped_weights
from ..runtime import Dist
from .config import TrainConfig
from .freeze import apply_freeze
from .interaction import ClickLoop
from .samples import SampleMixer

log = logging.getLogger(__name__)


def lr_at(cfg: TrainConfig, step: int) -> float:
    """Linear warm-up to ``lr``, then cosine decay to ``lr * min_lr_ratio`` at ``steps``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    t = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + (cfg.lr - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


def build_model(cfg: TrainConfig, device: torch.device) -> torch.nn.Module:
    """The model to train: zoo architecture (+ overrides), optionally initialised from weights."""
    torch.manual_seed(cfg.seed)
    init = cfg.init_checkpoint
    if init == "shipped":
        init = shipped_weights(cfg.model)
        if init is None:
            raise UsageError(f"init_checkpoint: shipped, but no weights are shipped for {cfg.model}")
    if cfg.init_mode == "load_from":  # SAM-Med2D: SAM weights of another input size, resized
        from ..models.checkpoints import read_checkpoint
        from ..models.load_from import load_from

        model = load_model(cfg.model, None, device=device, config=_config(cfg), pretrained=False)
        sd, _ = read_checkpoint(init, trust_pickle=cfg.trust_pickle)
        model.load_state_dict(load_from(model, sd), strict=True)
    elif cfg.init_mode == "grow":
        from ..models.checkpoints import read_checkpoint

        model = load_model(cfg.model, None, device=device, config=_config(cfg), pretrained=False)
        sd, _ = read_checkpoint(init, trust_pickle=cfg.trust_pickle)
        grow(model, sd, str(init))
    else:
        model = load_model(cfg.model, init, device=device, config=_config(cfg), trust_pickle=cfg.trust_pickle,
                           pretrained=False)
    if cfg.multimask_warm_start:
        warm_start_multimask(model)
    apply_freeze(model, cfg.freeze)
    return model.train()


def warm_start_multimask(model: torch.nn.Module, noise: float = 0.05) -> None:
    """Copy the single-mask token (0), its hypernetwork and its IoU output into the multimask tokens,
    plus a little noise (``noise`` x the token's std) so that the best-of loss tells them apart: a
    model trained on one output gets hypotheses that start where it is good (a resumed run overwrites
    this)."""
    dec = model.mask_decoder
    gen = torch.Generator().manual_seed(0)
    iou_out = dec.iou_prediction_head.layers[-1]
    with torch.no_grad():
        token = dec.mask_tokens.weight
        for k in range(1, dec.num_mask_tokens):
            jitter = torch.randn(token.shape[1], generator=gen).to(token) * noise * float(token[0].std())
            token[k] = token[0] + jitter
            dec.output_hypernetworks_mlps[k].load_state_dict(dec.output_hypernetworks_mlps[0].state_dict())
            iou_out.weight[k] = iou_out.weight[0]
            iou_out.bias[k] = iou_out.bias[0]
    log.info("multimask tokens 1..%d start from token 0", dec.num_mask_tokens - 1)


def grow(model: torch.nn.Module, sd: dict, source: str) -> None:
    """Load ``sd`` into a larger ``model``: every tensor of ``sd`` must match one of the model's
    exactly; the model's extra parameters (new modules) keep their initialisation."""
    own = model.state_dict()
    unknown = sorted(k for k in sd if k not in own)
    wrong = sorted(k for k in sd if k in own and tuple(sd[k].shape) != tuple(own[k].shape))
    if unknown or wrong:
        raise CheckpointError(f"{source} cannot grow into this model: unknown keys {unknown[:5]}, "
                              f"shape mismatches {wrong[:5]}")
    missing = sorted(set(own) - set(sd))
    model.load_state_dict(sd, strict=False)
    log.info("grown from %s: %d new tensors keep their initialisation (%s ...)", source, len(missing), missing[:3])


def _is_2d(model: torch.nn.Module) -> bool:
    return model.spatial_dims == 2


def _loop_and_mixer(cfg: TrainConfig, model: torch.nn.Module) -> tuple[torch.nn.Module, Any]:
    """The interaction loop and sample source: 3D ROIs and clicks, or 2D slices/images and SAM-Med2D's prompts."""
    if not _is_2d(model):
        loop = ClickLoop(model, cfg.click_steps, cfg.click_mode, cfg.loss, cfg.iou_loss_weight,
                         cfg.mask_prior_prob, cfg.multimask_first, cfg.first_click_weight, cfg.box_prob)
        mixer = SampleMixer(cfg.data, cfg.synthetic, cfg.augment, model.img_size, float(model.cfg.roi_spacing_mm))
        return loop, mixer
    from ..models.family import policy_for
    from .interaction2d import ClickLoop2D
    from .samples2d import SampleMixer2D

    policy = policy_for(model, cfg.train2d.channel_order)
    loop = ClickLoop2D(model, policy, cfg.train2d, cfg.click_steps, cfg.loss, cfg.iou_loss_weight)
    return loop, SampleMixer2D(cfg.data, cfg.synthetic, cfg.augment, cfg.train2d, policy)


def _config(cfg: TrainConfig) -> dict | None:
    if not cfg.model_overrides:
        return None
    from ..models.zoo import get_spec

    base = get_spec(cfg.model).config.to_dict()
    unknown = sorted(set(cfg.model_overrides) - set(base))
    if unknown:
        raise UsageError(f"model_overrides: unknown key(s) {unknown} for {cfg.model}")
    return {**base, **cfg.model_overrides}


class Trainer:
    """One training run in ``cfg.out_dir`` (resumable)."""

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        self.env = Dist.from_env()
        self.rank, self.world = self.env.rank, self.env.world
        if cfg.num_threads > 0:
            torch.set_num_threads(cfg.num_threads)
        self.device = self._setup_device()
        self.out = Path(cfg.out_dir)
        self.model = build_model(cfg, self.device)
        self.loop, self.mixer = _loop_and_mixer(cfg, self.model)
        self.ddp: Any = self.loop
        if self.world > 1:
            self.ddp = torch.nn.parallel.DistributedDataParallel(
                self.loop, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=True)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(self.params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.999))
        self.ema = ({k: v.detach().clone().float() for k, v in self.model.state_dict().items()}
                    if cfg.ema > 0 else None)
        self.scaler = torch.amp.GradScaler(enabled=cfg.amp == "fp16" and self.device.type == "cuda")
        self.step = 0

    def _setup_device(self) -> torch.device:
        dev = torch.device(self.cfg.device)
        if dev.type == "cuda":
            if not torch.cuda.is_available():
                raise UsageError("device cuda requested but CUDA is not available")
            dev = torch.device("cuda", self.env.local_rank)
            torch.cuda.set_device(dev)
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
        return dev

    # ------------------------------------------------------------------ checkpoints
    @property
    def ckpt_root(self) -> Path:
        return self.out / "checkpoints"

    def latest_checkpoint(self) -> Path | None:
        found = sorted(self.ckpt_root.glob("step_*")) if self.ckpt_root.is_dir() else []
        found = [p for p in found if (p / "state.pt").is_file()]
        return found[-1] if found else None

    def save(self) -> Path | None:
        if self.rank != 0:
            return None
        final = self.ckpt_root / f"step_{self.step:07d}"
        tmp = self.ckpt_root / f".tmp_step_{self.step:07d}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_safetensors(self.model.state_dict(), tmp / "model.safetensors", self.cfg.model,
                         self.model.cfg.to_dict())
        state = {"step": self.step, "optimizer": self.opt.state_dict(), "ema": self.ema,
                 "scaler": self.scaler.state_dict(), "config": json.dumps(self.cfg.to_dict())}
        torch.save(state, tmp / "state.pt")
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        for old in sorted(self.ckpt_root.glob("step_*"))[:-max(1, self.cfg.keep_checkpoints)]:
            shutil.rmtree(old, ignore_errors=True)
        log.info("saved %s", final)
        return final

    def resume(self, path: Path | None = None) -> bool:
        """Load the latest (or given) checkpoint; returns False when there is none."""
        path = path or self.latest_checkpoint()
        if path is None:
            return False
        try:
            sd = load_file(str(path / "model.safetensors"))
            state = torch.load(path / "state.pt", map_location="cpu", weights_only=True)
        except Exception as exc:  # corrupt files: name them
            raise CheckpointError(f"cannot resume from {path}: {exc}") from None
        self.model.load_state_dict(sd, strict=True)
        self.opt.load_state_dict(state["optimizer"])
        if state.get("ema") is not None:
            self.ema = {k: v.to(self.device) for k, v in state["ema"].items()}
        self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
        log.info("resumed from %s at step %d", path, self.step)
        return True

    def export(self, path: Path | None = None) -> Path:
        """Final weights (EMA when enabled) as voxprompt safetensors."""
        sd = self.model.state_dict()
        if self.ema is not None:
            sd = {k: self.ema[k].to(v.dtype) for k, v in sd.items()}
        return save_safetensors(sd, path or self.out / "model.safetensors", self.cfg.model, self.model.cfg.to_dict())

    # ------------------------------------------------------------------ training
    def _autocast(self) -> Any:
        if self.cfg.amp == "none":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.cfg.amp == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def micro_batches(self, step: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """The ``grad_accum`` micro-batches of ``step`` on this rank (a pure function of the seed)."""
        return [self.mixer.batch((self.cfg.seed, step, self.rank, m), self.cfg.batch_size)
                for m in range(self.cfg.grad_accum)]

    def train_step(self, batches: list | None = None) -> dict[str, float]:
        """One optimizer step; ``batches`` are this step's micro-batches (drawn here when None)."""
        cfg = self.cfg
        for g in self.opt.param_groups:
            g["lr"] = lr_at(cfg, self.step)
        self.opt.zero_grad(set_to_none=True)
        stats: dict[str, float] = {}
        if batches is None:
            batches = self.micro_batches(self.step)
        for micro, (image, gt, *rest) in enumerate(batches):
            seed = (cfg.seed, self.step, self.rank, micro)
            image, gt = np.asarray(image), np.asarray(gt)
            extra = (np.asarray(rest[0]),) if rest else ()  # 3D: first clicks
            image_t = torch.from_numpy(image)
            image_t = (image_t[:, None] if image.ndim == gt.ndim else image_t).to(self.device)  # 2D: (B, 3, S, S)
            gt_t = torch.from_numpy(gt)[:, None].to(self.device)
            rng = np.random.default_rng(list(seed) + [1])
            sync = micro == cfg.grad_accum - 1 or self.world == 1
            ctx = contextlib.nullcontext() if sync else self.ddp.no_sync()
            with ctx:
                loss, s = self.ddp(image_t, gt_t, rng, self._autocast, *extra)
                self.scaler.scale(loss / cfg.grad_accum).backward()
            s["loss"] = float(loss.detach())
            for k, v in s.items():
                stats[k] = stats.get(k, 0.0) + v / cfg.grad_accum
        self.scaler.unscale_(self.opt)
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.params, cfg.grad_clip)
        self.scaler.step(self.opt)
        self.scaler.update()
        if self.ema is not None:
            with torch.no_grad():
                for k, v in self.model.state_dict().items():
                    if v.is_floating_point():
                        self.ema[k].mul_(cfg.ema).add_(v.float(), alpha=1 - cfg.ema)
                    else:
                        self.ema[k].copy_(v)
        self.step += 1
        stats["lr"] = self.opt.param_groups[0]["lr"]
        return stats

    def _batch_iter(self, stop: int) -> Iterator[list]:
        """This rank's micro-batches for steps ``self.step .. stop-1`` (``num_workers`` processes)."""
        if self.cfg.num_workers <= 0:
            return (self.micro_batches(s) for s in range(self.step, stop))
        loader = torch.utils.data.DataLoader(
            _StepBatches(self), batch_size=None, sampler=range(self.step, stop), num_workers=self.cfg.num_workers,
            worker_init_fn=_worker_init, prefetch_factor=4, collate_fn=_as_is)
        return iter(loader)

    def fit(self, steps: int | None = None, progress: bool = True) -> Path:
        """Train up to step ``steps`` (total; default ``cfg.steps``), saving every ``save_every``; export
        where it stops (also when the run was already there: nothing is trained then).

        ``steps`` past ``cfg.steps`` extends the run: the schedule is a pure function of the step, so the
        extra steps run at its final learning rate (``lr * min_lr_ratio``) and the run equals one trained
        straight to ``steps`` (refused when that rate is 0). Raising ``steps`` in the config instead
        stretches the warm-up + cosine schedule from the step reached."""
        cfg = self.cfg
        stop = cfg.steps if steps is None else int(steps)
        if stop <= 0:
            raise UsageError(f"steps must be positive, got {stop}")
        if stop > max(cfg.steps, self.step):
            final_lr = cfg.lr * cfg.min_lr_ratio  # lr_at once the cosine is over
            if final_lr <= 0:
                raise UsageError(f"--steps {stop} goes past the config's steps ({cfg.steps}), where the schedule "
                                 f"ends at learning rate 0 (min_lr_ratio {cfg.min_lr_ratio:g}): raise steps in the "
                                 "config instead (the cosine is then stretched from the step reached)")
            if self.rank == 0:
                log.warning("--steps %d goes past the config's steps (%d): steps %d..%d run at the schedule's final "
                            "learning rate %.3g (lr x min_lr_ratio); to stretch the warm-up + cosine schedule "
                            "instead, raise steps in the config", stop, cfg.steps, max(cfg.steps, self.step) + 1,
                            stop, final_lr)
        self.out.mkdir(parents=True, exist_ok=True)
        logger = CsvLog(self.out / "log.csv", self.step) if self.rank == 0 else None
        bar = tqdm(total=stop, initial=self.step, disable=not progress or self.rank != 0 or self.step >= stop,
                   desc="train", unit="step", dynamic_ncols=True)
        t0, samples = time.perf_counter(), 0
        batches = self._batch_iter(stop) if self.step < stop else iter(())
        while self.step < stop:
            stats = self.train_step(next(batches))
            samples += cfg.batch_size * cfg.grad_accum * self.world
            bar.update(1)
            if self.step % cfg.log_every == 0 or self.step == stop:
                stats["samples_per_s"] = samples / max(1e-9, time.perf_counter() - t0)
                bar.set_postfix(loss=f"{stats['loss']:.3f}", dice=f"{stats['dice']:.3f}")
                if logger:
                    logger.write(self.step, stats)
            if self.step % cfg.save_every == 0 or self.step == stop:
                self.save()
                if logger:
                    plot_log(self.out / "log.csv", self.out / "loss_curve.png")
        bar.close()
        final = self.out / "model.safetensors"
        if self.rank == 0:  # the weights where this call stopped (EMA when enabled)
            final = self.export()
        if self.world > 1:
            dist.barrier()
        return final


class _StepBatches(torch.utils.data.Dataset):
    """Map-style view ``step -> micro-batches`` so DataLoader workers draw batches in parallel
    while the result stays a pure function of the step (exact resume is unaffected)."""

    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer

    def __len__(self) -> int:  # the sampler names the steps; a run extended past cfg.steps reads beyond this
        return self.trainer.cfg.steps

    def __getitem__(self, step: int) -> list:
        return self.trainer.micro_batches(int(step))


def _as_is(batch: list) -> list:
    return batch


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)


class CsvLog:
    """Append-only CSV of training statistics; rows after ``start_step`` are dropped on resume."""

    def __init__(self, path: Path, start_step: int) -> None:
        self.path = path
        self.fields: list[str] | None = None
        if path.is_file():
            with path.open() as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= start_step]
            if rows:
                self.fields = list(rows[0].keys())
                self._rewrite(rows)
            else:
                path.unlink()

    def _rewrite(self, rows: list[dict]) -> None:
        tmp = self.path.with_suffix(".tmp")
        with tmp.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=self.fields)
            w.writeheader()
            w.writerows(rows)
        tmp.replace(self.path)

    def write(self, step: int, stats: dict[str, float]) -> None:
        row = {"step": step, **{k: f"{v:.6g}" for k, v in sorted(stats.items())}}
        new = self.fields is None
        if new:
            self.fields = list(row)
        with self.path.open("a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=self.fields, extrasaction="ignore")
            if new:
                w.writeheader()
            w.writerow(row)


def plot_log(csv_path: Path, png: Path) -> None:
    """Loss and Dice-per-click curves of a training log as a PNG."""
    from ..viz.figures import pyplot, save_figure

    with csv_path.open() as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return
    steps = [int(r["step"]) for r in rows]
    fig, (a, b) = pyplot().subplots(1, 2, figsize=(10, 4))
    a.plot(steps, [float(r["loss"]) for r in rows])
    a.set_xlabel("step")
    a.set_ylabel("loss")
    a.set_yscale("log")
    for key in sorted(k for k in rows[0] if k.startswith("dice_")):
        label = f"click {key.split('_')[1]}" + (", best multimask output" if key.endswith("_best_of") else "")
        b.plot(steps, [float(r[key]) for r in rows], label=label)
    b.set_xlabel("step")
    b.set_ylabel("training Dice")
    b.legend()
    fig.tight_layout()
    save_figure(fig, png, dpi=100)


def train(cfg: TrainConfig, resume: bool = True, steps: int | None = None, progress: bool = True) -> Path:
    """Run (or resume) a training run; returns the exported model path."""
    trainer = Trainer(cfg)
    if resume:
        trainer.resume()
    return trainer.fit(steps, progress)
