"""Inference speed of every model: reference (official computation) vs the exact fast paths, side
by side in one run. Encoder latency at batch 1, throughput at batch 1/2/4, one click (prompt
encoder + decoder; 3D with the previous mask), one box (2D), the first click end to end (encode +
decode) and peak memory. CPU always; the GPU too when present (named in the JSON).

    python benchmarks/speed.py [--device cpu|cuda|all] [--models sam-med3d,...] [--quick]

Each configuration runs in a fresh process (clean peak-memory mark). Random weights (timing does
not depend on them). Writes benchmarks/results/speed_<device>.json and prints a table.
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_utils import (  # noqa: E402
    RESULTS,
    fmt_ms,
    machine,
    peak_mib,
    peak_rss_mib,
    reset_peak,
    run_worker,
    timeit,
    write_json,
)

MODELS = ["sam-med3d", "voxprompt-med3d-small", "sam-vit-b", "sam-med2d", "sam-unet"]
CPU_CONFIGS = [("reference", "fp32"), ("fast", "fp32"), ("fast", "bf16")]
GPU_CONFIGS = [("reference", "fp32"), ("reference", "bf16"), ("fast", "fp32"), ("fast", "bf16")]


def worker(args: argparse.Namespace) -> dict[str, Any]:
    import voxprompt
    from voxprompt.models.fast import reference_mode
    from voxprompt.runtime import configure_cpu_threads

    if args.threads:
        configure_cpu_threads(args.threads)
    dev = args.device
    model = voxprompt.load_model(args.model, device=dev, pretrained=False)
    model.set_precision(args.precision)
    ctx = reference_mode() if args.mode == "reference" else contextlib.nullcontext()
    compiled = args.mode == "compiled"
    if compiled:  # CUDA graphs on GPU; every new shape is compiled (and recorded) in the warm-up runs
        model.compile_encoder()
        model.compile_decoder()
    warm = 3 if compiled else 1
    d, size = model.spatial_dims, model.img_size
    gen = torch.Generator().manual_seed(0)
    out: dict[str, Any] = {"model": args.model, "mode": args.mode, "precision": args.precision}
    rss0 = peak_rss_mib()
    with ctx, torch.inference_mode():
        image = torch.randn(1, model.in_chans, *([size] * d), generator=gen).to(dev)
        reset_peak(dev)
        enc = timeit(lambda: model.encode(image), dev, args.repeats, warmup=warm)
        out["encoder_ms"] = enc["median_ms"]
        emb = model.encode(image)
        out["peak_mib_batch1"] = peak_mib(dev, rss0)
        pts = (torch.full((1, 1, d), size / 2.0), torch.ones(1, 1, dtype=torch.int64))
        prev = torch.zeros(1, 1, *([model.low_res_size] * d)).to(dev) if d == 3 else None
        click = timeit(lambda: model.decode(emb, points=pts, mask_input=prev), dev, args.click_repeats, warmup=warm + 1)
        out["click_ms"] = click["median_ms"]
        if model.supports_boxes:
            box = torch.tensor([[size * 0.25] * d + [size * 0.6] * d])
            t = timeit(lambda: model.decode(emb, boxes=box), dev, args.click_repeats, warmup=warm + 1)
            out["box_ms"] = t["median_ms"]
        first = pts if d == 3 or not model.supports_boxes else None
        fbox = None if first is not None else torch.tensor([[size * 0.25] * d + [size * 0.6] * d])

        def first_click() -> None:
            model.decode(model.encode(image), points=first, boxes=fbox, mask_input=prev)

        out["first_click_ms"] = timeit(first_click, dev, args.repeats, warmup=0)["median_ms"]
        out["per_volume_ms"] = {"1": out["encoder_ms"]}
        skip = {int(x.split(":")[1]) for x in args.skip_batches.split(",") if x.split(":")[0] == args.model}
        for b in args.batches:
            if b == 1 or b in skip:
                continue
            batch = image.expand(b, *image.shape[1:]).contiguous()
            reset_peak(dev)
            t = timeit(lambda batch=batch: model.encode(batch), dev, max(1, args.repeats - 1),
                       warmup=warm if compiled else 0)
            out["per_volume_ms"][str(b)] = t["median_ms"] / b
            out[f"peak_mib_batch{b}"] = peak_mib(dev, rss0)
    out["throughput_per_s"] = {b: 1e3 / v for b, v in out["per_volume_ms"].items()}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--mode", default="fast", help=argparse.SUPPRESS)
    ap.add_argument("--precision", default="fp32", help=argparse.SUPPRESS)
    ap.add_argument("--device", default="cpu", help="cpu, cuda or all (cpu + cuda when present)")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--batches", default="1,2,4")
    ap.add_argument("--repeats", type=int, default=3, help="timed encoder runs (median)")
    ap.add_argument("--click-repeats", type=int, default=20)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: all available)")
    ap.add_argument("--quick", action="store_true", help="1 encoder run, batch 1 only, 5 clicks")
    ap.add_argument("--configs", help="MODE:PRECISION list (default: reference/fast x fp32/bf16 on GPU, no "
                    "reference bf16 on CPU); mode 'compiled' = fast + torch.compile'd encoder blocks and "
                    "decoder (CUDA graphs on GPU; compile time is not timed), e.g. compiled:bf16")
    ap.add_argument("--note", default="", help="free text stored in the JSON (e.g. CPU contention)")
    ap.add_argument("--skip-batches", default="", help="MODEL:B pairs not to run, e.g. sam-vit-b:4")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per configuration")
    ap.add_argument("--out", help="JSON path (default benchmarks/results/speed_<device>.json)")
    ap.add_argument("--rounds", type=int, default=1, help="run every configuration N times, alternating; "
                    "report the median of the rounds (a shared machine's speed drifts by tens of %%)")
    args = ap.parse_args()
    args.batches = [int(b) for b in str(args.batches).split(",")]
    if args.configs and not args.worker:
        args.configs = [tuple(c.split(":")) for c in args.configs.split(",")]
        bad = [c for c in args.configs if len(c) != 2 or c[0] not in ("reference", "fast", "compiled")
               or c[1] not in ("fp32", "bf16", "fp16")]
        if bad:
            ap.error(f"--configs: expected MODE:PRECISION items (reference|fast|compiled : fp32|bf16|fp16), got {bad}")
    if args.quick:
        args.repeats, args.click_repeats, args.batches = 1, 5, [1]
    if args.worker:
        print(__import__("json").dumps(worker(args)))
        return
    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    for dev in devices:
        if dev == "cuda" and not torch.cuda.is_available():
            print("no GPU on this machine: CUDA benchmarks skipped")
            continue
        runs: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
        default = RESULTS / f"speed_{dev}{'_quick' if args.quick else ''}.json"
        out = Path(args.out) if args.out and len(devices) == 1 else default
        for r in range(args.rounds):  # rounds alternate the configurations: slow spells hit all of them
            for name in args.models.split(","):
                configs = args.configs or (GPU_CONFIGS if dev == "cuda" else CPU_CONFIGS)
                for mode, precision in configs:
                    extra = ["--model", name, "--mode", mode, "--precision", precision, "--device", dev,
                             "--batches", ",".join(map(str, args.batches)), "--repeats", str(args.repeats),
                             "--click-repeats", str(args.click_repeats), "--threads", str(args.threads),
                             "--skip-batches", args.skip_batches]
                    row = run_worker(Path(__file__), extra, args.timeout)
                    row.update(model=name, mode=mode, precision=precision)
                    runs.setdefault((name, mode, precision), []).append(row)
                    if args.rounds > 1:
                        print(f"round {r + 1}/{args.rounds}: ", end="")
                    print_row(row, args.batches)
                    write_result(out, dev, args, runs, partial=True)  # a run cut short keeps what it measured
        rows = write_result(out, dev, args, runs, partial=False)
        if args.rounds > 1:
            print(f"median of {args.rounds} rounds:")
            for row in rows:
                print_row(row, args.batches)


def write_result(path: Path, dev: str, args: argparse.Namespace, runs: dict[tuple[str, str, str], list[dict[str, Any]]],
                 partial: bool) -> list[dict[str, Any]]:
    """Write the JSON of the rows so far (median of each configuration's rounds); returns the rows."""
    rows = [median_row(v) for v in runs.values()]
    result = {"benchmark": "speed", "machine": machine(dev), "quick": args.quick, "note": args.note,
              "rounds": args.rounds, "batches": args.batches, "rows": rows, "speedups": speedups(rows)}
    if partial:
        result["partial"] = "the run was still going (or was cut short) when this was written"
    if dev == "cpu" and not torch.cuda.is_available():
        result["gpu"] = "no GPU available in this run: GPU numbers (and the H100 targets) remain to be measured"
    write_json(path, result)
    return rows


def median_row(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """One row from several rounds of a configuration: the median of every number (per key)."""
    if len(rows) == 1 or any("error" in r for r in rows):
        return rows[0]
    out = dict(rows[0])
    for key, value in rows[0].items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = statistics.median(r[key] for r in rows)
        elif isinstance(value, dict):
            out[key] = {k: statistics.median(r[key][k] for r in rows) for k in value}
    out["rounds"] = len(rows)
    return out


def speedups(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Reference fp32 time / fast time, per model and fast configuration."""
    out: dict[str, dict[str, float]] = {}
    ref = {r["model"]: r for r in rows if r["mode"] == "reference" and r["precision"] == "fp32" and "error" not in r}
    for r in rows:
        base = ref.get(r["model"])
        if r["mode"] == "reference" or base is None or "error" in r:
            continue
        label = r["precision"] if r["mode"] == "fast" else f"{r['mode']}_{r['precision']}"
        for key in ("encoder_ms", "click_ms", "first_click_ms"):
            out.setdefault(r["model"], {})[f"{key[:-3]}_{label}"] = round(base[key] / r[key], 2)
        if "4" in r["per_volume_ms"]:  # the batch-4 throughput vs the reference fp32 at batch 1
            out[r["model"]][f"throughput_b4_{label}"] = round(base["per_volume_ms"]["1"] / r["per_volume_ms"]["4"], 2)
    return out


HEADER_PRINTED = False


def print_row(r: dict[str, Any], batches: list[int]) -> None:
    global HEADER_PRINTED
    cols = ["model", "mode", "prec", "encoder b1"] + [f"/vol b{b}" for b in batches if b > 1] + [
        "click", "box", "1st click", "peak MiB"]
    if not HEADER_PRINTED:
        print(" | ".join(f"{c:>10s}" if i > 2 else f"{c:22s}" if i == 0 else f"{c:9s}" for i, c in enumerate(cols)))
        HEADER_PRINTED = True
    if "error" in r:
        print(f"{r['model']:22s} | {r['mode']:9s} | {r['precision']:9s} | error: {r['error']}")
        return
    vals = [fmt_ms(r["encoder_ms"])] + [fmt_ms(r["per_volume_ms"].get(str(b))) for b in batches if b > 1] + [
        fmt_ms(r["click_ms"]), fmt_ms(r.get("box_ms")), fmt_ms(r["first_click_ms"]),
        f"{max(v for k, v in r.items() if k.startswith('peak_mib')):.0f}"]
    print(f"{r['model']:22s} | {r['mode']:9s} | {r['precision']:9s} | " + " | ".join(f"{v:>10s}" for v in vals),
          flush=True)


if __name__ == "__main__":
    main()
