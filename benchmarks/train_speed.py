"""Training-step speed and peak memory: the official SAM-Med3D recipe vs ours, at equal batch.

Official recipe (SAM-Med3D train.py, computed in reference mode): encode once, then 11 click
iterations through prompt encoder + mask decoder with the previous low-res logits fed back (not
detached; the 3rd..9th and the last iteration without points), Dice+CE (MONAI DiceCELoss, sigmoid,
squared prediction) on the logits upsampled to 128^3, summed over the iterations; fp16 autocast +
GradScaler on GPU, fp32 on CPU; AdamW. Ours: the same steps and losses with the exact fast paths,
bf16 autocast (GPU), activation checkpointing of the encoder blocks and the loss (each
iteration's upsample + loss is recomputed in the backward pass instead of storing 128^3
activations). Clicks: a random voxel of the error region (as the official random clicker), drawn
with a seeded generator, so both runs see the same work.

    python benchmarks/train_speed.py [--device cpu|cuda] [--batches 1] [--steps 3] [--quick]

CPU default: batch 1, a few steps; GPU default: batches 2, 6, 12. Writes
benchmarks/results/train_speed_<device>.json and prints a table.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_utils import RESULTS, machine, peak_mib, peak_rss_mib, reset_peak, run_worker, sync, write_json  # noqa: E402

NUM_CLICKS = 11
SMOOTH = 1e-5


def dice_ce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """MONAI ``DiceCELoss(sigmoid=True, squared_pred=True, reduction='mean')`` for one channel."""
    logits = logits.float()
    p = torch.sigmoid(logits).flatten(2)
    t = target.flatten(2)
    dice = 1 - (2 * (p * t).sum(-1) + SMOOTH) / ((p * p).sum(-1) + (t * t).sum(-1) + SMOOTH)
    return dice.mean() + F.binary_cross_entropy_with_logits(logits, target)


def synthetic_batch(batch: int, size: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Z-scored noise images with one ellipsoid target each."""
    image = torch.randn(batch, 1, size, size, size, generator=gen)
    ax = torch.arange(size, dtype=torch.float32)
    gts = []
    for _ in range(batch):
        c = size * (0.3 + 0.4 * torch.rand(3, generator=gen))
        r = size * (0.1 + 0.15 * torch.rand(3, generator=gen))
        d = ((ax[:, None, None] - c[0]) / r[0]) ** 2 + ((ax[None, :, None] - c[1]) / r[1]) ** 2 + (
            (ax[None, None, :] - c[2]) / r[2]) ** 2
        gts.append((d < 1).float())
    gt = torch.stack(gts)[:, None]
    return image + 2 * gt, gt


