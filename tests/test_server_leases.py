"""Lease bookkeeping under real use (issue 21): every MONAI Label request counts against --max-sessions,
--data-dir sessions time out and can be released, heartbeats keep a lease alive, expired sessions stay
restorable for a grace period, and the operator's status route."""
from __future__ import annotations

import json
from pathlib import Path

import httpx
import numpy as np
import pytest
import SimpleITK as sitk

from voxprompt.server import ServerSettings, create_app
from voxprompt.server.testing import BackgroundServer, tiny_model

MODEL = "voxprompt-med3d-small"


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def volume_path(tmp_path_factory) -> Path:
    rng = np.random.default_rng(5)
    arr = rng.normal(0, 20, size=(20, 36, 40)).astype(np.int16)  # (k, j, i)
    arr[6:14, 10:26, 12:30] += 300
    path = tmp_path_factory.mktemp("vol") / "vol.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(path))
    return path


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
