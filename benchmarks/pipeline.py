"""Whole-pipeline cost on a synthetic 512x512x300 CT with the 3D Session: read the NIfTI, set the
image, first click (ROI crop + resample + normalise, encode, decode, paste), a second click
(decoder only, cached embedding) and writing the mask -- reference vs fast paths side by side.
Models that store a refinement band (the default model) also run with ``refine=False``.
Also the end-to-end CLI latency of ``voxprompt segment CT --point ... -o MASK`` (a fresh process:
imports, model load, read, one click, write), reference via ``VOXPROMPT_REFERENCE=1``.

    python benchmarks/pipeline.py [--models voxprompt-med3d-small,sam-med3d] [--device cpu]

Writes benchmarks/results/pipeline_<device>.json and prints a table.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_utils import RESULTS, machine, write_json  # noqa: E402

SHAPE_ZYX = (300, 512, 512)
SPACING_XYZ = (0.75, 0.75, 1.25)


def synthetic_ct(path: Path) -> np.ndarray:
    """A body-like cylinder with organs (ellipsoids) and noise, int16 HU, written as NIfTI."""
    import SimpleITK as sitk

    rng = np.random.default_rng(0)
    z, y, x = np.ogrid[: SHAPE_ZYX[0], : SHAPE_ZYX[1], : SHAPE_ZYX[2]]
    vol = np.full(SHAPE_ZYX, -1000, np.int16)
    body = ((y - 256) / 200.0) ** 2 + ((x - 256) / 230.0) ** 2 < 1
    vol[np.broadcast_to(body, SHAPE_ZYX)] = 40
    organ = ((z - 150) / 60.0) ** 2 + ((y - 230) / 70.0) ** 2 + ((x - 300) / 90.0) ** 2 < 1
    vol[organ] = 120
    vol += rng.normal(0, 15, SHAPE_ZYX).astype(np.int16)
    img = sitk.GetImageFromArray(vol)
    img.SetSpacing(SPACING_XYZ)
    sitk.WriteImage(img, str(path), useCompression=True)
    return vol


def timed(store: dict[str, float], key: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*a: Any, **k: Any) -> Any:
        t = time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            store[key] = store.get(key, 0.0) + (time.perf_counter() - t) * 1e3
    return wrapper


def run_pipeline(model: torch.nn.Module, ct: Path, out: Path, reference: bool,
                 refine: bool | None = None) -> dict[str, float]:
    import voxprompt.session.roi_predictor as session_mod
    from voxprompt.io.read import read_image
    from voxprompt.io.write import write_mask
    from voxprompt.models.fast import reference_mode

    t: dict[str, float] = {}
    ctx = reference_mode() if reference else contextlib.nullcontext()
    orig_pre, orig_enc, orig_dec = session_mod.preprocess_roi, model.encode, model.decode
    session_mod.preprocess_roi = timed(t, "crop_resample_ms", orig_pre)
    model.encode = timed(t, "encode_ms", orig_enc)
    model.decode = timed(t, "decode_ms", orig_dec)
    try:
        with ctx:
            s0 = time.perf_counter()
            img = timed(t, "read_ms", read_image)(ct)
            sess = session_mod.Session(model, refine=refine)
            timed(t, "set_image_ms", sess.set_image)(img)
            centre = [s // 2 for s in img.shape]
            timed(t, "first_click_ms", sess.add_point)(centre, True)
            first = dict(t)
            timed(t, "second_click_ms", sess.add_point)([c + 6 for c in centre], True)
            t["second_click_decode_ms"] = t["decode_ms"] - first["decode_ms"]
            timed(t, "write_ms", write_mask)(sess.mask, img, out)
            t["total_ms"] = (time.perf_counter() - s0) * 1e3
    finally:
        session_mod.preprocess_roi = orig_pre
        del model.encode, model.decode  # drop the instance wrappers
    t["decode_ms"] = first["decode_ms"]
    t["first_click_rest_ms"] = t["first_click_ms"] - t["crop_resample_ms"] - t["encode_ms"] - t["decode_ms"]
    return t


def cli_latency_ms(name: str, ckpt: Path, ct: Path, out: Path, reference: bool, threads: int,
                   refine: bool | None = None) -> float:
    """Wall time of one ``voxprompt segment`` process with a single click at the volume centre."""
    env = dict(os.environ, VOXPROMPT_REFERENCE="1" if reference else "0")
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    z, y, x = (s // 2 for s in SHAPE_ZYX)
    cmd = [sys.executable, "-m", "voxprompt", "segment", str(ct), "--model", name, "--checkpoint", str(ckpt),
           "--no-autozoom", "--point", f"{x},{y},{z}", "-o", str(out)] + (["--no-refine"] if refine is False else [])
    t = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, env=env)
    return (time.perf_counter() - t) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="voxprompt-med3d-small,sam-med3d")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--note", default="")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: all available)")
    args = ap.parse_args()
    import voxprompt
    from voxprompt.models.checkpoints import save_safetensors

    if args.threads:
        torch.set_num_threads(args.threads)

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        ct = Path(tmp) / "ct.nii.gz"
        synthetic_ct(ct)
        cols = ["read", "set_image", "crop_resample", "encode", "decode", "first_click", "second_click", "write",
                "total", "cli_segment"]
        print(f"{'model':22s} {'mode':19s} " + " ".join(f"{c:>13s}" for c in cols))
        for name in args.models.split(","):
            model = voxprompt.load_model(name, device=args.device)  # shipped weights when there are some
            ckpt = save_safetensors(model.state_dict(), Path(tmp) / f"{name}.safetensors", name, model.cfg.to_dict())
            # models that store a refinement band also run without it (the model and pipeline alone)
            refines = [None, False] if getattr(model.cfg, "refine_band_mm", 0) else [None]
            for reference, refine in [(r, f) for r in (True, False) for f in refines]:
                run_pipeline(model, ct, Path(tmp) / "warm.nii.gz", reference, refine)  # warm-up (allocator, caches)
                t = run_pipeline(model, ct, Path(tmp) / "mask.nii.gz", reference, refine)
                mode = ("reference" if reference else "fast") + (" no-refine" if refine is False else "")
                row = {"model": name, "mode": mode, "refine": refine is not False and len(refines) > 1, **t}
                row["cli_segment_ms"] = cli_latency_ms(name, ckpt, ct, Path(tmp) / "cli.nii.gz", reference,
                                                       args.threads, refine)
                rows.append(row)
                times = " ".join(f"{row[c + '_ms']:11.0f}ms" for c in cols)
                print(f"{name:22s} {row['mode']:19s} {times}", flush=True)
    result = {"benchmark": "pipeline", "machine": machine(args.device), "note": args.note,
              "volume": {"shape_zyx": SHAPE_ZYX, "spacing_xyz_mm": SPACING_XYZ, "format": "NIfTI .nii.gz int16"},
              "rows": rows}
    write_json(RESULTS / f"pipeline_{args.device}.json", result)


if __name__ == "__main__":
    main()
