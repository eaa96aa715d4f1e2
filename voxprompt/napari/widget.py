"""The napari dock widget: one :class:`~voxprompt.session.Session` on a napari Image layer.

Prompts are napari layers the widget adds on the image's grid: a point added to "voxprompt positive"
or "voxprompt negative" is ``Session.add_point`` with that sign, a rectangle drawn in "voxprompt
boxes" is ``Session.add_box`` over the box's slice range ("box slices", centred on the drawn slice),
and "voxprompt objects" (a Labels layer) shows ``Session.label_map()`` after every step. The prompt
layers show the current object's prompts as the session holds them (points on their voxels, boxes on
their middle slice): a prompt the session refused disappears, and Undo takes the last one back.

Every session call runs in a napari worker thread, one at a time, in the order asked (a FIFO), so the
viewer stays responsive while a model loads, a new ROI is encoded or a boundary refined: on a CPU a
click of the default model takes a median 0.46 s on a 0.7 mm CT but up to seconds when the refinement
has a large boundary to redo (README), and loading a model or encoding with the official SAM-Med3D
takes seconds. The main thread touches napari layers only, from snapshots (:class:`_View`) the worker
makes; while calls are pending the status line says "working".
"""
from __future__ import annotations

import logging
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from napari.layers import Image as ImageLayer
from napari.layers import Labels, Points, Shapes
from napari.layers.base import ActionType
from napari.qt.threading import create_worker
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QApplication,
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ..errors import UsageError, VoxpromptError
from ..io.write import SUPPORTED_WRITE_EXTENSIONS, write_mask
from ..models.family import spatial_dims
from ..models.loading import DEFAULT_MODEL, load_model, shipped_weights
from ..models.zoo import ZOO
from ..session.volume import Session
from .layers import image_from_layer, prompt_shapes, rectangle_box

if TYPE_CHECKING:
    import torch
    from napari.components import ViewerModel

    from ..io.image import Image

log = logging.getLogger(__name__)

POSITIVE, NEGATIVE, BOXES, OBJECTS = "voxprompt positive", "voxprompt negative", "voxprompt boxes", "voxprompt objects"


def models_3d() -> list[str]:
    """Zoo models a volume session takes, the default (shipped) model first."""
    names = [n for n in ZOO if spatial_dims(n) == 3]
    return sorted(names, key=lambda n: n != DEFAULT_MODEL)


@dataclass(frozen=True)
class _View:
    """What the main thread shows of the session after a step (made in the worker)."""

    labels: np.ndarray
    object_id: int
    object_ids: list[int]
    locked: list[int]
    others_negative: bool
    can_undo: bool
    prompts: list
    message: str
    error: bool = False


def _view(session: Session, message: str, error: bool = False) -> _View:
    return _View(session.label_map(), session.object_id, session.object_ids, session.locked_objects,
                 session.others_negative, session.can_undo, session.prompts, message, error)


