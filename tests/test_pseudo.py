"""Unsupervised region labels (voxprompt data pseudo): regions follow intensity, held-out targets
and excluded cases stay out, the output is a dataset training can read."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from voxprompt.cli import main
from voxprompt.data.build import build_dataset
from voxprompt.data.pseudo import PseudoConfig, build_pseudo, merge_supervoxels, region_maps
from voxprompt.data.readers import load_target, open_dataset
from voxprompt.data.sources import SourceCase
from voxprompt.errors import UsageError
from voxprompt.io.image import Image

CFG = PseudoConfig(supervoxel_voxels=64, tolerances=(0.03, 0.1), min_voxels=100, max_voxels=20_000)


def _blocks() -> tuple[np.ndarray, np.ndarray]:
    """A 24x32x32 'CT': body of 3 tissue blocks (40 / 200 / 700 HU) in air, with noise."""  # noqa: D401
    rng = np.random.default_rng(0)
    arr = np.full((24, 32, 32), -1000.0)
    lab = np.zeros(arr.shape, np.uint8)
    arr[2:22, 2:30, 2:12], lab[2:22, 2:30, 2:12] = 40, 1  # "liver": held out (test split)
    arr[2:22, 2:30, 12:22], lab[2:22, 2:30, 12:22] = 200, 2  # "rib_left_1": train
    arr[2:22, 2:30, 22:30] = 700  # unlabelled tissue
    arr += rng.normal(0, 5, arr.shape)
    return arr.astype(np.int16), lab


def _source(case: str):
    def source(cache: Path) -> SourceCase:
        arr, lab = _blocks()
        image = Image(arr, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), np.eye(3))
        return SourceCase(case, image, Image(lab, image.spacing, image.origin, image.direction),
                          {1: "liver", 2: "rib_left_1"}, "CT", "test licence", "synthetic")
    return source


@pytest.fixture()
def built(tmp_path: Path) -> Path:
    out = tmp_path / "real"
    build_dataset(out, [("a", _source("ct_a")), ("b", _source("colin27_aal"))], spacing=1.0, progress=False)
    return out


def test_merge_supervoxels_joins_similar_neighbours_only():
    seg = np.array([[[1, 1, 2, 2, 3, 3, 4, 4]]])
    val = np.array([[[0.10, 0.10, 0.12, 0.12, 0.50, 0.50, 0.52, 0.52]]])
    merged = merge_supervoxels(seg, val, tol=0.05)
    assert merged[0, 0].tolist() == [1, 1, 1, 1, 2, 2, 2, 2]
    assert merge_supervoxels(seg, val, tol=1.0)[0, 0].tolist() == [1] * 8
    assert merge_supervoxels(seg, val, tol=0.01)[0, 0].tolist() == [1, 1, 2, 2, 3, 3, 4, 4]


def test_regions_follow_intensity_and_skip_excluded():
    arr, lab = _blocks()
    maps = region_maps(arr, "CT", CFG, exclude=lab == 1)
    assert len(maps) == 2
    coarse = maps[-1]
    assert coarse.max() >= 2
    for k in range(1, int(coarse.max()) + 1):
        region = coarse == k
        assert (region & (lab == 1)).sum() <= 0.05 * region.sum()  # held-out block excluded
        assert (arr[region] < -500).mean() < 0.05  # no air
        # each region lies within one tissue block (intensity purity)
        hu = np.round(np.median(arr[region]) / 100)
        assert (np.abs(np.round(arr[region] / 100) - hu) < 1).mean() > 0.9
    # the train block is recovered as (almost) one region at the coarse level
    block = lab == 2
    best = max(2 * (block & (coarse == k)).sum() / (block.sum() + (coarse == k).sum())
               for k in range(1, int(coarse.max()) + 1))
    assert best > 0.8


def test_build_pseudo_writes_a_training_dataset(built: Path, tmp_path: Path):
    out = tmp_path / "pseudo"
    res = build_pseudo(built, out, cfg=CFG)
    assert res["cases"] == ["ct_a_pl0", "ct_a_pl1"]  # colin27_aal excluded by default
    targets = open_dataset(out, split="train")
    assert len(targets) == res["targets"] > 0 and {t.modality for t in targets} == {"CT"}
    image, mask = load_target(targets[0])
    assert mask.sum() == targets[0].voxels >= CFG.min_voxels and image.shape == mask.shape
    with pytest.raises(UsageError, match="not empty"):
        build_pseudo(built, out, cfg=CFG)
    with pytest.raises(UsageError, match="no case"):
        build_pseudo(built, tmp_path / "x", cases=["nope"], cfg=CFG)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pseudo", "real"]  # nothing half-written


def test_cli_pseudo_errors_cleanly(tmp_path: Path, capsys):
    assert main(["data", "pseudo", str(tmp_path / "missing"), str(tmp_path / "out")]) != 0
    assert "targets.csv" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
