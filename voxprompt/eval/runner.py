"""Evaluation engine: run an interactive click protocol over dataset targets, one row each.

An *engine* is built per target by a ``predictor_factory(image)`` and called as
``engine(clicks, box) -> (mask, roi_bbox)`` with all clicks so far (what the model should see,
noise included) and the optional CVPR 2025 box; ``roi_bbox`` is the image region of the model
ROI behind the mask (None for engines without one). Every target gets its own random streams
derived from ``(seed, case, label)``, so results do not depend on target order or sharding.
"""
from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from voxprompt.errors import InputError, UsageError
from voxprompt.eval.clicks import Box3D, Click, jitter_click
from voxprompt.eval.metrics import auc_trapezoid, dice, hd95
from voxprompt.eval.protocol import run_click_protocol
from voxprompt.io.image import Image
from voxprompt.masks import Slices

log = logging.getLogger(__name__)

Engine = Callable[[list[Click], Box3D | None], tuple[np.ndarray, Slices | None]]
PredictorFactory = Callable[[Image], Engine]
Loader = Callable[[Any], tuple[Image, np.ndarray]]
ResultHook = Callable[[dict, np.ndarray], None]

# CLI protocol name -> (run_click_protocol name, default number of clicks)
PROTOCOL_SPECS = {"cvpr25": ("cvpr25", 5), "sam-med3d": ("sam-med3d", 10)}


@dataclass(frozen=True)
class EvalConfig:
    """How each target is evaluated."""

    protocol: str = "cvpr25"
    seed: int = 0
    n_clicks: int | None = None  # None: the protocol's default (5 / 10)
    use_box: bool = True            # cvpr25 only
    click_noise_mm: float = 0.0     # sigma of jitter_click in mm (0 = exact clicks)

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOL_SPECS:
            raise UsageError(f"protocol {self.protocol!r} cannot run on 3D targets; "
                             f"choose one of {', '.join(PROTOCOL_SPECS)}")
        if self.n_clicks is not None and self.n_clicks < 1:
            raise UsageError(f"number of clicks must be >= 1, got {self.n_clicks}")
        if not (math.isfinite(self.click_noise_mm) and self.click_noise_mm >= 0):
            raise UsageError(f"click noise must be a finite number of mm >= 0, got {self.click_noise_mm}")

    @property
    def clicks(self) -> int:
        return self.n_clicks or PROTOCOL_SPECS[self.protocol][1]


