"""nnInteractive v2 conformance: the official ``nninteractive-client`` drives our server, as 3D Slicer does.

Every prediction the client mirrors into its target buffer is compared with a local Session fed the
same prompts (same tiny model), so the wire format, the bbox cropping and the axis handling are
checked end to end.
"""
from __future__ import annotations

import json
import time

import httpx
import numpy as np
import pytest
from server_testing import BackgroundServer, slicer_volume, tiny_model

from voxprompt.server import ServerSettings, create_app
from voxprompt.server.protocols import nnia
from voxprompt.session import Session

remote = pytest.importorskip("nnInteractive.inference.remote")
Client = remote.nnInteractiveRemoteInferenceSession

SPACING_KJI = (2.0, 1.2, 1.0)  # what Slicer sends: reversed(volume.GetSpacing())


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def volume() -> np.ndarray:
    return slicer_volume()


def serve(model, **kw):
    return BackgroundServer(create_app(ServerSettings(**kw), model=model))


@pytest.fixture(scope="module")
def server(model):
    with serve(model, max_sessions=2) as url:
        yield url


def compare(buffer: np.ndarray, local_mask: np.ndarray) -> None:
    assert buffer.dtype == np.uint8
    np.testing.assert_array_equal(buffer, local_mask.astype(np.uint8))


def test_slicer_workflow_matches_local_session(server, model, volume):
    local = Session(model)
    local.set_image(volume, spacing=SPACING_KJI)
    with Client(server) as c:
        assert c.supported_interactions == {"points": True, "bbox2d": True, "bbox3d": True,
                                            "scribble": True, "lasso": True}
        assert c.supports_undo and c.supports_initial_label and not c.supports_zero_shot_label_refinement
        assert c.ping()
        # Slicer: set_image(arrayFromVolume(vol)[None], {"spacing": reversed(vol.GetSpacing())})
        c.set_image(volume[None], {"spacing": list(SPACING_KJI)})
        assert c.original_image_shape == (1, *volume.shape)
        buf = np.zeros(volume.shape, np.uint8)
        c.set_target_buffer(buf)
        c.set_do_autozoom(False)

        # points arrive as ijk[::-1] = (k, j, i): indices of the array as sent
        bbox = c.add_point_interaction([12, 20, 18], include_interaction=True)
        pred = local.add_point((12, 20, 18), positive=True)
        compare(buf, pred.mask)
        assert pred.changed_bbox is not None and buf.any()
        assert bbox == [[s.start, s.stop] for s in pred.changed_bbox]  # bbox-cropped update
        assert np.prod([hi - lo for lo, hi in bbox]) < buf.size

        c.add_point_interaction([12, 5, 5], include_interaction=False)
        compare(buf, local.add_point((12, 5, 5), positive=False).mask)

        # a 2D box on slice k=11, as Slicer sends it: [[k0, k1+1], [j0, j1+1], [i0, i1+1]]
        c.add_bbox_interaction([[11, 12], [12, 30], [10, 26]], include_interaction=True)
        compare(buf, local.add_box((11, 12, 10), (12, 30, 26)).mask)

        assert c.undo() is True
        compare(buf, local.undo().mask)
        while local.can_undo:
            assert c.undo() is True
            compare(buf, local.undo().mask)
        assert not buf.any()
        assert c.undo() is False  # nothing left

        c.add_point_interaction([10, 25, 20], include_interaction=True)
        compare(buf, local.add_point((10, 25, 20)).mask)
        c.reset_interactions()
        local.reset()
        assert not buf.any()

        # an existing segment seeds the object (Slicer: add_initial_seg_interaction(seg, run_prediction=False))
        seg = np.zeros(volume.shape, np.uint8)
        seg[9:14, 14:26, 12:22] = 1
        c.add_initial_seg_interaction(seg, run_prediction=False)
        local.add_mask(seg)
        compare(buf, seg)
        c.add_point_interaction([11, 20, 17], include_interaction=True)
        compare(buf, local.add_point((11, 20, 17)).mask)

        status = c.lease_status()
        assert 0 < status["remaining_seconds"] <= status["idle_timeout_seconds"] == 600
        assert c.heartbeat() > 0


def test_autozoom_switch_is_per_lease(model, volume):
    app = create_app(ServerSettings(), model=model)
    ctx = app.state.ctx
    with BackgroundServer(app) as url, Client(url) as c:
        c.set_image(volume[None], {"spacing": list(SPACING_KJI)})
        c.set_target_buffer(np.zeros(volume.shape, np.uint8))
        c.set_do_autozoom(True)
        (lease,) = ctx.leases._leases.values()
        assert lease.session.planner.active == ctx.host.autozoom_available
        c.add_point_interaction([12, 20, 18], include_interaction=True)
        c.set_do_autozoom(False)
        assert not lease.session.planner.active


