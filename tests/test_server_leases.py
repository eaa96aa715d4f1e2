"""Lease bookkeeping under real use (issue 21): every MONAI Label request counts against --max-sessions,
--data-dir sessions time out and can be released, heartbeats keep a lease alive, expired sessions stay
restorable for a grace period, and the operator's status route."""
from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from server_testing import BackgroundServer, tiny_model, write_blob_volume

from voxprompt.server import ServerSettings, create_app

MODEL = "voxprompt-med3d-small"


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def volume_path(tmp_path_factory) -> Path:
    return write_blob_volume(tmp_path_factory.mktemp("vol"), seed=5)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, volume_path) -> Path:
    root = tmp_path_factory.mktemp("data")
    (root / "ct.nii.gz").write_bytes(volume_path.read_bytes())
    return root


def open_session(h: httpx.Client, path: Path) -> httpx.Response:
    with open(path, "rb") as fh:
        return h.put("/session/", files=[("files", (path.name, fh))])


def one_off(h: httpx.Client, path: Path) -> httpx.Response:
    with open(path, "rb") as fh:
        return h.post(f"/infer/{MODEL}", params={"output": "json"},
                      files={"params": (None, json.dumps({"foreground": [[20, 18, 10]]})), "file": (path.name, fh)})


def by_path(h: httpx.Client, image: str) -> httpx.Response:
    return h.post(f"/infer/{MODEL}", params={"image": image, "output": "json"},
                  files={"params": (None, json.dumps({"foreground": [[20, 18, 10]]}))})


def test_one_off_infer_counts_against_the_session_limit(model, volume_path):
    app = create_app(ServerSettings(max_sessions=1, retry_after_s=9), model=model)
    leases = app.state.ctx.leases
    with BackgroundServer(app) as url, httpx.Client(base_url=url, timeout=60) as h:
        sid = open_session(h, volume_path).json()["session_id"]
        r = one_off(h, volume_path)
        assert r.status_code == 503 and r.headers["retry-after"] == "9" and "capacity" in r.json()["detail"]
        assert h.delete(f"/session/{sid}").status_code == 200
        r = one_off(h, volume_path)
        assert r.status_code == 200 and r.json()["voxprompt"]["points_added"] == 1
        assert len(leases) == 0  # its slot is free again


def test_data_dir_session_times_out_normally_and_can_be_released(model, volume_path, data_dir):
    app = create_app(ServerSettings(max_sessions=1, data_dir=data_dir, idle_timeout_s=42), model=model)
    leases = app.state.ctx.leases
    with BackgroundServer(app) as url, httpx.Client(base_url=url, timeout=60) as h:
        r = by_path(h, "ct.nii.gz")
        assert r.status_code == 200, r.text
        sid = r.json()["voxprompt"]["session_id"]
        lease = leases.peek(sid)
        assert lease.idle_timeout == 42  # --idle-timeout, not the hour of a MONAI session
        assert open_session(h, volume_path).status_code == 503  # it holds the only slot ...
        assert h.delete(f"/session/{sid}").status_code == 200  # ... until released
        assert len(leases) == 0
        assert open_session(h, volume_path).status_code == 200
        assert by_path(h, "ct.nii.gz").status_code == 503  # a released one is re-opened, counted again