def target_seed(seed: int, case: str, label: int) -> int:
    """A 64-bit seed from ``(seed, case, label)`` (stable across runs, ranks and orders)."""
    digest = hashlib.sha256(f"{int(seed)}\0{case}\0{int(label)}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


class _Recorder:
    """The ``predict_fn`` given to :func:`run_click_protocol`: adds noise, times, scores ROIs."""

    def __init__(self, engine: Engine, gt: np.ndarray, spacing: Sequence[float],
                 noise_mm: float, rng: np.random.Generator) -> None:
        self.engine, self.gt, self.rng = engine, gt, rng
        self.sigma_vox = tuple(noise_mm / s for s in spacing)
        self.noisy = noise_mm > 0
        self.prev = np.zeros_like(gt)
        self.sent: list[Click] = []
        self.seconds: list[float] = []
        self.box_seconds: float | None = None
        self.roi_dice: list[float] = []

    def __call__(self, clicks: list[Click], box: Box3D | None) -> np.ndarray:
        for c in clicks[len(self.sent):]:
            if self.noisy:
                region = (self.gt & ~self.prev) if c.label else (self.prev & ~self.gt)
                c = jitter_click(c, region, self.rng, self.sigma_vox)
            self.sent.append(c)
        t0 = time.perf_counter()
        mask, roi = self.engine(list(self.sent), box)
        dt = time.perf_counter() - t0
        mask = np.asarray(mask, dtype=bool)
        if clicks:
            self.seconds.append(dt)
            self.roi_dice.append(dice(mask[roi], self.gt[roi]) if roi is not None else float("nan"))
        else:
            self.box_seconds = dt
        self.prev = mask
        return mask


def checked_gt(target: Any, image: Image, gt: np.ndarray) -> np.ndarray:
    """A target's mask as bool; InputError when its shape differs from the image's or it is empty."""
    gt = np.asarray(gt, dtype=bool)
    if gt.shape != image.shape:
        raise InputError(f"{target.case} label {target.label}: mask shape {gt.shape} differs from "
                         f"the image shape {image.shape}")
    if not gt.any():
        raise InputError(f"{target.case} label {target.label} ({target.name}): the mask is empty")
    return gt


def target_rngs(seed: int, target: Any) -> tuple[np.random.Generator, np.random.Generator]:
    """Independent (protocol, click noise) generators of one target."""
    streams = np.random.SeedSequence(target_seed(seed, target.case, target.label)).spawn(2)
    proto_rng, noise_rng = (np.random.default_rng(s) for s in streams)
    return proto_rng, noise_rng


def _auc(values: list[float]) -> float:
    return auc_trapezoid(values) if len(values) >= 2 else float("nan")


def evaluate_target(target: Any, image: Image, gt: np.ndarray, factory: PredictorFactory,
                    config: EvalConfig) -> tuple[dict, np.ndarray]:
    """Run the protocol on one target; returns its result row and the final mask."""
    gt = checked_gt(target, image, gt)
    spacing = tuple(float(s) for s in image.spacing[::-1])  # mm per array axis (z, y, x)
    proto_rng, noise_rng = target_rngs(config.seed, target)
    rec = _Recorder(factory(image), gt, spacing, config.click_noise_mm, noise_rng)
    name, _ = PROTOCOL_SPECS[config.protocol]
    t0 = time.perf_counter()
    res = run_click_protocol(rec, gt, name, config.clicks, proto_rng, spacing, use_box=config.use_box)
    total = time.perf_counter() - t0
    final = rec.prev
    click_dice, click_nsd = res.click_dice, res.click_nsd
    row = {
        "case": target.case, "label": int(target.label), "name": target.name,
        "modality": target.modality, "split": target.split, "voxels": int(gt.sum()),
        "protocol": config.protocol, "n_clicks": config.clicks,
        "clicks": [[*map(int, c.index), int(c.label)] for c in rec.sent],
        "box": None if res.box is None else [res.box.z_min, res.box.z_max, res.box.z_mid, res.box.y_min,
                                             res.box.x_min, res.box.y_max, res.box.x_max],
        "box_dice": res.dice[0] if res.box is not None else None,
        "box_nsd": res.nsd[0] if res.box is not None else None,
        "dice": click_dice, "nsd": click_nsd, "roi_dice": rec.roi_dice,
        "dsc_auc": _auc(click_dice), "nsd_auc": _auc(click_nsd),
        "final_dice": res.final_dice, "final_nsd": res.final_nsd,
        "final_roi_dice": rec.roi_dice[-1] if rec.roi_dice else float("nan"),
        "best_dice": res.best_dice, "hd95": hd95(final, gt, spacing),
        "seconds_per_click": rec.seconds, "box_seconds": rec.box_seconds,
        "median_click_seconds": float(np.median(rec.seconds)) if rec.seconds else float("nan"),
        "total_seconds": total,
    }
    return row, final


def evaluate(
    targets: Sequence[Any],
    predictor_factory: PredictorFactory,
    protocol: str = "cvpr25",
    seed: int = 0,
    *,
    n_clicks: int | None = None,
    use_box: bool = True,
    click_noise_mm: float = 0.0,
    loader: Loader | None = None,
    on_result: ResultHook | None = None,
    progress: bool = False,
) -> list[dict]:
    """Evaluate every target in order; returns one row (dict) per target.

    ``loader(target) -> (Image, bool mask)`` defaults to ``voxprompt.data.readers.load_target``.
    ``on_result(row, final_mask)`` is called after each target (e.g. to keep extreme cases).
    """
    from tqdm import tqdm

    config = EvalConfig(protocol, seed, n_clicks, use_box, click_noise_mm)
    if loader is None:
        from voxprompt.data.readers import load_target as loader
    rows = []
    for target in tqdm(targets, desc="eval", unit="target", disable=not progress):
        image, gt = loader(target)
        row, final = evaluate_target(target, image, gt, predictor_factory, config)
        log.info("%s/%s (%s): final Dice %.3f", row["case"], row["label"], row["name"], row["final_dice"])
        if on_result is not None:
            on_result(row, final)
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------- engines
def session_factory(model: Any, device: Any = None, autozoom: bool = False,
                    refine: Any = None, clean: bool | None = None,
                    carry_over: bool | None = None, box_negatives: bool | None = None,
                    box_search: bool = False, retry_missed: bool = False,
                    monotone_clicks: bool | None = None, flip_ensemble: int | None = None) -> PredictorFactory:
    """Engines driving a fresh 3D :class:`~voxprompt.session.Session` per target.

    ``autozoom`` gives each session an :class:`~voxprompt.session.autozoom.AutoZoomPlanner`; ``refine`` is
    the Session's (None = the model's stored setting, bool, or a :class:`~voxprompt.refine.RefineConfig`);
    ``clean`` the Session's mask clean-up and ``carry_over`` its start of a click's new ROI (None = the
    model's stored setting), ``box_negatives`` whether its box sends negative clicks (the same) and
    ``box_search`` whether it searches for where its positive click goes and ``retry_missed`` whether
    it decodes again when a positive click is left out (both off by default); ``monotone_clicks``
    whether a click's result only adds (positive) or removes (negative) and ``flip_ensemble`` how many
    mirror images of each ROI it averages (None = the model's stored setting, for both).

    The CVPR 2025 box (a 2D box on slice ``z_mid`` + the z range) is given once via ``add_box`` as the
    one-slice box it is: the session segments the 3D object shown in it and clips only slice ``z_mid``
    to the rectangle (the z range has no Session prompt and is not used; the rectangle is tight on
    ``z_mid`` only, so it says nothing of the object's extent on other slices).
    """
    from voxprompt.session import Session

    def factory(image: Image) -> Engine:
        planner = None
        if autozoom:
            from voxprompt.session import AutoZoomPlanner

            planner = AutoZoomPlanner()
        session = Session(model, device=device, planner=planner, refine=refine, clean=clean, carry_over=carry_over,
                          box_negatives=box_negatives, box_search=box_search, retry_missed=retry_missed,
                          monotone_clicks=monotone_clicks, flip_ensemble=flip_ensemble)
        session.set_image(image)
        state = {"clicks": 0, "box": False, "roi": None}

        def engine(clicks: list[Click], box: Box3D | None) -> tuple[np.ndarray, Slices | None]:
            if box is not None and not state["box"]:
                pred = session.add_box((box.z_mid, box.y_min, box.x_min),
                                       (box.z_mid + 1, box.y_max + 1, box.x_max + 1))
                state["box"], state["roi"] = True, pred.roi_bbox
            for c in clicks[state["clicks"]:]:
                pred = session.add_point(c.index, positive=bool(c.label))
                state["roi"] = pred.roi_bbox
            state["clicks"] = len(clicks)
            return session.mask, state["roi"]

        return engine

    return factory


def random_walker_factory(config: Any = None) -> PredictorFactory:
    """Engines of the non-learned random-walker baseline: clicks only, or the box mode of
    :mod:`voxprompt.eval.baseline` when the protocol gives a box (``cvpr25`` with ``use_box``)."""
    from voxprompt.eval.baseline import random_walker_predict_fn

    def factory(image: Image) -> Engine:
        fn = random_walker_predict_fn(image.array, image.spacing[::-1], config)
        return lambda clicks, box: (fn(clicks, box), None)

    return factory


__all__ = ["EvalConfig", "PROTOCOL_SPECS", "checked_gt", "evaluate", "evaluate_target", "random_walker_factory",
           "session_factory", "target_rngs", "target_seed"]
