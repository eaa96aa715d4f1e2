"""The napari plugin (voxprompt/napari/): manifest, reader, layer <-> prompt helpers, and the dock widget
driven headless (Qt's offscreen platform, a ``ViewerModel``: no OpenGL needed), plus one run in a real
napari window under Xvfb (tests/napari_viewer.py). Screenshots go to ``napari/`` in the test artefacts
folder (``VOXPROMPT_TEST_ARTEFACTS``, default ``test-artefacts/``).

napari and PyQt6 come from requirements-napari.txt (``make test`` installs them; ``pip install
voxprompt[napari]``), the system libraries Qt and Xvfb need from ``make napari-libs`` (apt-get).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from server_testing import fix_model_masks, slicer_volume, tiny_model

from voxprompt.errors import InputError, PromptError, UsageError
from voxprompt.napari.layers import GEOMETRY_KEY, image_from_layer, prompt_shapes, rectangle_box
from voxprompt.napari.reader import get_reader, read_volumes

ROOT = Path(__file__).resolve().parents[1]
ARTEFACTS = Path(os.environ.get("VOXPROMPT_TEST_ARTEFACTS", ROOT / "test-artefacts")) / "napari"
SPACING_ZYX = (2.0, 1.0, 1.0)
# napari's models use pydantic features deprecated since pydantic 2.0 (napari's business, not ours)
pytestmark = pytest.mark.filterwarnings("ignore::pydantic.warnings.PydanticDeprecatedSince20")
NOT_INSTALLED = "napari is not installed (pip install voxprompt[napari]; make test installs requirements-napari.txt)"


DIRECTION = (1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)  # rows flipped, as in many CTs


def _write_volume(path: Path, origin=(10.0, -20.0, 5.0)) -> np.ndarray:
    vol = slicer_volume()
    img = sitk.GetImageFromArray(vol)
    img.SetSpacing(SPACING_ZYX[::-1])
    img.SetOrigin(origin)
    img.SetDirection(DIRECTION)
    sitk.WriteImage(img, str(path))
    return vol


def _non_blank(png: Path) -> None:
    from PIL import Image as PILImage

    rgb = np.asarray(PILImage.open(png).convert("RGB"), dtype=float)
    assert rgb.shape[0] > 100 and rgb.shape[1] > 100, rgb.shape
    assert rgb.std() > 20, f"{png} looks blank (pixel std {rgb.std():.1f})"
    assert len(np.unique(rgb.reshape(-1, 3), axis=0)) > 50, f"{png} has almost no distinct colours"


# ----------------------------------------------------------------------------- no Qt needed
def test_manifest_is_valid_and_installed():
    npe2 = pytest.importorskip("npe2", reason=NOT_INSTALLED)
    from importlib.metadata import entry_points

    manifest = npe2.PluginManifest.from_file(ROOT / "voxprompt" / "napari" / "napari.yaml")
    commands = {c.id: c.python_name for c in manifest.contributions.commands}
    assert commands == {"voxprompt.segment": "voxprompt.napari.widget:SegmentWidget",
                        "voxprompt.get_reader": "voxprompt.napari.reader:get_reader"}  # imported: below
    assert [w.command for w in manifest.contributions.widgets] == ["voxprompt.segment"]
    found = [e for e in entry_points(group="napari.manifest") if e.name == "voxprompt"]
    assert found, "no napari.manifest entry point: reinstall voxprompt (pip install -e .) after changing pyproject"
    assert npe2.PluginManifest.from_distribution("voxprompt").name == "voxprompt"


def test_reader_keeps_spacing_and_geometry(tmp_path):
    path = tmp_path / "ct.nii.gz"
    vol = _write_volume(path)
    reader = get_reader(str(path))
    assert reader is not None
    ((data, meta, kind),) = reader(str(path))
    assert kind == "image" and meta["name"] == "ct"
    assert np.array_equal(data, vol) and meta["scale"] == SPACING_ZYX
    image = image_from_layer(data, meta["scale"], meta["metadata"])
    assert image.origin == (10.0, -20.0, 5.0) and image.spacing == SPACING_ZYX[::-1]
    assert image.direction.ravel().tolist() == list(DIRECTION)
    index = np.array([3.0, 7.0, 11.0])  # napari's world (affine after scale) is LPS mm in (z, y, x) order
    world = meta["affine"][:3, :3] @ (index * meta["scale"]) + meta["affine"][:3, 3]
    assert np.allclose(world, image.index_to_world(index)[::-1])
    assert get_reader(str(tmp_path / "photo.png")) is None
    assert get_reader([str(path), str(tmp_path / "photo.png")]) is None


def test_image_from_layer_takes_scale_as_spacing():
    vol = slicer_volume()
    image = image_from_layer(vol, (3.0, 0.5, 0.7))
    assert image.shape == vol.shape and image.spacing == (0.7, 0.5, 3.0) and image.origin == (0.0, 0.0, 0.0)
    stored = {GEOMETRY_KEY: {"shape": list(vol.shape), "spacing": [1.0, 1.0, 2.0], "origin": [1.0, 2.0, 3.0],
                             "direction": np.eye(3).ravel().tolist()}}
    assert image_from_layer(vol, SPACING_ZYX, stored).origin == (1.0, 2.0, 3.0)
    assert image_from_layer(vol, (1.0, 1.0, 1.0), stored).origin == (0.0, 0.0, 0.0)  # rescaled: file grid gone
    with pytest.raises(InputError, match="2D with shape"):
        image_from_layer(vol[0], (1.0, 1.0))
    with pytest.raises(UsageError, match="positive mm"):
        image_from_layer(vol, (0.0, 1.0, 1.0))


def test_rectangle_box_covers_voxel_centres_and_slices():
    shape = (24, 40, 36)
    rect = np.array([[12, 11.6, 9.7], [12, 11.6, 25.2], [12, 29.4, 25.2], [12, 29.4, 9.7]])
    lo, hi = rectangle_box(rect, shape)
    assert lo.tolist() == [12, 12, 10] and hi.tolist() == [13, 30, 26]
    lo, hi = rectangle_box(rect, shape, depth=4)
    assert (lo[0], hi[0]) == (11, 15)
    lo, hi = rectangle_box(rect - [12, 20, 20], shape, depth=3)  # past the image: cut at its edges
    assert lo.tolist() == [0, 0, 0] and hi.tolist() == [2, 10, 6]
    on_x = rect[:, [1, 2, 0]]  # drawn in a (z, y) view, on x slice 12
    lo, hi = rectangle_box(on_x, shape)
    assert lo.tolist() == [12, 10, 12] and hi.tolist() == [24, 26, 13]  # y 11.6..29.4 cut at the 24 slices
    with pytest.raises(PromptError, match="one slice"):
        rectangle_box(rect + np.array([[0, 0, 0], [1, 0, 0], [0, 0, 0], [0, 0, 0]]), shape)
    with pytest.raises(PromptError, match="outside the volume"):
        rectangle_box(rect + [30, 0, 0], shape)
    with pytest.raises(PromptError, match="no voxel centre"):
        rectangle_box(np.array([[3, 5.2, 5.2], [3, 5.2, 5.8], [3, 5.8, 5.8], [3, 5.8, 5.2]]), shape)


def test_prompt_shapes_draw_the_session_prompts():
    prompts = [("point", ((12, 20, 18), True)), ("point", ((3, 4, 5), False)),
               ("box", ((11, 12, 10), (14, 30, 26))), ("mask", None)]
    pos, neg, rects = prompt_shapes(prompts, (1, 2))
    assert pos.tolist() == [[12, 20, 18]] and neg.tolist() == [[3, 4, 5]]
    (rect,) = rects
    assert set(rect[:, 0]) == {12.0}  # the middle slice of the box's range
    lo, hi = rectangle_box(rect, (24, 40, 36), depth=3)  # drawing it again gives the same box
    assert lo.tolist() == [11, 12, 10] and hi.tolist() == [14, 30, 26]
    empty = prompt_shapes([], (1, 2))
    assert empty[0].shape == (0, 3) and empty[1].shape == (0, 3) and empty[2] == []


# ----------------------------------------------------------------------------- the widget, offscreen
@pytest.fixture(scope="module")
def qt_app():
    """A Qt application on the offscreen platform (no display, no OpenGL); skipped where Qt cannot start."""
    pytest.importorskip("napari", reason=NOT_INSTALLED)
    before = os.environ.get("QT_QPA_PLATFORM")
    os.environ["QT_QPA_PLATFORM"] = "offscreen"  # read by the first QApplication; windows never show
    try:
        try:
            from qtpy.QtWidgets import QApplication
        except ImportError as exc:  # e.g. libEGL.so.1 missing: make napari-libs installs the system libraries
            pytest.skip(f"Qt cannot start here ({exc}); `make napari-libs` installs its system libraries")
        yield QApplication.instance() or QApplication([])
    finally:
        if before is None:
            os.environ.pop("QT_QPA_PLATFORM")
        else:
            os.environ["QT_QPA_PLATFORM"] = before


@pytest.fixture
def widget(qt_app, tmp_path):
    from napari.components import ViewerModel

    from voxprompt.napari.widget import SegmentWidget

    _write_volume(tmp_path / "ct.nii.gz")
    viewer = ViewerModel()
    ((data, meta, _),) = read_volumes(tmp_path / "ct.nii.gz")  # the plugin's reader (napari's discovery: below)
    layer = viewer.add_image(data, **meta)
    viewer.add_image(np.zeros((4, 5, 6)), name="other")
    w = SegmentWidget(viewer)
    assert [w.image_box.itemText(i) for i in range(w.image_box.count())] == ["ct", "other"]
    viewer.layers.selection.active = layer  # the image selected in the viewer is the one to segment
    assert w.image_box.currentText() == layer.name == "ct"
    yield w
    w.wait_idle()
    w.deleteLater()


# Known model masks (fix_model_masks): what the widget shows is then exact. Object 2 overlaps object 1.
MASK1 = np.zeros((24, 40, 36), bool)
MASK1[8:16, 12:30, 10:26] = True
MASK2 = np.zeros((24, 40, 36), bool)
MASK2[10:20, 20:35, 20:30] = True


def _started(w, monkeypatch):
    fix_model_masks(monkeypatch, {1: MASK1, 2: MASK2})
    w.start(model=tiny_model())
    w.wait_idle()
    assert w.session is not None, w.status.text()
    return w.session


def test_widget_points_boxes_undo(widget, monkeypatch):
    w = widget
    s = _started(w, monkeypatch)
    assert s.image.spacing == SPACING_ZYX[::-1] and s.image.origin == (10.0, -20.0, 5.0)  # the reader's geometry
    assert not w.objects.data.any() and not w.undo_button.isEnabled()

    w.positive.add([12, 20, 18])
    w.wait_idle()
    assert s.prompts == [("point", ((12, 20, 18), True))]
    assert np.array_equal(w.objects.data, s.label_map()) and np.array_equal(w.objects.data > 0, MASK1)
    assert "object 1" in w.status.text() and w.undo_button.isEnabled()

    w.negative.add([12.4, 35.2, 4.6])  # a click between voxels: the session's voxel is shown
    w.wait_idle()
    assert s.prompts[-1] == ("point", ((12, 35, 5), False))
    assert w.negative.data.tolist() == [[12, 35, 5]]

    w.positive.add([99, 20, 18])  # outside: refused, said, and gone from the layer
    w.wait_idle()
    assert "outside the volume" in w.status.text()
    assert len(s.prompts) == 2 and w.positive.data.tolist() == [[12, 20, 18]]

    w.depth_box.setValue(3)
    w.boxes.add_rectangles(np.array([[12, 11.6, 9.7], [12, 11.6, 25.2], [12, 29.4, 25.2], [12, 29.4, 9.7]]))
    w.wait_idle()
    assert s.prompts[-1] == ("box", ((11, 12, 10), (14, 30, 26)))
    assert len(w.boxes.data) == 1 and np.array_equal(w.objects.data, s.label_map())

    w.undo_button.click()
    w.wait_idle()
    assert [k for k, _ in s.prompts] == ["point", "point"] and len(w.boxes.data) == 0
    w.negative.remove([0])  # deleting a prompt from a layer does not undo it: the layer shows it again
    w.wait_idle()
    assert w.negative.data.tolist() == [[12, 35, 5]] and "Undo" in w.status.text()


def test_widget_survives_a_failing_step(widget, monkeypatch):
    """A bug in a step (not a user mistake) is reported in the status line and the queue goes on."""
    from voxprompt.session import Session

    w = widget
    s = _started(w, monkeypatch)

    def broken(self, index, positive=True):
        raise RuntimeError("boom")

    monkeypatch.setattr(Session, "add_point", broken)
    w.positive.add([12, 20, 18])
    w.wait_idle()
    assert w.status.text() == "adding a point failed: RuntimeError: boom" and not w.busy
    assert len(w.positive.data) == 0 and s.prompts == []
    w.new_object()
    w.wait_idle()
    assert s.object_id == 2 and len(w.positive.data) == 0


def test_widget_objects_lock_and_others_negative(widget, monkeypatch):
    w = widget
    s = _started(w, monkeypatch)
    w.positive.add([12, 20, 18])
    w.wait_idle()
    w.lock_button.click()  # lock object 1
    w.wait_idle()
    assert s.locked_objects == [1] and w.lock_button.isChecked() and w.lock_button.text() == "Unlock object"

    w.new_button.click()
    w.wait_idle()
    assert s.object_id == 2 and w.object_box.currentText() == "2" and len(w.positive.data) == 0
    assert not w.lock_button.isChecked()
    w.positive.add([15, 30, 25])
    w.wait_idle()
    labels = w.objects.data
    assert np.array_equal(labels, s.label_map())
    assert np.array_equal(labels == 1, MASK1) and np.array_equal(labels == 2, MASK2 & ~MASK1)

    w.object_box.activated.emit(0)  # choose object 1 again: its prompts come back on the layers
    w.wait_idle()
    assert s.object_id == 1 and w.positive.data.tolist() == [[12, 20, 18]] and w.lock_button.isChecked()
    w.lock_button.click()  # unlock
    w.wait_idle()
    assert s.locked_objects == []

    w.others_check.click()  # object 1's new masks leave object 2 out
    w.wait_idle()
    assert s.others_negative and w.others_check.isChecked()
    w.positive.add([9, 14, 12])
    w.wait_idle()
    assert not (s.mask & (w.objects.data == 2)).any() and np.array_equal(w.objects.data, s.label_map())


def test_widget_saves_labels_and_session(widget, monkeypatch, tmp_path):
    from voxprompt.io.read import read_image

    w = widget
    s = _started(w, monkeypatch)
    w.positive.add([12, 20, 18])
    w.new_object()
    w.positive.add([15, 30, 25])  # queued behind the first point and the new object: run in order
    w.wait_idle()
    assert w.objects.data.max() == 2

    w.save_labels(tmp_path / "labels.nii.gz")
    w.save_session(tmp_path / "work.vps")
    w.wait_idle()
    saved = read_image(tmp_path / "labels.nii.gz")
    assert np.array_equal(saved.array, s.label_map())
    assert saved.spacing == s.image.spacing and saved.origin == s.image.origin  # on the file's grid
    assert "work.vps" in w.status.text()

    w.save_labels(tmp_path / "labels.png")
    w.wait_idle()
    assert "unsupported output extension" in w.status.text() and not (tmp_path / "labels.png").exists()

    w.start(model=tiny_model())  # a fresh session on the same image, then the saved one back
    w.wait_idle()
    assert not w.objects.data.any()
    w.load_session(tmp_path / "work.vps")
    w.wait_idle()
    assert np.array_equal(w.objects.data, saved.array) and w.object_box.count() == 2
    assert w.positive.data.tolist() == [[15, 30, 25]]  # object 2 is current, as saved


def test_widget_default_model_refusals_and_screenshot(widget):
    import npe2

    npe2.PluginManifest.from_distribution("voxprompt").validate_imports()  # every command's python_name imports
    w = widget
    w.model_box.setCurrentText("sam-med3d")
    w.start()
    assert "no weights shipped" in w.status.text() and "checkpoint" in w.status.text() and w.session is None
    w.checkpoint.setText("/nonexistent/sam_med3d_turbo.pth")
    w.start()
    assert "no such file" in w.status.text()

    w.model_box.setCurrentText("voxprompt-med3d-small")  # the default model, from the package's weights
    w.checkpoint.setText("")
    w.start()
    w.wait_idle()
    assert w.session is not None and w.session.model.name == "voxprompt-med3d-small", w.status.text()
    assert "voxprompt-med3d-small on ct (24, 40, 36)" in w.status.text()  # its click: the napari window test

    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    w.resize(420, 520)
    png = ARTEFACTS / "napari_widget.png"
    assert w.grab().save(str(png))
    _non_blank(png)


# ----------------------------------------------------------------------------- a real napari window
XVFB = shutil.which("Xvfb")


@pytest.mark.skipif(XVFB is None, reason="Xvfb is not installed (`make napari-libs` installs it with apt-get)")
def test_plugin_in_a_napari_window(qt_app, tmp_path):
    """npe2 finds the plugin; its reader opens the volume; the dock widget loads the default model and a
    click in the window's viewer fills the labels layer; the window's screenshot is a test artefact.
    (``qt_app``: skipped where Qt cannot start; the window itself runs in a subprocess on Xvfb's display.)"""
    _write_volume(tmp_path / "ct.nii.gz")
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    png, report = ARTEFACTS / "napari_window.png", tmp_path / "report.json"
    read_fd, write_fd = os.pipe()
    xvfb = subprocess.Popen([XVFB, "-displayfd", str(write_fd), "-screen", "0", "1600x1200x24", "-nolisten", "tcp"],
                            pass_fds=(write_fd,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(write_fd)
    try:
        with os.fdopen(read_fd) as f:
            display = f.readline().strip()
        assert display, "Xvfb did not start"
        env = {**os.environ, "DISPLAY": f":{display}", "QT_QPA_PLATFORM": "xcb"}
        run = subprocess.run([sys.executable, str(ROOT / "tests" / "napari_viewer.py"), str(tmp_path / "ct.nii.gz"),
                              str(png), "--point", "12,20,18", "--json", str(report)],
                             env=env, capture_output=True, text=True, timeout=300)
    finally:
        xvfb.terminate()
        xvfb.wait(timeout=30)
    if run.returncode != 0 and "could not load the Qt platform plugin" in run.stderr.lower():
        pytest.skip(f"Qt's xcb platform cannot start under Xvfb (`make napari-libs` installs its libraries): "
                    f"{run.stderr.strip().splitlines()[-1][:300]}")
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(report.read_text())
    assert result["model"] == "voxprompt-med3d-small" and result["labels_equal_session"]
    assert result["label_voxels"] > 0, result["status"]
    assert {"voxprompt positive", "voxprompt objects", "ct"} <= set(result["layers"])
    _non_blank(png)