class Clock:
    """The lease table's clock, moved by the test (no sleeping)."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def clocked_app(model, **settings):
    app = create_app(ServerSettings(**settings), model=model)
    clock = Clock()
    app.state.ctx.leases._clock = clock
    return app, clock


def test_heartbeats_keep_a_lease_alive(model):
    app, clock = clocked_app(model, idle_timeout_s=100, liveness_timeout_s=1000)
    with BackgroundServer(app) as url, httpx.Client(base_url=url, timeout=60) as h:
        tok = {"X-Lease-Token": h.post("/claim").json()["lease_token"]}
        for _ in range(3):  # 270 s without a click, a heartbeat every 90 s
            clock.t += 90
            r = h.post("/heartbeat", headers=tok)
            assert r.status_code == 200 and r.json()["remaining_seconds"] == 100
        assert h.get("/lease_status", headers=tok).status_code == 200
        clock.t += 101
        r = h.post("/heartbeat", headers=tok)
        assert r.status_code == 410 and "POST /restore" in r.json()["detail"]


def open_viewer(h: httpx.Client, path: Path) -> str:
    with open(path, "rb") as fh:
        r = h.post("/api/viewer/open", files={"file": (path.name, fh)})
    assert r.status_code == 200, r.text
    return r.json()["token"]


def test_expired_session_is_restorable_during_its_grace(model, volume_path):
    app, clock = clocked_app(model, max_sessions=1, idle_timeout_s=100, liveness_timeout_s=1000,
                             restore_grace_s=500)
    leases = app.state.ctx.leases
    with BackgroundServer(app) as url, httpx.Client(base_url=url, timeout=60) as h:
        tok = open_viewer(h, volume_path)
        assert h.post(f"/api/viewer/{tok}/point", json={"ijk": [20, 18, 10]}).status_code == 200
        assert h.post(f"/api/viewer/{tok}/refined").status_code == 200  # as the page does
        labels = h.get(f"/api/viewer/{tok}/labels.nii.gz").content
        # the page heartbeats: alive long after its last click
        clock.t += 90
        assert h.post(f"/api/viewer/{tok}/heartbeat").status_code == 200
        clock.t += 90
        assert h.get(f"/api/viewer/{tok}/labels.nii.gz").status_code == 200
        clock.t += 101  # now idle past the time-out
        r = h.get(f"/api/viewer/{tok}/labels.nii.gz")
        assert r.status_code == 410
        assert "kept for 500 s more" in r.json()["detail"] and "POST /restore" in r.json()["detail"]
        assert len(leases) == 0 and len(leases.expired_leases()) == 1  # its slot is free ...
        other = open_viewer(h, volume_path)
        r = h.post("/restore", headers={"X-Lease-Token": tok})
        assert r.status_code == 503 and "retry the restore later" in r.json()["detail"]
        assert h.delete(f"/api/viewer/{other}").status_code == 200
        r = h.post("/restore", headers={"X-Lease-Token": tok})  # ... and it comes back with its masks
        assert r.status_code == 200 and r.json()["kind"] == "web" and r.json()["remaining_seconds"] == 100
        assert h.get(f"/api/viewer/{tok}/labels.nii.gz").content == labels
        # after the grace period it is gone for good
        clock.t += 101
        assert h.get(f"/api/viewer/{tok}/labels.nii.gz").status_code == 410
        clock.t += 501
        r = h.get(f"/api/viewer/{tok}/labels.nii.gz")
        assert r.status_code == 410 and "restore" not in r.json()["detail"]
        r = h.post("/restore", headers={"X-Lease-Token": tok})
        assert r.status_code == 410 and "nothing to restore" in r.json()["detail"]
        assert leases.expired_leases() == []


def test_expired_monai_session_says_it_can_be_restored(model, volume_path):
    app, clock = clocked_app(model, restore_grace_s=60)
    with BackgroundServer(app) as url, httpx.Client(base_url=url, timeout=60) as h:
        r = h.put("/session/", params={"expiry": 30}, files=[("files", (volume_path.name, volume_path.read_bytes()))])
        sid = r.json()["session_id"]
        clock.t += 31
        r = h.get(f"/session/{sid}")
        assert r.status_code == 404 and "POST /restore" in r.json()["detail"]  # 404: what Slicer's module expects
        assert h.post("/restore", headers={"X-Lease-Token": sid}).json()["kind"] == "monailabel"
        assert h.get(f"/session/{sid}").status_code == 200
        assert h.delete(f"/session/{sid}").status_code == 200
        assert h.post("/restore", headers={"X-Lease-Token": sid}).status_code == 410  # released: not restorable


def test_restore_grace_zero_keeps_nothing(model):
    app, clock = clocked_app(model, idle_timeout_s=10, restore_grace_s=0)
    with BackgroundServer(app) as url, httpx.Client(base_url=url, timeout=60) as h:
        tok = {"X-Lease-Token": h.post("/claim").json()["lease_token"]}
        clock.t += 11
        r = h.post("/heartbeat", headers=tok)
        assert r.status_code == 410 and r.json()["detail"] == "lease expired or unknown"
        assert h.post("/restore", headers=tok).status_code == 410


def test_status_lists_leases_without_tokens(model, volume_path):
    app, clock = clocked_app(model, api_key="k3y", idle_timeout_s=100, liveness_timeout_s=1000, restore_grace_s=500)
    key = {"Authorization": "Bearer k3y"}
    with BackgroundServer(app) as url, httpx.Client(base_url=url, timeout=60, headers=key) as h:
        assert httpx.get(f"{url}/status").status_code == 401  # behind the key
        sid = open_session(h, volume_path).json()["session_id"]
        clock.t += 30
        nn = h.post("/claim").json()["lease_token"]
        clock.t += 10
        r = h.get("/status")
        assert r.status_code == 200
        body = r.json()
        assert sid not in r.text and nn not in r.text  # no tokens, only their first 8 digits
        assert body["sessions"] == 2 and body["max_sessions"] == 4 and body["model"] == MODEL
        rows = {x["id"]: x for x in body["leases"]}
        mon, nni = rows[sid[:8]], rows[nn[:8]]
        assert mon["kind"] == "monailabel" and mon["source"] == "session" and nni["kind"] == "nninteractive"
        assert mon["age_s"] == 40 and mon["idle_s"] == 40 and nni["age_s"] == 10
        assert mon["memory_bytes"] >= 20 * 36 * 40 * 2 and nni["memory_bytes"] == 0  # the int16 image; none
        assert body["memory_bytes"] == mon["memory_bytes"] and body["expired"] == []
        clock.t += 101  # the nnInteractive lease is idle past its time-out (the MONAI one has an hour)
        r = h.post("/heartbeat", headers={"X-Lease-Token": nn})
        assert r.status_code == 410
        body = h.get("/status").json()
        (gone,) = body["expired"]
        assert gone["id"] == nn[:8] and gone["restorable_for_s"] == 500 and "heartbeat" in gone["why"]


def test_memory_pressure_drops_restorable_sessions_first(model):
    from voxprompt.server.errors import LeaseGone
    from voxprompt.server.leases import LeaseManager
    from voxprompt.session import Session

    clock = Clock()
    lm = LeaseManager(lambda: Session(model), 4, clock=clock, grace_s=100)
    old, idle = lm.claim("web", 10), lm.claim("web", 1000)
    clock.t += 11
    assert lm.sweep() == 1 and [x.token for x in lm.expired_leases()] == [old.token]
    old.memory_bytes, idle.memory_bytes = 100, 100
    busy = lm.claim("web", 1000)
    with busy.lock:
        evicted = lm.account(busy, session_cap=2**30, total_cap=150)
    assert evicted == [old.token] and lm.expired_leases() == [] and len(lm) == 2  # the live idle one stays
    with pytest.raises(LeaseGone, match="nothing to restore"):
        lm.restore(old.token)
