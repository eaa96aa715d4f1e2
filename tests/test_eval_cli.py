"""``voxprompt eval``: runner, report and CLI on a tiny synthetic nnU-Net v2 raw dataset."""
from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import ROOT, FakeTarget

from voxprompt.cli import main
from voxprompt.eval.report import GROUPS, TIMING_COLUMNS, group_order, structure_group
from voxprompt.eval.runner import evaluate, session_factory, target_seed
from voxprompt.io.image import Image

SHAPE = (40, 40, 40)
SPACING = 1.0
# case -> modality, [(label id, name, split, kind, centre zyx, radius / half side)]
CASES = {
    "synth_ct": ("CT", [(1, "liver", "test", "sphere", (20, 14, 14), 7),
                        (2, "vertebrae_T1", "train", "cube", (20, 28, 28), 5)]),
    "synth_mr": ("MR", [(3, "Hippocampus_L", "test", "sphere", (18, 20, 22), 6)]),
}


def _volume(objects: list, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    img = rng.normal(0.0, 5.0, SHAPE).astype(np.float32)
    lab = np.zeros(SHAPE, np.uint8)
    zz, yy, xx = np.indices(SHAPE)
    for label, _, _, kind, (z, y, x), r in objects:
        if kind == "sphere":
            m = (zz - z) ** 2 + (yy - y) ** 2 + (xx - x) ** 2 <= r ** 2
        else:
            m = (abs(zz - z) <= r) & (abs(yy - y) <= r) & (abs(xx - x) <= r)
        lab[m] = label
        img[m] += 100.0
    return img, lab


def _memory_targets() -> tuple[list[FakeTarget], dict]:
    targets, data = [], {}
    for i, (case, (modality, objects)) in enumerate(CASES.items()):
        img, lab = _volume(objects, i)
        image = Image(img, spacing=(SPACING,) * 3, origin=(0.0, 0.0, 0.0), direction=np.eye(3))
        for label, name, split, *_ in objects:
            t = FakeTarget(case, label, name, modality, split)
            targets.append(t)
            data[(case, label)] = (image, lab == label)
    return targets, data


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """nnU-Net v2 raw layout: dataset.json, imagesTr, labelsTr, targets.csv."""
    root = tmp_path_factory.mktemp("eval") / "Dataset001_synth"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    labels, rows = {"background": 0}, []
    for i, (case, (modality, objects)) in enumerate(CASES.items()):
        img, lab = _volume(objects, i)
        files = (root / "imagesTr" / f"{case}_0000.nii.gz", root / "labelsTr" / f"{case}.nii.gz")
        for arr, path in zip((img, lab), files):
            im = sitk.GetImageFromArray(arr)
            im.SetSpacing((SPACING,) * 3)
            sitk.WriteImage(im, str(path))
        for label, name, split, *_ in objects:
            labels[name] = label
            rows.append([case, label, name, modality, int((lab == label).sum()), split])
    (root / "dataset.json").write_text(json.dumps({
        "name": "synth", "channel_names": {"0": "image"}, "labels": labels, "numTraining": len(CASES),
        "file_ending": ".nii.gz"}))
    with open(root / "targets.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["case", "label", "name", "modality", "voxels", "split"])
        w.writerows(rows)
    return root


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> Path:
    """A randomly initialised tiny SAM-Med3D-family model (32^3 ROI) as voxprompt safetensors."""
    import torch

    import voxprompt
    from voxprompt.models.checkpoints import save_safetensors

    cfg = voxprompt.SamConfig(spatial_dims=3, img_size=32, in_chans=1, patch_size=8, embed_dim=32, depth=1,
                              num_heads=2, global_attn_indexes=(0,), window_size=0, prompt_embed_dim=24,
                              decoder_num_heads=4, num_point_embeddings=2, decoder_mlp_dim=64,
                              iou_head_hidden_dim=32, mask_in_chans=8)
    torch.manual_seed(0)
    model = voxprompt.build_model(cfg, name="sam-med3d")
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    return save_safetensors(model.state_dict(), path, "sam-med3d", cfg.to_dict())


def _readers():
    return pytest.importorskip("voxprompt.data.readers", reason="voxprompt.data.readers not available yet")


def _read_csv(path: Path, drop_timing: bool = False) -> list[dict]:
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if drop_timing:
        rows = [{k: v for k, v in r.items() if k not in TIMING_COLUMNS} for r in rows]
    return rows


def _run(args: list[str], capsys) -> tuple[int, str]:
    rc = main(["eval", *args])
    return rc, capsys.readouterr().err


# ----------------------------------------------------------------------------- pure helpers
def test_structure_group_and_target_seed():
    assert structure_group("vertebrae_T1", "CT") == "CT bones and muscles"
    assert structure_group("rib_left_3", "CT") == "CT bones and muscles"
    assert structure_group("iliopsoas_left", "CT") == "CT bones and muscles"
    assert structure_group("lung_upper_lobe_left", "CT") == "CT organs"
    assert structure_group("Hippocampus_L", "MR") == "brain MR deep grey matter"
    assert structure_group("Precentral_L", "MR") == "other"
    assert structure_group("liver", "CT") == "CT organs"
    assert structure_group("adrenal_gland_left", "CT") == "CT organs"
    assert structure_group("aorta", "CT") == "CT vessels"
    assert structure_group("heart", "CT") == "CT vessels"  # the heart counts with the vessels
    assert structure_group("portal_vein_and_splenic_vein", "CT") == "CT vessels"
    assert structure_group("uterine_thing", "CT") == "other"
    assert structure_group("liver", "") == "other" and structure_group("Hippocampus_L", "CT") == "other"
    assert structure_group("liver", "SYN") == structure_group("Hippocampus_L", "SYN") == "synthetic contrasts"
    assert set(GROUPS) == {"CT organs", "CT vessels", "CT bones and muscles", "brain MR deep grey matter",
                           "synthetic contrasts", "other"}
    assert sorted(["other", "CT vessels", "zzz", "CT organs"], key=group_order) == \
        ["CT organs", "CT vessels", "other", "zzz"]
    assert target_seed(0, "a", 1) == target_seed(0, "a", 1)
    assert len({target_seed(0, "a", 1), target_seed(1, "a", 1), target_seed(0, "b", 1), target_seed(0, "a", 2)}) == 4


# ----------------------------------------------------------------------------- runner in memory
def _threshold_factory(image: Image):
    """A fake engine: every bright voxel, with a fixed 'ROI' (instant, for plumbing tests)."""
    def engine(clicks, box):
        return image.array > 50, (slice(0, 30),) * 3
    return engine


def _strip_timing(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING_COLUMNS} for r in rows]


def test_runner_rows_are_per_target_seeded():
    targets, data = _memory_targets()
    loader = lambda t: data[(t.case, t.label)]  # noqa: E731
    kw = dict(n_clicks=4, click_noise_mm=1.5, loader=loader)
    a = evaluate(targets, _threshold_factory, "sam-med3d", 7, **kw)
    b = evaluate(targets[::-1], _threshold_factory, "sam-med3d", 7, **kw)[::-1]
    assert _strip_timing(a) == _strip_timing(b)  # independent of order (and so of sharding)
    c = evaluate(targets, _threshold_factory, "sam-med3d", 8, **kw)
    assert [r["clicks"] for r in a] != [r["clicks"] for r in c]
    ct = a[0]  # two bright objects in that volume: the threshold over-segments the liver sphere
    assert len(ct["dice"]) == len(ct["roi_dice"]) == len(ct["seconds_per_click"]) == 4
    assert 0 < ct["final_dice"] < 1 and np.isfinite(ct["final_roi_dice"]) and np.isfinite(ct["hd95"])
    assert a[2]["final_dice"] == 1.0 and a[2]["dsc_auc"] == pytest.approx(3.0)
    (box,) = evaluate(targets[:1], _threshold_factory, "cvpr25", 0, n_clicks=2, loader=loader)
    assert box["box"] is not None and box["box_dice"] == ct["final_dice"] and box["box_seconds"] >= 0
    (nobox,) = evaluate(targets[:1], _threshold_factory, "cvpr25", 0, n_clicks=2, use_box=False, loader=loader)
    assert nobox["box"] is None and nobox["box_dice"] is None


def test_runner_session_tiny_model(tiny_ckpt):
    import voxprompt

    targets, data = _memory_targets()
    loader = lambda t: data[(t.case, t.label)]  # noqa: E731
    model = voxprompt.load_model("sam-med3d", tiny_ckpt)
    factory = session_factory(model)
    (row,) = evaluate(targets[:1], factory, "cvpr25", 0, n_clicks=2, loader=loader)
    assert row["box"] is not None and row["box_dice"] is not None and len(row["dice"]) == 2
    assert 0.0 <= row["final_dice"] <= 1.0 and row["box_seconds"] > 0
    (row,) = evaluate(targets[1:2], factory, "sam-med3d", 0, n_clicks=2, loader=loader)
    assert len(row["roi_dice"]) == 2 and np.isfinite(row["final_roi_dice"]) and row["box"] is None


def test_runner_session_switches_reach_the_session(tiny_ckpt, monkeypatch):
    import voxprompt
    from voxprompt.session import Session

    seen = []
    init = Session.__init__

    def spy(self, *args, **kw):
        init(self, *args, **kw)
        seen.append((self.box_search, self.retry_missed, self.monotone_clicks, len(self.predictor.flips)))

    monkeypatch.setattr(Session, "__init__", spy)
    targets, data = _memory_targets()
    loader = lambda t: data[(t.case, t.label)]  # noqa: E731
    model = voxprompt.load_model("sam-med3d", tiny_ckpt)
    for kw in ({}, {"box_search": True, "retry_missed": True, "monotone_clicks": True, "flip_ensemble": 4}):
        evaluate(targets[:1], session_factory(model, **kw), "cvpr25", 0, n_clicks=1, loader=loader)
    assert seen == [(False, False, False, 1), (True, True, True, 4)]


def test_runner_gives_the_cvpr_box_as_the_one_slice_box_it_is(tiny_ckpt, monkeypatch):
    """The CVPR 2025 box is tight on slice z_mid only: the session gets that 2D box (a 3D object)."""
    import voxprompt
    from voxprompt.session import Session

    seen = []
    add_box = Session.add_box

    def spy(self, lo, hi):
        seen.append((tuple(int(v) for v in lo), tuple(int(v) for v in hi)))
        return add_box(self, lo, hi)

    monkeypatch.setattr(Session, "add_box", spy)
    targets, data = _memory_targets()
    loader = lambda t: data[(t.case, t.label)]  # noqa: E731
    factory = session_factory(voxprompt.load_model("sam-med3d", tiny_ckpt))
    (row,) = evaluate(targets[:1], factory, "cvpr25", 0, n_clicks=1, loader=loader)
    z_min, z_max, z_mid, y_min, x_min, y_max, x_max = row["box"]
    assert z_min < z_mid < z_max  # a 3D target, so the one-slice box is not its whole z range
    assert seen == [((z_mid, y_min, x_min), (z_mid + 1, y_max + 1, x_max + 1))]


# ----------------------------------------------------------------------------- CLI
def test_cli_bad_input(tmp_path, capsys, tiny_ckpt):
    data = tmp_path / "data"
    data.mkdir()
    out = tmp_path / "out"
    base = ["--model", "random-walker", "--protocol", "cvpr25", "--out", str(out)]
    cases = [
        ["--data", str(tmp_path / "missing"), *base],
        ["--data", str(data), "--model", "random-walker", "--protocol", "nope", "--out", str(out)],
        ["--data", str(data), "--model", "sam-med3d", "--checkpoint", str(tiny_ckpt), "--protocol", "sam-med2d",
         "--out", str(out)],
        ["--data", str(data), "--model", "no-such-model", "--protocol", "cvpr25", "--out", str(out)],
        ["--data", str(data), *base, "--rw-beta", "0"],
    ]
    for args in cases:
        rc, err = _run(args, capsys)
        assert rc == 2 and err.startswith("voxprompt: error:") and err.count("\n") == 1, (args, err)
    out.mkdir()
    (out / "old.txt").write_text("x")
    rc, err = _run(["--data", str(data), *base], capsys)
    assert rc == 2 and "not empty" in err and err.count("\n") == 1
    assert (out / "old.txt").read_text() == "x"


def test_cli_random_walker_report_then_tiny_model(dataset, tiny_ckpt, tmp_path, capsys):
    _readers()
    out = tmp_path / "report"
    rc, err = _run(["--model", "random-walker", "--data", str(dataset), "--protocol", "cvpr25", "--out", str(out),
                    "--targets", "all", "--clicks", "2"], capsys)
    assert rc == 0, err
    for name in ("results.csv", "results.json", "summary.md", "dice_vs_clicks.png", "best_case.png",
                 "worst_case.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left
    rows = _read_csv(out / "results.csv")
    assert [(r["case"], r["name"]) for r in rows] == [(c, o[1]) for c, (_, objs) in CASES.items() for o in objs]
    by_name = {r["name"]: r for r in rows}
    assert float(by_name["liver"]["final_dice"]) > 0.8  # an easy sphere
    assert by_name["vertebrae_T1"]["group"] == "CT bones and muscles" and len(by_name["liver"]["dice"].split(";")) == 2
    # cvpr25 with its box: the walker runs its box mode (the box step is scored)
    assert float(by_name["liver"]["box_dice"]) > 0.8 and by_name["liver"]["box"] != ""
    doc = json.loads((out / "results.json").read_text())
    assert doc["meta"]["model"] == "random-walker" and len(doc["results"]) == 3
    assert doc["meta"]["refine_band_mm"] is None and doc["meta"]["use_box"]  # not a model
    assert doc["meta"]["rw_beta"] == 500.0
    summary = (out / "summary.md").read_text()
    assert "| modality |" in summary and "| group |" in summary and "brain MR deep grey matter" in summary
    assert "torch" in summary and "s/click" in summary and "**rw_beta**: 500" in summary

    # the tuned walker, clicks only
    rc, err = _run(["--model", "random-walker", "--data", str(dataset), "--protocol", "cvpr25", "--out", str(out),
                    "--targets", "test", "--clicks", "2", "--no-box", "--rw-beta", "2000", "--force"], capsys)
    assert rc == 0, err
    doc = json.loads((out / "results.json").read_text())
    assert doc["meta"]["rw_beta"] == 2000.0 and not doc["meta"]["use_box"]
    assert all(r["box"] is None and r["box_dice"] is None for r in doc["results"])

    # a (random, tiny) SAM-Med3D-family model, the SAM-Med3D protocol, noisy clicks, --force
    rc, err = _run(["--model", "sam-med3d", "--checkpoint", str(tiny_ckpt), "--data", str(dataset), "--protocol",
                    "sam-med3d", "--out", str(out), "--targets", "test", "--clicks", "2", "--click-noise", "1",
                    "--force", "--precision", "bf16"], capsys)
    assert rc == 0, err
    rows = _read_csv(out / "results.csv")
    assert [r["name"] for r in rows] == ["liver", "Hippocampus_L"]
    assert all(r["final_roi_dice"] not in ("", "nan") for r in rows)
    summary = (out / "summary.md").read_text()
    assert "checkpoint_sha256" in summary and "sam-med3d" in summary and "**precision**: bf16" in summary
    meta = json.loads((out / "results.json").read_text())["meta"]
    assert meta["refine_band_mm"] == 0.0 and meta["clean"] is False  # both off for this model

    # --refine on a model that stores no band: the default band, recorded in the report (--clean likewise)
    rc, err = _run(["--model", "sam-med3d", "--checkpoint", str(tiny_ckpt), "--data", str(dataset), "--out",
                    str(out), "--targets", "test", "--protocol", "cvpr25", "--clicks", "1", "--force", "--refine",
                    "--clean"], capsys)
    assert rc == 0, err
    from voxprompt.refine import RefineConfig

    meta = json.loads((out / "results.json").read_text())["meta"]
    assert meta["refine_band_mm"] == RefineConfig().band_mm and meta["clean"] is True


def test_cli_only_runs_chosen_targets_and_report_says_what_a_click_time_is(dataset, tmp_path, capsys):
    """Issue 20 #17: --only NAME [NAME ...] (structure, CASE:NAME, CASE:LABEL); --targets stays the split;
    the report states what seconds per click includes."""
    _readers()
    out = tmp_path / "only"
    base = ["--model", "random-walker", "--data", str(dataset), "--protocol", "cvpr25", "--clicks", "1"]
    rc, err = _run([*base, "--out", str(out), "--targets", "all", "--only", "vertebrae_t1", "synth_mr:3"], capsys)
    assert rc == 0, err
    doc = json.loads((out / "results.json").read_text())
    assert [r["name"] for r in doc["results"]] == ["vertebrae_T1", "Hippocampus_L"]
    assert doc["meta"]["only"] == ["vertebrae_t1", "synth_mr:3"] and doc["meta"]["targets"] == "all"
    timing = doc["meta"]["timing"]
    assert "random walker's solve" in timing and "not the simulated user's next-click computation" in timing
    assert "not the simulated user's next-click computation" in (out / "summary.md").read_text()
    # a 3D model's note names the session's steps
    from voxprompt.eval.report import timing_note

    note = timing_note({"protocol": "cvpr25", "model": "sam-med3d"})
    assert "encoder when the ROI is new" in note and "refinement" in note and "clean-up" in note
    assert "encoder is not included" in timing_note({"protocol": "sam-med2d", "model": "sam-med2d"})
    # unknown names: a usage error listing available ones; a name outside the split points at --targets all
    rc, err = _run([*base, "--out", str(tmp_path / "o2"), "--targets", "all", "--only", "spleen"], capsys)
    assert rc == 2 and "--only spleen" in err and "liver" in err and err.count("\n") == 1, err
    rc, err = _run([*base, "--out", str(tmp_path / "o3"), "--only", "vertebrae_T1"], capsys)
    assert rc == 2 and "test split" in err and "--targets all" in err, err
    rc, err = _run([*base, "--out", str(tmp_path / "o4"), "--targets", "banana"], capsys)
    assert rc == 2  # --targets is still the split


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_two_ranks_match_single_process(dataset, tmp_path):
    _readers()
    args = ["--model", "random-walker", "--data", str(dataset), "--protocol", "sam-med3d", "--targets", "all",
            "--clicks", "2", "--seed", "5"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    single, multi = tmp_path / "single", tmp_path / "multi"
    cmds = [[sys.executable, "-m", "voxprompt", "eval", *args, "--out", str(single)],
            [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
             str(_free_port()), "-m", "voxprompt", "eval", *args, "--out", str(multi)]]
    for cmd in cmds:
        p = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
        assert p.returncode == 0, p.stderr[-3000:]
    assert _read_csv(multi / "results.csv", True) == _read_csv(single / "results.csv", True)
    meta = json.loads((multi / "results.json").read_text())["meta"]
    assert meta["world_size"] == 2 and meta["n_targets"] == 3
