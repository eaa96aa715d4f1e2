"""Training configuration: dataclasses validated from YAML (unknown keys are errors)."""
from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..errors import UsageError

LOSSES = ("dice_ce", "focal_dice", "focal_20dice")
AMP = ("none", "bf16", "fp16")
CLICK_MODES = ("mixed", "cvpr25", "random")
INIT_MODES = ("strict", "load_from", "grow")


@dataclass
class DataSource:
    """One labelled dataset (nnU-Net v2 raw, MSD or SAM-Med3D layout) and its sampling weight."""

    path: str
    weight: float = 1.0
    split: str | None = "train"  # targets of this split (None: all)
    min_voxels: int = 200
    cases: list | None = None  # only these cases (e.g. to keep research-only labels out)
    render_prob: float = 0.0  # share of samples whose image is rendered from the label map (data.render)
    size_power: float = 0.0  # targets drawn with probability ~ voxels ** size_power (0: uniform)

    def __post_init__(self) -> None:
        if not 0.0 <= self.render_prob <= 1.0:
            raise UsageError(f"train config: data[]: render_prob must be in [0, 1], got {self.render_prob}")
        if not 0.0 <= self.size_power <= 2.0:
            raise UsageError(f"train config: data[]: size_power must be in [0, 2], got {self.size_power}")


@dataclass
class SyntheticSource:
    """Procedurally generated shapes (:mod:`voxprompt.train.synthetic`)."""

    weight: float = 0.0
    min_objects: int = 2
    max_objects: int = 7


@dataclass
class AugmentConfig:
    spacing_scale: tuple[float, float] = (0.8, 2.0)  # ROI spacing = model spacing x U(log range)
    center_jitter: float = 0.25  # fraction of the ROI side
    flip: bool = True
    intensity_scale: tuple[float, float] = (0.8, 1.25)
    intensity_shift: float = 0.2
    noise_std: float = 0.05
    centered_click: float = 0.0  # share of samples whose ROI is centred on their first click, as at inference
    # real samples warped (train/warp.py): rotation about each axis, per-axis scale (log-uniform; > 1
    # shows the anatomy larger), smooth elastic displacement (ROI voxels). 0: off, as before stage 22
    warp_prob: float = 0.0
    warp_rotate_deg: float = 15.0
    warp_scale: tuple[float, float] = (0.85, 1.18)
    warp_elastic_voxels: float = 3.0

    def __post_init__(self) -> None:
        scale = tuple(self.warp_scale)
        checks = [
            (0 <= self.centered_click <= 1, f"centered_click must be in [0, 1], got {self.centered_click}"),
            (0 <= self.warp_prob <= 1, f"warp_prob must be in [0, 1], got {self.warp_prob}"),
            (0 <= self.warp_rotate_deg <= 45, f"warp_rotate_deg must be in [0, 45], got {self.warp_rotate_deg}"),
            (len(scale) == 2 and 0 < scale[0] <= scale[1],
             f"warp_scale must be (low, high) with 0 < low <= high, got {self.warp_scale}"),
            (self.warp_elastic_voxels >= 0, f"warp_elastic_voxels must be >= 0, got {self.warp_elastic_voxels}"),
        ]
        for ok, msg in checks:
            if not ok:
                raise UsageError(f"train config: augment: {msg}")


@dataclass
class Train2DConfig:
    """2D models only: how slices and prompts are drawn (SAM-Med2D's recipe by default)."""

    slice_axes: list = field(default_factory=lambda: [0])  # array axes along which 3D targets are sliced
    min_fraction: float = 100 / 256**2  # a slice's foreground must exceed this fraction (SAM-UNet's rule)
    window: str | None = None  # CT window of the slices (preset or "W,L"); None: volume 0.5-99.5 percentiles
    box_prob: float | None = None  # first prompt is a box with this probability (None: SAM-UNet 1, else 0.5)
    point_choices: list = field(default_factory=lambda: [1, 3, 5, 9])  # points per correction round
    mask_only_last: bool = True  # with click_steps >= 3 the last round feeds only the previous mask
    box_jitter: int = 5  # max box translation in pixels (SAM-Med2D's get_boxes_from_mask)
    channel_order: str | None = None  # None: the model's official colour order
    synthetic_size: int = 64  # side of the synthetic volumes that 2D synthetic samples are sliced from

    def __post_init__(self) -> None:
        axes = list(self.slice_axes)
        checks = [
            (bool(axes) and all(a in (0, 1, 2) for a in axes), f"slice_axes must list 0, 1 or 2, got {axes}"),
            (0 <= self.min_fraction < 1, f"min_fraction must be in [0, 1), got {self.min_fraction}"),
            (self.box_prob is None or 0 <= self.box_prob <= 1, f"box_prob must be in [0, 1], got {self.box_prob}"),
            (bool(self.point_choices) and all(isinstance(n, int) and n >= 1 for n in self.point_choices),
             f"point_choices must be positive integers, got {self.point_choices}"),
            (self.box_jitter >= 0 and self.synthetic_size >= 16, "box_jitter must be >= 0, synthetic_size >= 16"),
            (self.channel_order in (None, "rgb", "bgr"),
             f"channel_order must be rgb or bgr, got {self.channel_order!r}"),
        ]
        for ok, msg in checks:
            if not ok:
                raise UsageError(f"train config: train2d: {msg}")
        if self.window is not None:
            from ..preprocess.image2d import parse_window

            parse_window(self.window)


