"""Boundary refinement in the server: run after the model step, with the model lock released, and
answered refined (the official nninteractive-client checks the mask it mirrors)."""
from __future__ import annotations

import threading

import numpy as np
import pytest
from server_testing import BackgroundServer, fix_model_masks, slicer_volume, tiny_model

from voxprompt.server import ServerSettings, create_app
from voxprompt.session import Session

remote = pytest.importorskip("nnInteractive.inference.remote")
pytest.importorskip("skimage")
Client = remote.nnInteractiveRemoteInferenceSession

SPACING = (2.0, 1.2, 1.0)


@pytest.fixture(scope="module")
def volume() -> np.ndarray:
    return slicer_volume()


@pytest.fixture
def coarse_model_masks(monkeypatch, volume):
    """The model's result: a shifted copy of the bright box, so the refinement has a boundary to move."""
    box = np.zeros(volume.shape, bool)
    box[9:16, 14:30, 13:29] = True
    fix_model_masks(monkeypatch, {1: box}, refine=True)
    return box


def test_refined_masks_reach_the_client_and_the_model_lock_is_free_meanwhile(volume, coarse_model_masks,
                                                                              monkeypatch):
    model = tiny_model()
    app = create_app(ServerSettings(refine=True), model=model)
    lock = app.state.ctx.host.lock
    other_step_ran = []
    refine = Session._refined

    def refined(self, region, block, clicks, cancel=None):
        # another user's model step takes the model lock while this refinement runs
        other = threading.Thread(target=lambda: lock.acquire() or lock.release())
        other.start()
        other.join(10)
        other_step_ran.append(not other.is_alive())
        return refine(self, region, block, clicks, cancel)

    monkeypatch.setattr(Session, "_refined", refined)
    local = Session(model, refine=True)  # the synchronous reference
    local.set_image(volume, spacing=SPACING)
    with BackgroundServer(app) as url, Client(url) as c:
        c.set_image(volume[None], {"spacing": list(SPACING)})
        buf = np.zeros(volume.shape, np.uint8)
        c.set_target_buffer(buf)
        c.set_do_autozoom(False)
        for point, positive in (((12, 20, 18), True), ((12, 22, 28), False)):
            c.add_point_interaction(list(point), include_interaction=positive)
            expected = local.add_point(point, positive=positive).mask
            np.testing.assert_array_equal(buf, expected.astype(np.uint8))
        assert not np.array_equal(buf.astype(bool), coarse_model_masks)  # the refinement moved the boundary
    assert other_step_ran == [True, True, True, True]  # two clicks, local and served