def test_capacity_and_release(model):
    with serve(model, max_sessions=2, retry_after_s=7) as url:
        a, b = Client(url), Client(url)
        with pytest.raises(remote.ServerAtCapacityError):
            Client(url)
        r = httpx.post(f"{url}/claim")
        assert r.status_code == 503 and r.headers["retry-after"] == "7" and "capacity" in r.json()["detail"]
        a.close()  # releases the lease
        c = Client(url)
        for s in (b, c):
            s.close()
        assert httpx.post(f"{url}/release", headers={"X-Lease-Token": "nope"}).json() == {"released": True}


def test_idle_lease_expires_with_410(model, volume):
    with serve(model, idle_timeout_s=0.6, liveness_timeout_s=30) as url:
        c = Client(url)
        c.set_image(volume[None], {"spacing": list(SPACING_KJI)})
        assert c.heartbeat() > 0  # counts as activity (tests/test_server_leases.py), then nothing for 1 s
        time.sleep(1.0)
        with pytest.raises(remote.SessionExpiredError, match="POST /restore"):
            c.add_point_interaction([12, 20, 18], include_interaction=True)
        c.close()


def test_reaper_frees_dead_leases(model):
    # liveness long enough that a loaded CPU cannot let the lease lapse between the two claims
    app = create_app(ServerSettings(max_sessions=1, liveness_timeout_s=1.5, reaper_interval_s=0.1), model=model)
    with BackgroundServer(app) as url:
        token = httpx.post(f"{url}/claim").json()["lease_token"]
        assert httpx.post(f"{url}/claim").status_code == 503
        deadline = time.monotonic() + 15
        while len(app.state.ctx.leases) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(app.state.ctx.leases) == 0  # reaped in the background, no request needed
        r = httpx.post(f"{url}/heartbeat", headers={"X-Lease-Token": token})
        assert r.status_code == 410


def test_api_key(model, tmp_path):
    with serve(model, api_key="s3cret-key") as url:
        assert httpx.get(f"{url}/healthz").json() == {"ok": True}  # no auth
        r = httpx.get(f"{url}/capabilities")
        assert r.status_code == 401 and "API key" in r.json()["detail"]
        with pytest.raises(httpx.HTTPStatusError) as err:
            Client(url, api_key="wrong")
        assert err.value.response.status_code == 401
        with Client(url, api_key="s3cret-key") as c:
            assert c.supports_undo


def _post(url, path, token, body=None, content=None, meta=None):
    headers = {"X-Lease-Token": token}
    if meta is not None:
        headers["X-Meta"] = json.dumps(meta)
    if content is not None:
        return httpx.post(f"{url}{path}", content=content, headers={**headers,
                                                                    "Content-Type": "application/octet-stream"})
    return httpx.post(f"{url}{path}", json=body if body is not None else {}, headers=headers)