class SegmentWidget(QWidget):
    """Promptable segmentation of the chosen Image layer (array axes z, y, x; ``scale`` = mm per axis).

    ``napari_viewer``: the viewer (napari passes it; a ``napari.components.ViewerModel`` works too).
    Scripts and tests drive it with :meth:`start`, the prompt layers (``positive``, ``negative``,
    ``boxes``), the buttons, :meth:`save_labels` / :meth:`save_session` / :meth:`load_session`, and
    :meth:`wait_idle`; ``session`` is the :class:`Session` (read it only while the widget is not ``busy``:
    the worker thread uses it then).
    """

    def __init__(self, napari_viewer: ViewerModel) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.session: Session | None = None
        self.positive: Points | None = None
        self.negative: Points | None = None
        self.boxes: Shapes | None = None
        self.objects: Labels | None = None
        self._jobs: deque[tuple[str, Callable[[], _View | str | None]]] = deque()
        self._worker: Any = None
        self._what = ""
        self._syncing = False
        self._build()
        for event in (napari_viewer.layers.events.inserted, napari_viewer.layers.events.removed):
            event.connect(self._refresh_images)
        napari_viewer.layers.selection.events.active.connect(self._active_changed)
        self._refresh_images()
        self._enable()

    # ------------------------------------------------------------------ layout
    def _build(self) -> None:
        self.image_box = QComboBox()
        self.model_box = QComboBox()
        for name in models_3d():
            self.model_box.addItem(name)
            self.model_box.setItemData(self.model_box.count() - 1, ZOO[name].description, Qt.ItemDataRole.ToolTipRole)
        self.checkpoint = QLineEdit()
        self.checkpoint.setPlaceholderText("shipped weights" if shipped_weights(DEFAULT_MODEL) else "")
        browse = QPushButton("…")
        browse.setMaximumWidth(32)
        browse.clicked.connect(self._browse_checkpoint)
        ckpt = QHBoxLayout()
        ckpt.addWidget(self.checkpoint)
        ckpt.addWidget(browse)
        self.device_box = QComboBox()
        self.device_box.addItems(["cpu", "cuda"])
        self.start_button = QPushButton("Start on image")
        self.start_button.clicked.connect(lambda: self.start())
        form = QFormLayout()
        form.addRow("Image", self.image_box)
        form.addRow("Model", self.model_box)
        form.addRow("Checkpoint", ckpt)
        form.addRow("Device", self.device_box)
        self.model_box.currentTextChanged.connect(self._model_changed)

        self.object_box = QComboBox()
        self.object_box.activated.connect(lambda i: self._select(int(self.object_box.itemText(i))))
        self.new_button = QPushButton("New object")
        self.new_button.clicked.connect(self.new_object)
        self.undo_button = QPushButton("Undo")
        self.undo_button.clicked.connect(self.undo)
        self.lock_button = QPushButton("Lock object")
        self.lock_button.setCheckable(True)
        self.lock_button.clicked.connect(self._lock)
        self.others_check = QCheckBox("Other objects as negatives")
        self.others_check.clicked.connect(self._others_negative)
        self.depth_box = QSpinBox()
        self.depth_box.setRange(1, 9999)
        self.depth_box.setToolTip("slices a box spans, centred on the slice it is drawn on (1: a 2D box)")
        objects = QFormLayout()
        row = QHBoxLayout()
        row.addWidget(self.object_box, 1)
        row.addWidget(self.new_button)
        objects.addRow("Object", row)
        row = QHBoxLayout()
        row.addWidget(self.undo_button)
        row.addWidget(self.lock_button)
        objects.addRow(row)
        objects.addRow(self.others_check)
        objects.addRow("Box slices", self.depth_box)
        group = QGroupBox("Prompts")
        group.setLayout(objects)

        self.save_labels_button = QPushButton("Save labels…")
        self.save_labels_button.clicked.connect(self._save_labels_dialog)
        self.save_session_button = QPushButton("Save session…")
        self.save_session_button.clicked.connect(self._save_session_dialog)
        self.load_session_button = QPushButton("Load session…")
        self.load_session_button.clicked.connect(self._load_session_dialog)
        files = QHBoxLayout()
        for b in (self.save_labels_button, self.save_session_button, self.load_session_button):
            files.addWidget(b)

        hint = QLabel(f"Add points to '{POSITIVE}' or '{NEGATIVE}', draw rectangles in '{BOXES}'.")
        hint.setWordWrap(True)
        self.status = QLabel("Choose an image layer and press Start.")
        self.status.setWordWrap(True)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.start_button)
        layout.addWidget(group)
        layout.addLayout(files)
        layout.addWidget(hint)
        layout.addWidget(self.status)
        layout.addStretch(1)

    def _refresh_images(self, event: Any = None) -> None:
        current = self.image_box.currentText()
        names = [layer.name for layer in self.viewer.layers if isinstance(layer, ImageLayer)]
        self.image_box.clear()
        self.image_box.addItems(names)
        if current in names:
            self.image_box.setCurrentText(current)

    def _active_changed(self, event: Any) -> None:
        """The Image layer selected in the viewer becomes the one to segment."""
        if isinstance(event.value, ImageLayer):
            self.image_box.setCurrentText(event.value.name)

    def _model_changed(self, name: str) -> None:
        self.checkpoint.setPlaceholderText("shipped weights" if shipped_weights(name) else "checkpoint file needed")

    def _browse_checkpoint(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Model checkpoint", "", "Checkpoints (*.pth *.pt *.safetensors)")
        if path:
            self.checkpoint.setText(path)

    def _enable(self, can_undo: bool = False) -> None:
        on = self.session is not None
        for w in (self.object_box, self.new_button, self.lock_button, self.others_check, self.depth_box,
                  self.save_labels_button, self.save_session_button, self.load_session_button):
            w.setEnabled(on)
        self.undo_button.setEnabled(on and can_undo)

    # ------------------------------------------------------------------ jobs
    @property
    def busy(self) -> bool:
        """Whether a session call is running or waiting."""
        return self._worker is not None or bool(self._jobs)

    def wait_idle(self, timeout: float = 120.0) -> None:
        """Process Qt events until every queued session call has run and been shown (scripts, tests)."""
        app = QApplication.instance()
        deadline = time.monotonic() + timeout
        while self.busy:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the voxprompt widget is still working after {timeout} s")
            app.processEvents()
            time.sleep(0.002)
        app.processEvents()

    def _submit(self, what: str, job: Callable[[], _View | str | None]) -> None:
        """Queue ``job`` (run in a worker thread, one at a time, in order); it returns a :class:`_View` to
        show, a message (a user mistake: nothing changed) or None."""
        self._jobs.append((what, job))
        self._next()

    def _next(self) -> None:
        if self._worker is None and self._jobs:
            self._what, job = self._jobs.popleft()
            what = self._what
            self._worker = create_worker(job, _start_thread=False, _connect={
                "returned": self._apply, "errored": lambda exc: self._failed(what, exc),
                "finished": self._finished})
            self._worker.start()
        if self.busy:
            self.status.setText(f"working: {self._what}…")

    def _finished(self) -> None:
        self._worker = None
        self._next()

    def _failed(self, what: str, exc: BaseException) -> None:
        """A bug, not a user mistake (those come back as a :class:`_View` with ``error``): napari shows the
        traceback; the status line names the step."""
        log.error("voxprompt: %s failed", what, exc_info=exc)
        message = f"{what} failed: {type(exc).__name__}: {exc}"
        self.status.setText(message)
        if self.session is not None:  # the layers show the session's prompts again (the failed one is not)
            self._session_job("showing prompts", lambda s: message)

    def _session_job(self, what: str, step: Callable[[Session], str]) -> None:
        """Queue ``step(session)`` (returns the status message); a user mistake becomes the message."""
        def job() -> _View | str | None:
            session = self.session
            if session is None:
                return None
            try:
                message = step(session)
            except VoxpromptError as exc:
                return _view(session, f"{what}: {exc}", error=True)
            return _view(session, message)

        if self.session is None:
            self.status.setText("Press Start first.")
            return
        self._submit(what, job)

    def _apply(self, view: _View | str | None) -> None:
        if isinstance(view, str):
            log.warning("voxprompt: %s", view)
            self.status.setText(view)
            return
        if view is None:
            return
        if view.error:
            log.warning("voxprompt: %s", view.message)
        self.status.setText(view.message)
        if self.objects is None:
            return
        self.objects.data = view.labels
        self.objects.selected_label = view.object_id
        if not self._jobs:  # later prompts are on the layers already: show the session's once they ran
            self._show_prompts(view.prompts)
        self.object_box.clear()
        self.object_box.addItems([str(i) for i in view.object_ids])
        self.object_box.setCurrentText(str(view.object_id))
        self.lock_button.setChecked(view.object_id in view.locked)
        self.lock_button.setText("Unlock object" if view.object_id in view.locked else "Lock object")
        self.others_check.setChecked(view.others_negative)
        self._enable(view.can_undo)

    # ------------------------------------------------------------------ start
    def start(self, model: torch.nn.Module | None = None) -> None:
        """A new session on the chosen Image layer, with the chosen model (or ``model``, a loaded 3D model)."""
        name = self.image_box.currentText()
        if not name:
            self.status.setText("No image layer: open a volume first.")
            return
        layer = self.viewer.layers[name]
        model_name, checkpoint = self.model_box.currentText(), self.checkpoint.text().strip() or None
        device = self.device_box.currentText()
        try:
            image = image_from_layer(layer.data, layer.scale, layer.metadata, name)
            if model is None and checkpoint is None and shipped_weights(model_name) is None:
                raise UsageError(f"{model_name} has no weights shipped with voxprompt: choose its checkpoint file")
            if checkpoint is not None and not os.path.isfile(checkpoint):
                raise UsageError(f"checkpoint {checkpoint}: no such file")
        except VoxpromptError as exc:
            self.status.setText(str(exc))
            return

        def job() -> _View | str:
            try:
                session = Session(model or load_model(model_name, checkpoint, device))
                session.set_image(image)
            except VoxpromptError as exc:
                return f"cannot start: {exc}"
            self.session = session  # read by the jobs queued after this one, in this worker thread
            return _view(session, f"{session.model.name} on {name} {image.shape}: add prompts.")

        self.session = None
        self._enable()
        self._make_layers(layer, image)
        self._submit(f"loading {model_name}" if model is None else "starting", job)

    def _make_layers(self, image_layer: ImageLayer, image: Image) -> None:
        """Fresh prompt and label layers on ``image_layer``'s grid (its transforms)."""
        for n in (POSITIVE, NEGATIVE, BOXES, OBJECTS):
            if n in self.viewer.layers:
                self.viewer.layers.remove(n)
        grid = {"scale": image_layer.scale, "translate": image_layer.translate, "rotate": image_layer.rotate,
                "shear": image_layer.shear, "affine": image_layer.affine}
        size = max(2.0, max(image.shape[-2:]) / 60)  # points in voxels: visible on a 512^2 slice and a small one
        self._syncing = True
        try:
            self.objects = self.viewer.add_labels(np.zeros(image.shape, np.uint8), name=OBJECTS, opacity=0.5, **grid)
            self.boxes = self.viewer.add_shapes(ndim=3, name=BOXES, edge_color="yellow", face_color="transparent",
                                                edge_width=size / 4, **grid)
            self.negative = self.viewer.add_points(ndim=3, name=NEGATIVE, face_color="red", size=size, **grid)
            self.positive = self.viewer.add_points(ndim=3, name=POSITIVE, face_color="lime", size=size, **grid)
        finally:
            self._syncing = False
        self.positive.events.data.connect(lambda e: self._points_changed(e, True))
        self.negative.events.data.connect(lambda e: self._points_changed(e, False))
        self.boxes.events.data.connect(self._boxes_changed)
        self.positive.mode = self.negative.mode = "add"
        self.boxes.mode = "add_rectangle"
        self.viewer.layers.selection.active = self.positive

    # ------------------------------------------------------------------ prompts from the layers
    def _points_changed(self, event: Any, positive: bool) -> None:
        if self._syncing:
            return
        if event.action != ActionType.ADDED:
            self._layers_edited(event.action)
            return
        layer = self.positive if positive else self.negative
        for i in event.data_indices:
            point = np.array(layer.data[i], dtype=float)
            self._session_job("adding a point", lambda s, p=point: self._prediction_message(
                s.add_point(p, positive=positive), "positive" if positive else "negative"))

    def _boxes_changed(self, event: Any) -> None:
        if self._syncing:
            return
        if event.action != ActionType.ADDED:
            self._layers_edited(event.action)
            return
        depth = self.depth_box.value()
        for i in event.data_indices:
            if self.boxes.shape_type[i] != "rectangle":
                self._session_job("adding a box", lambda s: "draw boxes as rectangles")
                continue
            corners = np.array(self.boxes.data[i], dtype=float)

            def step(s: Session, c: np.ndarray = corners) -> str:
                lo, hi = rectangle_box(c, s.shape, depth)
                return self._prediction_message(s.add_box(lo, hi), f"box {tuple(lo.tolist())}..{tuple(hi.tolist())}")

            self._session_job("adding a box", step)

    def _layers_edited(self, action: Any) -> None:
        if action in (ActionType.REMOVED, ActionType.CHANGED):  # show the session's prompts again
            self._session_job("showing prompts", lambda s: "Prompts are the session's: Undo takes the last one back.")

    @staticmethod
    def _prediction_message(prediction: Any, what: str) -> str:
        voxels = int(np.count_nonzero(prediction.mask))
        text = f"{what}: object {prediction.object_id}, {voxels} voxels, score {prediction.score:.2f}"
        return f"{text}. {prediction.warning}" if prediction.warning else text

    def _show_prompts(self, prompts: list) -> None:
        """The prompt layers show ``prompts`` (the current object's), without triggering prompts."""
        pos, neg, rects = prompt_shapes(prompts, self.viewer.dims.displayed)
        self._syncing = True
        try:
            self.positive.data = pos
            self.negative.data = neg
            if len(self.boxes.data):
                self.boxes.data = []
            if rects:
                self.boxes.add_rectangles(rects)
        finally:
            self._syncing = False

    # ------------------------------------------------------------------ buttons
    def new_object(self) -> None:
        self._session_job("new object", lambda s: f"object {s.new_object()}: add prompts.")

    def _select(self, object_id: int) -> None:
        def step(s: Session) -> str:
            s.select_object(object_id)
            return f"object {object_id}"

        self._session_job("choosing an object", step)

    def undo(self) -> None:
        def step(s: Session) -> str:
            s.undo()
            return f"undone: object {s.object_id} has {len(s.prompts)} prompt(s)"

        self._session_job("undo", step)

    def _lock(self, checked: bool) -> None:
        self.set_locked(checked)

    def set_locked(self, locked: bool) -> None:
        """Lock (or unlock) the current object: other objects' prompts never take its voxels."""
        def step(s: Session) -> str:
            s.lock_object(s.object_id, locked)
            return f"object {s.object_id} {'locked' if locked else 'unlocked'}"

        self._session_job("locking", step)

    def _others_negative(self, checked: bool) -> None:
        self.set_others_negative(checked)

    def set_others_negative(self, on: bool) -> None:
        """Keep every other object's voxels out of the current object's new masks (or stop)."""
        def step(s: Session) -> str:
            s.others_negative = on
            return "other objects are negatives" if on else "other objects are not negatives"

        self._session_job("label policy", step)

    def save_labels(self, path: str | os.PathLike) -> None:
        """Write every object as a label volume (NIfTI, NRRD or MetaImage) on the image's grid."""
        self._session_job("saving labels", lambda s: f"labels saved to {write_mask(s.label_map(), s.image, path)}")

    def save_session(self, path: str | os.PathLike) -> None:
        """Write the session's state (``Session.save``: prompts, masks, undo history; ``.vps``)."""
        self._session_job("saving the session", lambda s: f"session saved to {s.save(path)}")

    def load_session(self, path: str | os.PathLike) -> None:
        """Restore a session saved on this image (``Session.load_state``)."""
        def step(s: Session) -> str:
            s.load_state(path)
            return f"session loaded from {path}"

        self._session_job("loading a session", step)

    def _save_labels_dialog(self) -> None:
        patterns = " ".join(f"*{e}" for e in SUPPORTED_WRITE_EXTENSIONS)
        path, _ = QFileDialog.getSaveFileName(self, "Save labels", "labels.nii.gz", f"Label volumes ({patterns})")
        if path:
            self.save_labels(path)

    def _save_session_dialog(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Save session", "session.vps", "voxprompt sessions (*.vps)")
        if path:
            self.save_session(path)

    def _load_session_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Load session", "", "voxprompt sessions (*.vps)")
        if path:
            self.load_session(path)


__all__ = ["SegmentWidget", "models_3d", "POSITIVE", "NEGATIVE", "BOXES", "OBJECTS"]
