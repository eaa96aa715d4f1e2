"""Evaluation report: results.csv / results.json, summary.md, Dice-vs-clicks plot, overlays.

Every file is written to a temporary name in the report folder and renamed into place.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from voxprompt.errors import UsageError
from voxprompt.viz.figures import pyplot, save_figure

log = logging.getLogger(__name__)

CSV_COLUMNS = (
    "case", "label", "name", "modality", "group", "split", "voxels", "protocol", "n_clicks",
    "box_dice", "box_nsd", "dice", "nsd", "roi_dice", "dsc_auc", "nsd_auc", "final_dice", "final_nsd",
    "final_roi_dice", "best_dice", "hd95", "seconds_per_click", "box_seconds", "median_click_seconds",
    "total_seconds", "clicks", "box",
)
TIMING_COLUMNS = ("seconds_per_click", "box_seconds", "median_click_seconds", "total_seconds")

# The evaluation groups (docs/default-model.md, *Evaluation*). One table, one home of the rules:
# (group, modalities it applies to, name patterns); first match wins (vessels first: "adrenal_vein",
# "vertebral_artery" are vessels); names are lower-cased with separators as "_"; the modality is the
# target's (voxprompt.data.readers.normalize_modality).
SYNTHETIC_GROUP = "synthetic contrasts"  # every target of a rendered case (voxprompt data render), any name
OTHER_GROUP = "other"
_GROUPS: tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...] = (
    # the heart counts with the vessels (as in the former "heart-vessel" group)
    ("CT vessels", ("CT",),
     (r"heart", r"aort", r"vein", r"arter", r"vena", r"carotid", r"subclavian", r"brachiocephalic", r"atri",
      r"ventric", r"trunk")),
    ("CT bones and muscles", ("CT",),
     (r"vertebra", r"(^|_)ribs?(_|$)", r"stern", r"humer", r"scapul", r"clavic", r"costal", r"femur",
      r"(^|_)hips?(_|$)", r"sacrum", r"skull", r"autochthon", r"iliopsoas", r"glute", r"muscle")),
    ("CT organs", ("CT",),
     (r"liver", r"spleen", r"kidney", r"stomach", r"pancrea", r"adrenal", r"gallbladder", r"bladder", r"colon",
      r"duoden", r"bowel", r"esophag", r"oesophag", r"trachea", r"thyroid", r"prostate", r"lung")),
    ("brain MR deep grey matter", ("MR",),
     (r"hippocamp", r"amygdala", r"caudate", r"putamen", r"pallid", r"thalam")),
)
# report order (tables, plot legend, benchmark summaries)
GROUPS: tuple[str, ...] = ("CT organs", "CT vessels", "CT bones and muscles", "brain MR deep grey matter",
                           SYNTHETIC_GROUP, OTHER_GROUP)
assert sorted(GROUPS[:-2]) == sorted(g for g, _, _ in _GROUPS)


def structure_group(name: str, modality: str) -> str:
    """The evaluation group of a target: one of :data:`GROUPS`.

    Targets of rendered cases (modality ``SYN``, :mod:`voxprompt.data.render`) are "synthetic
    contrasts" whatever their name; otherwise the first group whose modality and name pattern match,
    else "other" (e.g. MR cortex, spinal cord, or a target without a known modality).
    """
    from voxprompt.data.render import SYNTH_MODALITY

    mod = str(modality).strip().upper()
    if mod == SYNTH_MODALITY:
        return SYNTHETIC_GROUP
    key = re.sub(r"[\s\-.]+", "_", str(name).strip().lower())
    for group, modalities, patterns in _GROUPS:
        if mod in modalities and any(re.search(p, key) for p in patterns):
            return group
    return OTHER_GROUP


def group_order(group: str) -> tuple[int, str]:
    """Sort key: the groups in :data:`GROUPS` order, anything else after them by name."""
    return (GROUPS.index(group), "") if group in GROUPS else (len(GROUPS), group)


def add_groups(rows: Iterable[dict]) -> None:
    for row in rows:
        row["group"] = structure_group(row["name"], row["modality"])


# ----------------------------------------------------------------------------- extreme cases
@dataclass
class Extremes:
    """Best and worst target by final Dice, with their final masks (bit-packed)."""

    best: tuple | None = None   # (row, packed mask, shape)
    worst: tuple | None = None

    @staticmethod
    def _dice(row: dict) -> float:
        d = row["final_dice"]
        return d if math.isfinite(d) else -1.0

    def _best_key(self, row: dict) -> tuple:
        return (-self._dice(row), str(row["case"]), int(row["label"]))

    def _worst_key(self, row: dict) -> tuple:
        return (self._dice(row), str(row["case"]), int(row["label"]))

    def add(self, row: dict, mask: np.ndarray) -> None:
        self._offer((row, np.packbits(np.asarray(mask, bool)), tuple(mask.shape)))

    def merge(self, other: Extremes) -> None:
        for item in (other.best, other.worst):
            if item is not None:
                self._offer(item)

    def _offer(self, item: tuple) -> None:
        row = item[0]
        if self.best is None or self._best_key(row) < self._best_key(self.best[0]):
            self.best = item
        if self.worst is None or self._worst_key(row) < self._worst_key(self.worst[0]):
            self.worst = item

    @staticmethod
    def unpack(item: tuple) -> np.ndarray:
        _, packed, shape = item
        return np.unpackbits(packed, count=int(np.prod(shape))).astype(bool).reshape(shape)


# ----------------------------------------------------------------------------- writing helpers
def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _num(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v))
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        return "nan" if math.isnan(v) else f"{float(v):.6g}"
    return str(v)


def _csv_cell(v: Any) -> str:
    if isinstance(v, (list, tuple)):
        if v and isinstance(v[0], (list, tuple)):
            return json.dumps(v, separators=(",", ":"))
        return ";".join(_num(x) for x in v)
    return _num(v)


def _json_safe(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_safe(x) for x in v]
    if isinstance(v, (float, np.floating)):
        return float(v) if math.isfinite(v) else None
    if isinstance(v, np.integer):
        return int(v)
    return v


def results_csv(rows: Sequence[dict]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for row in rows:
        w.writerow([_csv_cell(row.get(c)) for c in CSV_COLUMNS])
    return buf.getvalue()


def timing_note(meta: dict) -> str:
    """What ``seconds_per_click`` (and the summary's s/click) measures, for this run's engine."""
    if meta.get("protocol") == "sam-med2d":
        call = ("the 2D session's add_point on a slice whose image embedding was computed beforehand (the "
                "encoder is not included): prompt encoder, mask decoder, upsampling to the slice")
    elif meta.get("model") == "random-walker":
        call = "the random walker's solve for the clicks so far (on its crop around the prompts)"
    elif "slice_axis" in meta:
        call = ("the slice session's call: the 2D encoder of the prompted slice when new, the decoder, and "
                "propagation to the neighbouring slices")
    else:
        call = ("the engine's call: the session's add_point (ROI planning, crop and resampling, the image "
                "encoder when the ROI is new, the prompt decoder, pasting the ROI mask back, boundary refinement "
                "and clean-up when on)")
    return (f"seconds per click: wall time of {call}; not the simulated user's next-click computation, the "
            "click noise or the Dice/NSD scoring. box_seconds times the box prompt; total_seconds the whole "
            "target with all of these.")


def results_json(rows: Sequence[dict], meta: dict) -> str:
    """``{"meta": {...}, "results": [...]}``, one target per line; NaN / inf become null."""
    items = [json.dumps(_json_safe({c: r.get(c) for c in CSV_COLUMNS}), allow_nan=False) for r in rows]
    return ('{"meta": ' + json.dumps(_json_safe(meta), indent=1, allow_nan=False)
            + ',\n "results": [\n  ' + ",\n  ".join(items) + "\n ]\n}\n")


# ----------------------------------------------------------------------------- summary
def _finite(values: Iterable[Any]) -> np.ndarray:
    a = np.asarray([v for v in values if v is not None], dtype=float)
    return a[np.isfinite(a)]


def _mean_sd(values: Iterable[Any]) -> str:
    a = _finite(values)
    if a.size == 0:
        return "–"
    sd = float(a.std(ddof=1)) if a.size > 1 else 0.0
    return f"{a.mean():.3f} ± {sd:.3f}"


def _median(values: Iterable[Any], fmt: str = "{:.3f}") -> str:
    a = _finite(values)
    return fmt.format(float(np.median(a))) if a.size else "–"


def _table(title: str, groups: dict[str, list[dict]], roi: bool) -> list[str]:
    head = ["n", "final Dice", "final NSD", "DSC AUC", "NSD AUC", "HD95 mm (median)", "s/click (median)"]
    if roi:
        head.insert(3, "final ROI Dice")
    lines = [f"| {title} | " + " | ".join(head) + " |", "|" + "---|" * (len(head) + 1)]
    for key in sorted(groups, key=group_order):
        rs = groups[key]
        cells = [str(len(rs)), _mean_sd(r["final_dice"] for r in rs), _mean_sd(r["final_nsd"] for r in rs),
                 _mean_sd(r["dsc_auc"] for r in rs), _mean_sd(r["nsd_auc"] for r in rs),
                 _median(r["hd95"] for r in rs),
                 _median((s for r in rs for s in r["seconds_per_click"]), "{:.4f}")]
        if roi:
            cells.insert(3, _mean_sd(r["final_roi_dice"] for r in rs))
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    return lines


def _by(rows: Sequence[dict], key: str) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in rows:
        out.setdefault(str(r[key]), []).append(r)
    return out


def summary_markdown(rows: Sequence[dict], meta: dict, overlays: dict[str, dict]) -> str:
    """The Markdown summary: run settings, overall / per-modality / per-group tables."""
    roi = any(math.isfinite(r["final_roi_dice"]) for r in rows)
    lines = [f"# voxprompt eval: {meta['model']} on {meta['data']}", ""]
    for k in ("protocol", "n_clicks", "use_box", "click_noise_mm", "model", "checkpoint", "checkpoint_sha256",
              "seed", "targets", "n_targets", "device", "precision", "world_size", "machine", "torch", "voxprompt",
              "started", "finished"):
        lines.append(f"- **{k}**: {meta.get(k)}")
    if "rw_beta" in meta:  # the random-walker baseline's edge penalty
        lines.append(f"- **rw_beta**: {meta['rw_beta']:g}")
    n_inf = sum(1 for r in rows if not math.isfinite(r["hd95"]))
    lines += ["", "Values are mean ± sd over targets; Dice/NSD are after the last click; NSD tolerance "
              f"{'2 mm' if meta['protocol'] == 'cvpr25' else '1 mm'}; AUCs are trapezoids over the clicks. "
              f"HD95 is the median of finite values ({n_inf} target(s) with an empty prediction). "
              "Latency (s/click) is the median over clicks; " + meta.get("timing", timing_note(meta)), ""]
    lines += _table("overall", {"all": list(rows)}, roi) + [""]
    lines += _table("modality", _by(rows, "modality"), roi) + [""]
    lines += _table("group", _by(rows, "group"), roi) + [""]
    n = max(len(r["dice"]) for r in rows)
    curve = [_mean_sd(r["dice"][k] for r in rows if k < len(r["dice"])) for k in range(n)]
    lines += ["## Dice after each click", "", "| click | " + " | ".join(str(k + 1) for k in range(n)) + " |",
              "|" + "---|" * (n + 1), "| Dice | " + " | ".join(curve) + " |", "",
              "![Dice vs clicks](dice_vs_clicks.png)", ""]
    for which, info in overlays.items():
        lines += [f"**{which} case**: {info['case']} label {info['label']} ({info['name']}), "
                  f"final Dice {info['final_dice']:.3f}", "", f"![{which}]({info['file']})", ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- plots
def plot_dice_vs_clicks(rows: Sequence[dict], path: Path) -> None:
    """Mean Dice after each click, one line per structure group plus the overall mean."""
    plt = pyplot()
    from matplotlib.ticker import MaxNLocator

    box = all(r.get("box_dice") is not None for r in rows)  # cvpr25 with a box: step 0

    def curve(rs: list[dict]) -> tuple[np.ndarray, np.ndarray]:
        steps = [([r["box_dice"]] if box else []) + list(r["dice"]) for r in rs]
        n = max(len(s) for s in steps)
        y = np.array([np.nanmean([s[k] for s in steps if k < len(s)]) for k in range(n)])
        return np.arange(n) + (0 if box else 1), y

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for group, rs in sorted(_by(rows, "group").items(), key=lambda kv: group_order(kv[0])):
        ax.plot(*curve(rs), marker="o", label=f"{group} (n={len(rs)})")
    ax.plot(*curve(list(rows)), color="black", linestyle="--", linewidth=2, label="all")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("click (0 = box)" if box else "click")
    ax.set_ylabel("mean Dice")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    save_figure(fig, path, dpi=90)


def write_overlays(extremes: Extremes, targets: dict[tuple, Any], loader: Callable, out: Path) -> dict[str, dict]:
    """``best_case.png`` / ``worst_case.png``: final masks through the GT's centre of mass."""
    from voxprompt.viz.overlay import save_overlay

    written: dict[str, dict] = {}
    for which, item in (("best", extremes.best), ("worst", extremes.worst)):
        if item is None:
            continue
        row = item[0]
        image, gt = loader(targets[(row["case"], row["label"])])
        centre = np.argwhere(np.asarray(gt, bool)).mean(axis=0).round().astype(int)
        fname = f"{which}_case.png"
        save_overlay(image, Extremes.unpack(item), out / fname, point_zyx=centre,
                     title=f"{which}: {row['case']} {row['name']}  Dice {row['final_dice']:.3f}")
        written[which] = {"file": fname, **{k: row[k] for k in ("case", "label", "name", "final_dice")}}
    return written


# ----------------------------------------------------------------------------- entry points
def check_report_dir(path: Path, force: bool) -> None:
    """Refuse a file, or a non-empty folder unless ``force``."""
    if path.exists() and not path.is_dir():
        raise UsageError(f"--out {path}: exists and is not a folder")
    if path.is_dir() and any(path.iterdir()) and not force:
        raise UsageError(f"--out {path}: folder is not empty (use --force to overwrite)")


@dataclass
class Report:
    """Everything the report needs, written by :meth:`write`."""

    rows: list[dict]
    meta: dict
    extremes: Extremes = field(default_factory=Extremes)

    def write(self, out: Path, targets: dict[tuple, Any], loader: Callable | None) -> None:
        out.mkdir(parents=True, exist_ok=True)
        self.meta.setdefault("timing", timing_note(self.meta))
        add_groups(self.rows)
        atomic_write_text(out / "results.csv", results_csv(self.rows))
        atomic_write_text(out / "results.json", results_json(self.rows, self.meta))
        plot_dice_vs_clicks(self.rows, out / "dice_vs_clicks.png")
        overlays = write_overlays(self.extremes, targets, loader, out) if loader is not None else {}
        atomic_write_text(out / "summary.md", summary_markdown(self.rows, self.meta, overlays))
        log.info("wrote the report to %s", out)


__all__ = ["CSV_COLUMNS", "GROUPS", "OTHER_GROUP", "SYNTHETIC_GROUP", "TIMING_COLUMNS", "Extremes", "Report",
           "add_groups", "atomic_write_text", "check_report_dir", "group_order", "results_csv", "structure_group",
           "summary_markdown", "timing_note"]