def test_bad_requests_get_4xx_with_a_reason(model, volume):
    with serve(model, max_upload_mb=0.5) as url:
        tok = httpx.post(f"{url}/claim").json()["lease_token"]

        def bad(status, path, needle, **kw):
            r = _post(url, path, tok, **kw)
            assert r.status_code == status, (path, r.status_code, r.text)
            assert needle in r.json()["detail"], r.json()

        bad(400, "/add_point_interaction", "no image", body={"coordinates": [1, 2, 3], "include_interaction": True})
        bad(400, "/set_image", "bad magic", content=b"garbage-bytes")
        bad(400, "/set_image", "truncated", content=nnia.pack(volume[None])[:40])
        bad(400, "/set_image", "one channel", content=nnia.pack(np.stack([volume, volume])))
        bad(400, "/set_image", "spacing", content=nnia.pack(volume[None]), meta={"image_properties": {"spacing": [1]}})
        huge = nnia.pack(np.zeros((1, 1, 1, 1), np.uint8)).replace(
            np.array([1, 1, 1, 1], "<i8").tobytes(), np.array([1, 4096, 4096, 4096], "<i8").tobytes())
        bad(413, "/set_image", "server allows", content=huge)  # refused before allocating
        bad(413, "/set_image", "--max-upload-mb", content=b"x" * 600_000)
        bad(413, "/set_image", "--max-upload-mb", content=iter([b"x" * 200_000] * 4))  # chunked, no length
        ok = _post(url, "/set_image", tok, content=nnia.pack(volume[None]),
                   meta={"image_properties": {"spacing": [1, 1, 1]}})
        assert ok.status_code == 200
        bad(400, "/set_target_buffer", "dtype", body={"shape": list(volume.shape), "dtype": "float32"})
        bad(400, "/set_target_buffer", "does not match", body={"shape": [1, 2, 3], "dtype": "uint8"})
        bad(413, "/set_target_buffer", "server allows", body={"shape": [10**5, 10**5, 10**5], "dtype": "uint8"})
        bad(400, "/set_target_buffer", "shape", body={"shape": "abc", "dtype": "uint8"})
        assert _post(url, "/set_target_buffer", tok, body={"shape": list(volume.shape), "dtype": "uint8"}).json() == {}
        bad(400, "/add_point_interaction", "outside the volume",
            body={"coordinates": [99, 1, 1], "include_interaction": True})
        bad(400, "/add_point_interaction", "coordinates", body={"coordinates": [1, 1], "include_interaction": True})
        bad(400, "/add_point_interaction", "include_interaction", body={"coordinates": [1, 1, 1]})
        queued = {"coordinates": [99, 1, 1], "include_interaction": True, "run_prediction": False}
        bad(400, "/add_point_interaction", "outside the volume", body=queued)  # checked before it is queued
        bad(400, "/add_bbox_interaction", "negative boxes", body={"bbox_coords": [[1, 2], [1, 9], [1, 9]],
                                                                 "include_interaction": False})
        bad(400, "/add_bbox_interaction", "negative boxes", body={"bbox_coords": [[1, 2], [1, 9], [1, 9]],
                                                                 "include_interaction": False, "run_prediction": False})
        bad(400, "/add_bbox_interaction", "empty", body={"bbox_coords": [[1, 1], [1, 9], [1, 9]],
                                                        "include_interaction": True, "run_prediction": False})
        bad(400, "/add_bbox_interaction", "empty",
            body={"bbox_coords": [[1, 1], [1, 9], [1, 9]], "include_interaction": True})
        bad(400, "/add_scribble_interaction", "include_interaction", content=b"")  # tests/test_scribbles.py
        bad(400, "/add_initial_seg_interaction", "zero_shot", content=b"", meta={"run_prediction": True})
        bad(400, "/add_initial_seg_interaction", "does not match",
            content=nnia.pack(np.zeros((2, 2, 2), np.uint8)), meta={"run_prediction": False})
        bad(400, "/set_do_autozoom", "do_autozoom", body={"do_autozoom": "yes"})
        r = httpx.post(f"{url}/reset_interactions", content=b"{not json", headers={"X-Lease-Token": tok})
        assert r.status_code == 200  # body ignored, as the reference server does
        r = httpx.post(f"{url}/set_do_autozoom", content=b"{not json",
                       headers={"X-Lease-Token": tok, "Content-Type": "application/json"})
        assert r.status_code == 400 and "JSON" in r.json()["detail"]
        r = _post(url, "/add_point_interaction", "0" * 32, body={"coordinates": [1, 1, 1], "include_interaction": True})
        assert r.status_code == 410


def test_prediction_meta_carries_the_confidence_flag(model, volume, monkeypatch):
    """``X-Meta`` gains ``low_confidence`` / ``warning`` (voxprompt's additions; the official client,
    driven in the tests above, reads the keys it knows)."""
    with serve(model) as url:
        tok = httpx.post(f"{url}/claim").json()["lease_token"]
        assert _post(url, "/set_image", tok, content=nnia.pack(volume[None]),
                     meta={"image_properties": {"spacing": list(SPACING_KJI)}}).status_code == 200
        _post(url, "/set_target_buffer", tok, body={"shape": list(volume.shape), "dtype": "uint8"})
        point = {"coordinates": [12, 20, 18], "include_interaction": True}
        decode = Session._decode
        monkeypatch.setattr(Session, "_decode", lambda self, *a: (decode(self, *a)[0], 0.01))
        meta = json.loads(_post(url, "/add_point_interaction", tok, body=point).headers["X-Meta"])
        assert meta["ran_prediction"] and meta["low_confidence"] is True
        assert "predicted IoU 0.01" in meta["warning"]
        monkeypatch.setattr(Session, "_decode", lambda self, *a: (decode(self, *a)[0], 0.99))
        meta = json.loads(_post(url, "/add_point_interaction", tok, body=point).headers["X-Meta"])
        local = Session(model)
        local.set_image(volume, spacing=SPACING_KJI)
        local.add_point((12, 20, 18))
        want = local.add_point((12, 20, 18))  # the same state: the same flag (the click may be outside)
        assert meta["low_confidence"] is want.low_confidence and meta["warning"] == want.warning
        httpx.post(f"{url}/release", headers={"X-Lease-Token": tok})


