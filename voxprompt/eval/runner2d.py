"""2D models in the evaluation harness.

* :func:`slice_session_factory`: engines for the 3D protocols (``cvpr25``, ``sam-med3d``) that run
  a 2D model on the volume through :class:`~voxprompt.session.slices.SliceSession` (prompt on a
  slice, propagate slice by slice), so 2D and 3D models are scored on the same 3D targets. The
  CVPR 2025 box becomes the box on its middle slice with propagation limited to its z range.
* :func:`evaluate_slices`: the SAM-Med2D protocol on slices of 3D targets. Per target, up to
  ``slices`` slices along ``axis`` are chosen (the one through the mask's centre of mass, then
  evenly spaced ones; each with at least ``min_fraction`` of the slice as foreground, SAM-UNet's
  100/256² rule). On each: a box (the largest component's bounding box, ``sam_med2d_box``), and
  separately ``n_clicks`` iterative points (a uniform foreground pixel, then uniform pixels of the
  error region, 1 if missed / 0 if extra, accumulated, the previous mask fed back the model's way;
  ``test.py --iter_point``). Dice/NSD per slice; the target's row holds the means over its slices
  (``box_dice`` = box mode, ``dice[k]`` = after point k+1).
"""
from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from voxprompt.errors import InputError, UsageError
from voxprompt.eval.clicks import Box3D, Click, jitter_click, sam_med2d_box, sam_med2d_points, sam_med3d_random_click
from voxprompt.eval.metrics import auc_trapezoid, dice, hd95, nsd
from voxprompt.eval.runner import Engine, PredictorFactory, Slices, checked_gt, target_rngs
from voxprompt.io.image import Image

log = logging.getLogger(__name__)

MED2D_CLICKS = 5
MED2D_NSD_MM = 1.0
MIN_FRACTION = 100 / 256**2  # SAM-UNet's slice filter: foreground above 0.153 % of the slice


def slice_session_factory(model: Any, axis: int = 0, device: Any = None, config: Any = None) -> PredictorFactory:
    """Engines driving a :class:`~voxprompt.session.slices.SliceSession` per target (3D protocols)."""
    from voxprompt.session.propagate import PropagationConfig
    from voxprompt.session.slices import SliceSession

    def factory(image: Image) -> Engine:
        session = SliceSession(model, axis=axis, config=config or PropagationConfig(), device=device)
        session.set_image(image)
        state = {"clicks": 0, "box": False}

        def engine(clicks: list[Click], box: Box3D | None) -> tuple[np.ndarray, Slices | None]:
            if box is not None and not state["box"]:
                session.add_box((box.z_min, box.y_min, box.x_min), (box.z_max + 1, box.y_max + 1, box.x_max + 1),
                                slice_index=box.z_mid if axis == 0 else None)
                state["box"] = True
            for c in clicks[state["clicks"]:]:
                session.add_point(c.index, positive=bool(c.label))
            state["clicks"] = len(clicks)
            return np.array(session.mask), None

        return engine

    return factory


# ----------------------------------------------------------------------------- SAM-Med2D on slices
@dataclass(frozen=True)
class SliceEvalConfig:
    """How the SAM-Med2D protocol samples slices and prompts."""

    axis: int = 0
    slices: int = 3
    n_clicks: int = MED2D_CLICKS
    use_box: bool = True
    seed: int = 0
    click_noise_mm: float = 0.0
    min_fraction: float = MIN_FRACTION

    def __post_init__(self) -> None:
        if self.axis not in (0, 1, 2):
            raise UsageError(f"slice axis must be 0, 1 or 2, got {self.axis}")
        if self.slices < 1 or self.n_clicks < 1:
            raise UsageError("slices per target and clicks must be >= 1")
        if not (np.isfinite(self.click_noise_mm) and self.click_noise_mm >= 0):
            raise UsageError(f"click noise must be a finite number of mm >= 0, got {self.click_noise_mm}")


def pick_slices(gt: np.ndarray, axis: int, k: int, min_fraction: float = MIN_FRACTION) -> list[int]:
    """Up to ``k`` slices along ``axis``: through the centre of mass, then evenly spaced ones,
    among slices whose foreground exceeds ``min_fraction`` of the slice (at least 1 pixel)."""
    other = tuple(a for a in range(3) if a != axis)
    area = gt.sum(axis=other)
    plane = int(np.prod([gt.shape[a] for a in other]))
    ok = np.flatnonzero(area >= max(1.0, min_fraction * plane))
    if ok.size == 0:
        return []
    centre = int(round(float(np.argwhere(gt)[:, axis].mean())))
    first = centre if centre in set(ok.tolist()) else int(ok[np.argmax(area[ok])])
    chosen = [first]
    for q in np.linspace(0, ok.size - 1, k + 2)[1:-1]:
        s = int(ok[int(round(q))])
        if len(chosen) < k and s not in chosen:
            chosen.append(s)
    return chosen


def _index3(axis: int, s: int, row: int, col: int) -> tuple[int, int, int]:
    idx = [row, col]
    idx.insert(axis, s)
    return tuple(int(v) for v in idx)


def _mean(values: Sequence[float]) -> float:
    a = np.asarray([v for v in values if np.isfinite(v)], float)
    return float(a.mean()) if a.size else float("nan")