@dataclass
class TrainConfig:
    """Everything a run needs; ``voxprompt train CONFIG.yaml`` reads this from YAML."""

    model: str = "voxprompt-med3d-small"
    model_overrides: dict = field(default_factory=dict)  # SamConfig fields
    init_checkpoint: str | None = None  # a checkpoint path, "shipped" (the package's weights) or None
    # "load_from": SAM-Med2D's resize of SAM weights of another input size; "grow": every checkpoint
    # tensor loads exactly, and modules the checkpoint lacks (a boundary head) keep their initialisation
    init_mode: str = "strict"
    trust_pickle: bool = False
    freeze: str | list = field(default_factory=list)  # frozen name prefixes, or paper / decoder / none
    data: list = field(default_factory=list)  # DataSource
    synthetic: SyntheticSource = field(default_factory=SyntheticSource)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    train2d: Train2DConfig = field(default_factory=Train2DConfig)  # 2D models only
    steps: int = 1000
    batch_size: int = 2
    grad_accum: int = 1
    lr: float = 2e-4
    min_lr_ratio: float = 0.05
    warmup_steps: int = 100
    weight_decay: float = 0.05
    grad_clip: float = 1.0
    click_steps: int = 4  # decoder passes per sample: first click, then corrections
    click_mode: str = "mixed"
    loss: str = "dice_ce"
    iou_loss_weight: float = 1.0
    mask_prior_prob: float = 0.0  # 3D: share of samples started from a session-style mask prior (train/priors.py)
    first_click_weight: float = 1.0  # 3D: the first pass's loss weight against 1 for each later one
    box_prob: float = 0.0  # 3D: share of samples (without a prior) started from a box's prompt with face negatives
    multimask_first: bool = False  # 3D: a first click without a prior also trains the multimask outputs (best-of loss)
    multimask_warm_start: bool = False  # before training: multimask tokens start as copies of the single-mask token
    amp: str = "none"
    ema: float = 0.0  # decay; 0 disables
    seed: int = 0
    out_dir: str = "runs/train"
    save_every: int = 200
    log_every: int = 10
    keep_checkpoints: int = 2
    device: str = "cpu"
    num_threads: int = 0  # 0: torch default
    num_workers: int = 0  # DataLoader processes drawing batches (GPU runs); 0: in the main process

    def __post_init__(self) -> None:
        checks = [
            (self.loss in LOSSES, f"loss must be one of {LOSSES}, got {self.loss!r}"),
            (self.amp in AMP, f"amp must be one of {AMP}, got {self.amp!r}"),
            (self.click_mode in CLICK_MODES, f"click_mode must be one of {CLICK_MODES}, got {self.click_mode!r}"),
            (self.steps > 0 and self.batch_size > 0 and self.grad_accum > 0,
             "steps, batch_size and grad_accum must be positive"),
            (self.click_steps >= 1, f"click_steps must be >= 1, got {self.click_steps}"),
            (self.lr > 0, f"lr must be positive, got {self.lr}"),
            (0 <= self.ema < 1, f"ema must be in [0, 1), got {self.ema}"),
            (0 <= self.mask_prior_prob <= 1, f"mask_prior_prob must be in [0, 1], got {self.mask_prior_prob}"),
            (self.first_click_weight > 0, f"first_click_weight must be positive, got {self.first_click_weight}"),
            (0 <= self.box_prob <= 1, f"box_prob must be in [0, 1], got {self.box_prob}"),
            (self.save_every > 0 and self.log_every > 0, "save_every and log_every must be positive"),
            (self.init_mode in INIT_MODES, f"init_mode must be one of {INIT_MODES}, got {self.init_mode!r}"),
            (self.init_mode == "strict" or self.init_checkpoint is not None,
             f"init_mode {self.init_mode} needs init_checkpoint"),
            (isinstance(self.freeze, (str, list)), f"freeze must be a preset name or a list, got {self.freeze!r}"),
        ]
        for ok, msg in checks:
            if not ok:
                raise UsageError(f"train config: {msg}")
        self.data = [d if isinstance(d, DataSource) else _build(DataSource, d, "data[]") for d in self.data]
        if not self.data and self.synthetic.weight <= 0:
            raise UsageError("train config: no data: give `data:` sources and/or `synthetic: {weight: > 0}`")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _build(cls: type, d: Any, where: str) -> Any:
    """Instantiate a config dataclass from a mapping, recursively, naming bad keys."""
    if not isinstance(d, Mapping):
        raise UsageError(f"train config: {where} must be a mapping, got {type(d).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise UsageError(f"train config: unknown key(s) {unknown} in {where}; known: {sorted(names)}")
    kwargs = {}
    for key, value in d.items():
        hint = hints[key]
        if dataclasses.is_dataclass(hint) and isinstance(value, Mapping):
            value = _build(hint, value, f"{where}.{key}")
        elif typing.get_origin(hint) is tuple and isinstance(value, list):
            value = tuple(value)
        kwargs[key] = value
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise UsageError(f"train config: {where}: {exc}") from None


def config_from_dict(d: Mapping[str, Any]) -> TrainConfig:
    return _build(TrainConfig, d, "config")


def load_config(path: str | Path) -> TrainConfig:
    """Read and validate a YAML training config."""
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"train config {p}: no such file")
    try:
        d = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise UsageError(f"train config {p}: not valid YAML ({str(exc).splitlines()[0]})") from None
    try:
        return config_from_dict(d)
    except UsageError as exc:
        raise UsageError(f"{p}: {exc}") from None