def test_queued_interactions_run_with_the_next_prediction(model, volume):
    """``run_prediction=False`` queues an interaction; the next prediction (or ``/predict``) runs the queue."""
    local = Session(model)
    local.set_image(volume, spacing=SPACING_KJI)
    with serve(model, max_points=3) as url, Client(url) as c:
        c.set_image(volume[None], {"spacing": list(SPACING_KJI)})
        buf = np.zeros(volume.shape, np.uint8)
        c.set_target_buffer(buf)
        assert c.add_point_interaction([12, 20, 18], include_interaction=True, run_prediction=False) is None
        assert c.add_bbox_interaction([[11, 12], [12, 30], [10, 26]], include_interaction=True,
                                      run_prediction=False) is None
        assert not buf.any()  # nothing predicted yet
        c.add_point_interaction([12, 5, 5], include_interaction=False)  # runs the queue, then itself
        local.add_point((12, 20, 18))
        local.add_box((11, 12, 10), (12, 30, 26))
        compare(buf, local.add_point((12, 5, 5), positive=False).mask)
        assert buf.any()

        c.add_point_interaction([10, 25, 20], include_interaction=True, run_prediction=False)
        assert c._predict() is not None  # the official client's manual prediction
        compare(buf, local.add_point((10, 25, 20)).mask)
        assert c._predict() is None  # nothing queued

        c.add_point_interaction([4, 35, 32], include_interaction=True, run_prediction=False)
        assert c.undo() is True  # drops the queued point
        assert c._predict() is None
        compare(buf, local.mask)
        assert c.undo() is True  # then undoes predictions as before
        compare(buf, local.undo().mask)

        for _ in range(3):
            c.add_point_interaction([4, 35, 32], include_interaction=True, run_prediction=False)
        with pytest.raises(httpx.HTTPStatusError) as err:  # at most --max-points wait
            c.add_point_interaction([4, 35, 32], include_interaction=True, run_prediction=False)
        assert err.value.response.status_code == 400 and "--max-points" in err.value.response.json()["detail"]
        c.reset_interactions()  # drops the queue
        local.reset()
        assert c._predict() is None and not buf.any()

        caps = httpx.get(f"{url}/capabilities").json()
        assert caps["supports_negative_bbox"] is False  # advertised as missing, and refused
        with pytest.raises(httpx.HTTPStatusError) as err:
            c.add_bbox_interaction([[11, 12], [12, 30], [10, 26]], include_interaction=False)
        assert err.value.response.status_code == 400 and "negative boxes" in err.value.response.json()["detail"]


def test_label_policy_additions(model, volume, monkeypatch):
    """voxprompt's /voxprompt/ endpoints: finish an object locked, start the next; its predictions
    leave the locked object's voxels out of the client's buffer (known masks per object)."""
    a = np.zeros(volume.shape, bool)
    a[8:16, 12:30, 10:20] = True
    b = np.zeros(volume.shape, bool)
    b[8:16, 12:30, 16:26] = True
    known = {1: a, 2: b}
    monkeypatch.setattr(Session, "_pasted", lambda self, mask, roi, mask_roi, cache=True: (
        tuple(slice(0, n) for n in mask.shape), known[self.object_id].copy()))
    monkeypatch.setattr(Session, "_refined", lambda self, region, block, clicks, cancel=None: block)
    with serve(model) as url, Client(url) as c:
        assert httpx.get(f"{url}/capabilities").json()["supports_label_policy"] is True
        c.set_image(volume[None], {"spacing": list(SPACING_KJI)})
        first = np.zeros(volume.shape, np.uint8)
        c.set_target_buffer(first)
        c.add_point_interaction([12, 20, 12], include_interaction=True)
        compare(first, a)
        token = {"X-Lease-Token": c._lease_token}

        def post(path: str, body: dict) -> httpx.Response:
            return httpx.post(f"{url}/voxprompt/{path}", json=body, headers=token)

        r = post("new_object", {"lock_current": True})
        assert r.json() == {"object_id": 2, "objects": [1, 2], "locked": [1], "others_negative": False}
        second = np.zeros(volume.shape, np.uint8)
        c.set_target_buffer(second)  # the new target starts empty: nothing is reset
        c.add_point_interaction([12, 20, 24], include_interaction=True)
        compare(second, b & ~a)  # object 1 is locked
        assert post("lock_object", {"object_id": 1, "locked": False}).json()["locked"] == []
        c.add_point_interaction([12, 21, 24], include_interaction=True)
        compare(second, b)  # unlocked: the overlap is taken
        assert post("label_policy", {"others_negative": True}).json()["others_negative"] is True
        c.add_point_interaction([12, 22, 24], include_interaction=True)
        compare(second, b & ~a)
        assert post("lock_object", {}).json()["locked"] == [2]  # no id: the current object
        got = httpx.get(f"{url}/voxprompt/objects", headers=token).json()
        assert got == {"object_id": 2, "objects": [1, 2], "locked": [2], "others_negative": True}
        for path, body, needle in [("lock_object", {"object_id": 9}, "no object 9"),
                                   ("label_policy", {"others_negative": "yes"}, "others_negative"),
                                   ("new_object", {"lock_current": 1}, "lock_current")]:
            r = post(path, body)
            assert r.status_code == 400 and needle in r.json()["detail"], r.json()