def evaluate_target_slices(target: Any, image: Image, gt: np.ndarray, model: Any, config: SliceEvalConfig,
                           device: Any = None) -> tuple[dict, np.ndarray]:
    """The SAM-Med2D protocol on one 3D target; returns its row and a 3D mask holding the final
    point-mode prediction on each evaluated slice."""
    from voxprompt.session.image2d import Session2D
    from voxprompt.session.propagate import SliceEncoder, SliceStack, take_slice

    gt = checked_gt(target, image, gt)
    ax = config.axis
    spacing3 = tuple(float(s) for s in image.spacing[::-1])
    sp2 = tuple(s for a, s in enumerate(spacing3) if a != ax)
    rng, noise_rng = target_rngs(config.seed, target)
    sigma = tuple(config.click_noise_mm / s for s in sp2)
    slices = pick_slices(gt, ax, config.slices, config.min_fraction)
    if not slices:
        raise InputError(f"{target.case} label {target.label} ({target.name}): no slice along axis {ax} has "
                         "enough foreground")
    encoder = SliceEncoder(model, SliceStack(image.array, ax), device=device, cache_bytes=0)
    final = np.zeros(gt.shape, bool)
    box_d, box_n, box_s, boxes, clicks = [], [], [], [], []
    per_click: list[list[tuple[float, float]]] = [[] for _ in range(config.n_clicks)]
    secs, hds = [], []
    t_all = time.perf_counter()
    for s in slices:
        g2 = np.ascontiguousarray(take_slice(gt, ax, s))
        session = Session2D(model, device=device, policy=encoder.policy)
        session.attach(encoder(s), encoder.stack.rgb(s))
        if config.use_box:
            box = sam_med2d_box(g2)
            t0 = time.perf_counter()
            m = session.add_box(box).mask
            box_s.append(time.perf_counter() - t0)
            box_d.append(dice(m, g2))
            box_n.append(nsd(m, g2, sp2, MED2D_NSD_MM))
            boxes.append([s, *map(int, box)])
            session.new_object()
        prev = np.zeros_like(g2)
        for k in range(config.n_clicks):
            c = sam_med2d_points(g2, 1, rng)[0] if k == 0 else sam_med3d_random_click(prev, g2, rng)
            if config.click_noise_mm > 0:
                region = (g2 & ~prev) if c.label else (prev & ~g2)
                c = jitter_click(c, region, noise_rng, sigma)
            t0 = time.perf_counter()
            prev = session.add_point((c.index[1], c.index[0]), positive=bool(c.label)).mask
            secs.append(time.perf_counter() - t0)
            per_click[k].append((dice(prev, g2), nsd(prev, g2, sp2, MED2D_NSD_MM)))
            clicks.append([*_index3(ax, s, *c.index), int(c.label)])
        hds.append(hd95(prev, g2, sp2))
        final[tuple(slice(None) if a != ax else s for a in range(3))] = prev
    d = [_mean([v[0] for v in vals]) for vals in per_click]
    n = [_mean([v[1] for v in vals]) for vals in per_click]
    finite_hd = [h for h in hds if np.isfinite(h)]
    row = {
        "case": target.case, "label": int(target.label), "name": target.name, "modality": target.modality,
        "split": target.split, "voxels": int(gt.sum()), "protocol": "sam-med2d", "n_clicks": config.n_clicks,
        "clicks": clicks, "box": boxes or None,
        "box_dice": _mean(box_d) if box_d else None, "box_nsd": _mean(box_n) if box_n else None,
        "dice": d, "nsd": n, "roi_dice": [float("nan")] * config.n_clicks,
        "dsc_auc": auc_trapezoid(d) if len(d) >= 2 else float("nan"),
        "nsd_auc": auc_trapezoid(n) if len(n) >= 2 else float("nan"),
        "final_dice": d[-1], "final_nsd": n[-1], "final_roi_dice": float("nan"), "best_dice": max(d),
        "hd95": float(np.mean(finite_hd)) if finite_hd else float("inf"),
        "seconds_per_click": secs, "box_seconds": float(np.sum(box_s)) if box_s else None,
        "median_click_seconds": float(np.median(secs)), "total_seconds": time.perf_counter() - t_all,
        "slices": slices, "slice_axis": ax,
    }
    return row, final


def evaluate_slices(targets: Sequence[Any], model: Any, seed: int = 0, *, n_clicks: int | None = None,
                    use_box: bool = True, click_noise_mm: float = 0.0, axis: int = 0, slices: int = 3,
                    loader: Any = None, on_result: Any = None, progress: bool = False,
                    device: Any = None) -> list[dict]:
    """Run the SAM-Med2D protocol over targets in order; one row per target (see module doc)."""
    from tqdm import tqdm

    config = SliceEvalConfig(axis, slices, n_clicks or MED2D_CLICKS, use_box, seed, click_noise_mm)
    if loader is None:
        from voxprompt.data.readers import load_target as loader
    rows = []
    with torch.inference_mode():
        for target in tqdm(targets, desc="eval", unit="target", disable=not progress):
            image, gt = loader(target)
            row, final = evaluate_target_slices(target, image, gt, model, config, device)
            log.info("%s/%s (%s): box Dice %s, Dice after %d points %.3f", row["case"], row["label"], row["name"],
                     "-" if row["box_dice"] is None else f"{row['box_dice']:.3f}", config.n_clicks, row["final_dice"])
            if on_result is not None:
                on_result(row, final)
            rows.append(row)
    return rows


__all__ = ["MED2D_CLICKS", "SliceEvalConfig", "evaluate_slices", "evaluate_target_slices", "pick_slices",
           "slice_session_factory"]