def next_points(pred: torch.Tensor, gt: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """One click per sample: a random voxel of the error region, labelled by the target."""
    pts, labs = [], []
    err = (pred > 0) != (gt > 0.5)
    for b in range(gt.shape[0]):
        idx = torch.nonzero(err[b, 0])
        if len(idx) == 0:
            idx = torch.nonzero(gt[b, 0] > 0.5)
        i = idx[int(torch.randint(len(idx), (1,), generator=gen))]
        pts.append(i.float())
        labs.append(int(gt[b, 0, i[0], i[1], i[2]] > 0.5))
    return torch.stack(pts)[:, None], torch.tensor(labs)[:, None]


def train_step(model: Any, image: torch.Tensor, gt: torch.Tensor, gen: torch.Generator, amp: Callable[[], Any],
               ours: bool) -> torch.Tensor:
    """Encoder once + 11 click iterations, loss summed (the official interaction loop)."""
    dev = image.device
    with amp():
        emb = model.image_encoder(image)
    low = torch.zeros(gt.shape[0], 1, *([model.low_res_size] * 3), device=dev)
    pred = torch.zeros_like(gt)
    coords: list[torch.Tensor] = []
    labels: list[torch.Tensor] = []
    no_points = {int(gen_randint(gen, 2, 9)), NUM_CLICKS - 1}
    total = torch.zeros((), device=dev)
    pe = model.prompt_encoder
    for k in range(NUM_CLICKS):
        c, lab = next_points(pred, gt, gen)
        coords.append(c.to(dev))
        labels.append(lab.to(dev))
        points = None if k in no_points else (torch.cat(coords, 1), torch.cat(labels, 1))
        with amp():
            sparse, dense = pe(points=points, boxes=None, masks=low)
            low, _ = model.mask_decoder(image_embeddings=emb, image_pe=pe.get_dense_pe(),
                                        sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                        multimask_output=False)
        if ours:  # upsample + loss recomputed in backward: no 128^3 activations kept
            loss, pred = checkpoint(_upsampled_loss, low, gt, use_reentrant=False)
        else:
            loss, pred = _upsampled_loss(low, gt)
        total = total + loss
    return total


def _upsampled_loss(low: torch.Tensor, gt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    up = F.interpolate(low.float(), size=gt.shape[-3:], mode="trilinear", align_corners=False)
    return dice_ce(up, gt), up.detach()


def gen_randint(gen: torch.Generator, lo: int, hi: int) -> int:
    return int(torch.randint(lo, hi, (1,), generator=gen))


def worker(args: argparse.Namespace) -> dict[str, Any]:
    import voxprompt
    from voxprompt.models.fast import reference_mode
    from voxprompt.runtime import configure_cpu_threads

    if args.threads:
        configure_cpu_threads(args.threads)
    dev = args.device
    torch.manual_seed(0)
    model = voxprompt.load_model(args.model, device=dev, pretrained=False).train()
    ours = args.variant == "ours"
    gpu = dev.startswith("cuda")
    amp_dtype = (torch.bfloat16 if ours else torch.float16) if gpu else None
    if args.precision != "auto":
        amp_dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.precision]

    def amp() -> Any:
        return torch.autocast(dev.split(":")[0], dtype=amp_dtype) if amp_dtype else contextlib.nullcontext()

    model.image_encoder.gradient_checkpointing = ours
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    scaler = torch.amp.GradScaler(enabled=amp_dtype == torch.float16 and gpu)
    ctx = contextlib.nullcontext() if ours else reference_mode()
    gen = torch.Generator().manual_seed(1)
    rss0 = peak_rss_mib()
    times, losses = [], []
    with ctx:
        for step in range(args.warmup + args.steps):
            image, gt = synthetic_batch(args.batch, model.img_size, gen)
            image, gt = image.to(dev), gt.to(dev)
            if step == args.warmup:
                reset_peak(dev)
            sync(dev)
            t = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            loss = train_step(model, image, gt, torch.Generator().manual_seed(100 + step), amp, ours)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            sync(dev)
            if step >= args.warmup:
                times.append(time.perf_counter() - t)
                losses.append(float(loss))
    step_s = float(np.median(times))
    return {"variant": args.variant, "batch": args.batch, "precision": str(amp_dtype or "fp32").replace("torch.", ""),
            "step_s": step_s, "samples_per_s": args.batch / step_s, "peak_mib": peak_mib(dev, rss0),
            "steps_timed": len(times), "losses": losses}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--variant", default="ours", help=argparse.SUPPRESS)
    ap.add_argument("--batch", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--model", default="sam-med3d")
    ap.add_argument("--batches", help="comma-separated (default: 1 on CPU, 2,6,12 on GPU)")
    ap.add_argument("--steps", type=int, default=3, help="timed steps (median)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--precision", default="auto", help="auto (recipe default), fp32, bf16 or fp16")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="1 timed step, no warm-up")
    ap.add_argument("--note", default="")
    ap.add_argument("--timeout", type=float, default=3600)
    args = ap.parse_args()
    if args.quick:
        args.steps, args.warmup = 1, 0
    if args.worker:
        print(json.dumps(worker(args)))
        return
    gpu = args.device.startswith("cuda")
    batches = [int(b) for b in (args.batches or ("2,6,12" if gpu else "1")).split(",")]
    rows = []
    print(f"{'variant':9s} {'batch':>5s} {'precision':>9s} {'step':>9s} {'samples/s':>10s} {'peak MiB':>9s}")
    for b in batches:
        for variant in ("official", "ours"):
            extra = ["--variant", variant, "--batch", str(b), "--device", args.device, "--model", args.model,
                     "--steps", str(args.steps), "--warmup", str(args.warmup), "--precision", args.precision,
                     "--threads", str(args.threads)]
            row = run_worker(Path(__file__), extra, args.timeout)
            row.update(variant=variant, batch=b)
            rows.append(row)
            if "error" in row:
                print(f"{variant:9s} {b:5d} error: {row['error']}")
                continue
            print(f"{variant:9s} {b:5d} {row['precision']:>9s} {row['step_s']:8.2f}s {row['samples_per_s']:10.3f} "
                  f"{row['peak_mib']:9.0f}", flush=True)
    ratios = {}
    for b in batches:
        o = next((r for r in rows if r["batch"] == b and r["variant"] == "official" and "error" not in r), None)
        u = next((r for r in rows if r["batch"] == b and r["variant"] == "ours" and "error" not in r), None)
        if o and u:
            ratios[str(b)] = {"speedup": round(u["samples_per_s"] / o["samples_per_s"], 2),
                              "memory_ratio": round(u["peak_mib"] / max(o["peak_mib"], 1e-9), 3)}
    result = {"benchmark": "train_speed", "model": args.model, "machine": machine(args.device), "quick": args.quick,
              "note": args.note, "clicks": NUM_CLICKS, "rows": rows, "ours_vs_official": ratios}
    if not gpu:
        result["gpu"] = ("no GPU available in this run; the issue's H100 figures (official batch 2/6/12: 5.9/12.6/18.5 "
                         "samples/s at 11.8/32.4/63.4 GiB) remain to be compared")
    write_json(RESULTS / f"train_speed_{args.device.split(':')[0]}.json", result)


if __name__ == "__main__":
    main()
