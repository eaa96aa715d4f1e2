"""Time of one viewer step on a large volume in headless Chromium: the page's bundle now against an older one.

Serves the shipped default model in-process, uploads a synthetic CT-sized volume (512x512x133 int16 by
default, a bright ellipsoid in noise) and clicks inside the ellipsoid a few times on the axial tile. A step
is the click until the page has shown the answer and its refined boundary (not busy, not refining) and the
GPU has finished drawing it (``gl.finish()``: Chromium runs WebGL in its GPU process, which may still be
rendering when the page's script is done); its page share is that less the time of the prompt's and the
refinement's requests (the model's). The layers NiiVue renders into textures in each step are counted (0:
the image, 1: the label overlay). The
older bundle (``--before REV``: ``voxprompt/server/static/viewer.js`` at that git revision) is served in
place of the current one through Playwright's request routing, so both run against the same server. Prints
a table and writes JSON to benchmarks/results/viewer_step.json.

    .venv/bin/python benchmarks/viewer_step.py [--before 291d317] [--clicks 3] [--shape 133 512 512]
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_utils import RESULTS, ROOT, cpu_name, load_average  # noqa: E402
from viewer_screenshots import _serve  # noqa: E402

log = logging.getLogger(__name__)
# ms spent in the page's prompt and refinement requests since the resource timings were cleared
SERVED_JS = (r'performance.getEntriesByType("resource").filter(e => /\/(point|refined)$/.test(e.name))'
             ".reduce((a, e) => a + e.duration, 0)")


def synthetic_volume(shape: tuple[int, int, int], path: Path) -> tuple[int, int, int]:
    """A (k, j, i) int16 volume with an ellipsoid of +400 in noise, written to ``path``; its centre (k, j, i)."""
    import numpy as np
    import SimpleITK as sitk

    rng = np.random.default_rng(0)
    arr = rng.normal(40, 20, size=shape).astype(np.int16)
    c = tuple(n // 2 for n in shape)
    k, j, i = np.ogrid[: shape[0], : shape[1], : shape[2]]
    r = (shape[0] / 5, shape[1] / 6, shape[2] / 6)
    arr[((k - c[0]) / r[0]) ** 2 + ((j - c[1]) / r[1]) ** 2 + ((i - c[2]) / r[2]) ** 2 <= 1] += 400
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((0.7, 0.7, 2.5))
    sitk.WriteImage(img, str(path))
    return c


def run_bundle(browser, url: str, volume: Path, centre, clicks: int, bundle: bytes | None) -> dict:
    """Open ``volume`` in a fresh page (``bundle``: the viewer.js to serve instead of the current one) and time
    ``clicks`` steps; the label downloads counted per kind."""
    page = browser.new_page(viewport={"width": 1280, "height": 760})
    if bundle is not None:
        page.route("**/web/viewer.js", lambda route: route.fulfill(body=bundle, content_type="text/javascript"))
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    page.goto(f"{url}/")
    page.wait_for_function("window.voxprompt && window.voxprompt.state.config")
    t0 = time.monotonic()
    page.set_input_files("#file", str(volume))
    page.wait_for_function("window.voxprompt.state.version >= 1 && !window.voxprompt.state.busy", timeout=300000)
    page.evaluate("window.voxprompt.nv.gl.finish()")
    open_s = time.monotonic() - t0
    page.select_option("#layout", "0")  # axial only
    page.wait_for_timeout(300)
    page.evaluate("""(() => { const nv = window.voxprompt.nv, render = nv.refreshLayers.bind(nv);
        window.layers = []; nv.refreshLayers = (v, layer) => { window.layers.push(layer); render(v, layer); }; })()""")
    steps, served, layers = [], [], []
    requests.clear()
    for n in range(clicks):
        kji = (centre[0], centre[1] + 6 * n, centre[2] - 5 * n)  # inside the ellipsoid
        page.evaluate(f"""(() => {{ const v = window.voxprompt, nv = v.nv;
            nv.scene.crosshairPos = nv.mm2frac(v.fileVoxelToMm(v.state.volume.hdr.affine, {list(kji[::-1])}));
            nv.drawScene(); }})()""")
        page.wait_for_timeout(200)
        xy = page.evaluate(f"""(() => {{ const v = window.voxprompt, nv = v.nv;
            const p = v.worldToTile(nv.screenSlices[0], v.fileVoxelToMm(v.state.volume.hdr.affine, {list(kji[::-1])}));
            const r = nv.canvas.getBoundingClientRect(), f = r.width / nv.canvas.width;
            return [r.left + p.x * f, r.top + p.y * f]; }})()""")
        v0 = page.evaluate("window.voxprompt.state.version")
        page.evaluate("performance.clearResourceTimings(); window.layers = []; window.voxprompt.nv.gl.finish()")
        t = time.monotonic()
        page.mouse.click(*xy)
        done = f"(s => s.version > {v0} && !s.busy && !s.refining && !s.queued)(window.voxprompt.state)"
        page.wait_for_function(done, timeout=300000, polling=50)
        page.evaluate("window.voxprompt.nv.gl.finish()")
        steps.append(round(time.monotonic() - t, 3))
        layers.append(page.evaluate("window.layers"))
        # the server's share: the prompt and the refinement's wait (the rest is the page: labels, drawing)
        served.append(round(page.evaluate(SERVED_JS) / 1000, 3))
        log.info("  click %d: %.2f s (point + refined requests %.2f s; layers rendered %s)", n + 1, steps[-1],
                 served[-1], layers[-1])
    voxels = page.evaluate("window.voxprompt.state.overlay.img.reduce((a, b) => a + (b > 0), 0)")
    page.close()
    return {"open_s": round(open_s, 2), "steps_s": steps, "median_step_s": round(statistics.median(steps), 3),
            "point_and_refined_requests_s": served,
            "median_page_s": round(statistics.median([a - b for a, b in zip(steps, served)]), 3),
            "layers_rendered": layers,
            "label_map_downloads": sum("/labels.nii.gz" in u for u in requests),
            "block_downloads": sum("/labels/block?" in u for u in requests), "overlay_voxels": int(voxels)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", default="291d317", help="git revision whose viewer.js is the 'before' page")
    ap.add_argument("--clicks", type=int, default=3)
    ap.add_argument("--shape", type=int, nargs=3, default=[133, 512, 512], metavar=("K", "J", "I"))
    ap.add_argument("--note", default="", help="said in the JSON (e.g. a training job on the other core)")
    ap.add_argument("--out", type=Path, default=RESULTS / "viewer_step.json")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from playwright.sync_api import sync_playwright

    from voxprompt.server import ServerSettings, create_app

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("needs Debian's chromium (make chromium)")
    old = subprocess.run(["git", "show", f"{args.before}:voxprompt/server/static/viewer.js"], cwd=ROOT,
                         capture_output=True, check=True).stdout
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        volume = Path(tmp) / "large.nii.gz"
        centre = synthetic_volume(tuple(args.shape), volume)
        url, server = _serve(create_app(ServerSettings()))
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=chromium, headless=True, args=[
                    "--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader"])
                for name, bundle in ((f"before ({args.before})", old), ("now", None)):
                    log.info("%s", name)
                    rows[name] = run_bundle(browser, url, volume, centre, args.clicks, bundle)
                browser.close()
        finally:
            server.should_exit = True
    print(f"\nviewer step, {'x'.join(map(str, args.shape))} (k, j, i) int16, default model, headless Chromium "
          "(SwiftShader)")
    print(f"{'page':<20} {'open s':>7} {'median step s':>14} {'of it page s':>13} {'steps s':<24} "
          f"{'labels.nii.gz':>13} {'blocks':>6}")
    for name, r in rows.items():
        print(f"{name:<20} {r['open_s']:>7.2f} {r['median_step_s']:>14.2f} {r['median_page_s']:>13.2f} "
              f"{str(r['steps_s']):<24} {r['label_map_downloads']:>13} {r['block_downloads']:>6}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "benchmark": "viewer_step", "shape_kji": args.shape, "clicks": args.clicks, "results": rows,
        "machine": {"cpu": cpu_name(), "load_average_1min_at_end": load_average()}, "note": args.note,
    }, indent=2) + "\n")
    log.info("written %s", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
