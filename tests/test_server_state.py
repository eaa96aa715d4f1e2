"""Exporting and importing a lease's Session state (``GET``/``POST /state``), shared by every protocol."""
from __future__ import annotations

import io
import zipfile

import httpx
import numpy as np
import pytest
import SimpleITK as sitk
from server_testing import BackgroundServer, fix_model_masks, tiny_model

from voxprompt.io import read_image
from voxprompt.server import ServerSettings, create_app
from voxprompt.session import Session

API = "api/viewer"
SHAPE = (20, 36, 44)  # (k, j, i)


def write_volume(path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    arr = rng.normal(0, 20, size=SHAPE).astype(np.int16)
    arr[6:14, 10:26, 12:32] += 300
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((1.1, 1.3, 2.0))
    sitk.WriteImage(img, str(path))


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("state-data")
    write_volume(root / "a.nii.gz", 0)
    write_volume(root / "b.nii.gz", 1)  # same size and geometry, other voxels
    app = create_app(ServerSettings(data_dir=root, session_memory_mb=4), model=tiny_model())
    with BackgroundServer(app) as url:
        yield url, app.state.ctx, root


def _open(url: str, name: str) -> str:
    return httpx.post(f"{url}/{API}/open", data={"path": name}).json()["token"]


def test_export_then_import_into_a_new_lease(served, monkeypatch):
    url, ctx, root = served
    a = np.zeros(SHAPE, bool)
    a[6:14, 10:26, 12:24] = True
    b = np.zeros(SHAPE, bool)
    b[6:14, 10:26, 20:32] = True
    fix_model_masks(monkeypatch, {1: a, 2: b})
    t1 = _open(url, "a.nii.gz")
    httpx.post(f"{url}/{API}/{t1}/point", json={"ijk": [14, 18, 10]}, timeout=60)
    httpx.post(f"{url}/{API}/{t1}/objects/1/lock", json={"locked": True})
    httpx.post(f"{url}/{API}/{t1}/objects")
    httpx.post(f"{url}/{API}/{t1}/point", json={"ijk": [28, 18, 10]}, timeout=60)
    first = ctx.leases.peek(t1).session
    expected = first.label_map().copy()
    assert set(np.unique(expected)) == {0, 1, 2}  # object 2 kept out of locked object 1

    r = httpx.get(f"{url}/state", headers={"X-Lease-Token": t1})
    assert r.status_code == 200 and r.headers["content-type"] == "application/octet-stream"
    data = r.content
    in_python = Session.load(data, tiny_model(), read_image(root / "a.nii.gz"),
                             refine=False)
    np.testing.assert_array_equal(in_python.label_map(), expected)

    t2 = _open(url, "a.nii.gz")
    r = httpx.post(f"{url}/state", headers={"X-Lease-Token": t2}, content=data)
    assert r.status_code == 200, r.text
    assert r.json() == {"object_id": 2, "objects": [1, 2], "locked": [1], "others_negative": False}
    second = ctx.leases.peek(t2).session
    np.testing.assert_array_equal(second.label_map(), expected)
    # the undo history came along: undoing object 2's click empties it in both leases alike
    httpx.post(f"{url}/{API}/{t1}/undo")
    httpx.post(f"{url}/{API}/{t2}/undo")
    np.testing.assert_array_equal(second.label_map(), first.label_map())
    assert not first.mask.any()


def test_bad_imports_are_refused_and_change_nothing(served, monkeypatch):
    url, ctx, root = served
    a = np.zeros(SHAPE, bool)
    a[6:14, 10:26, 12:24] = True
    fix_model_masks(monkeypatch, {1: a, 2: a})
    t1 = _open(url, "a.nii.gz")
    httpx.post(f"{url}/{API}/{t1}/point", json={"ijk": [14, 18, 10]}, timeout=60)
    data = httpx.get(f"{url}/state", headers={"X-Lease-Token": t1}).content
    other = _open(url, "b.nii.gz")
    session = ctx.leases.peek(other).session
    before = session.label_map().copy()

    r = httpx.post(f"{url}/state", headers={"X-Lease-Token": other}, content=data)
    assert r.status_code == 400 and "saved on another image" in r.json()["detail"], r.text
    r = httpx.post(f"{url}/state", headers={"X-Lease-Token": other}, content=data[: len(data) // 2])
    assert r.status_code == 400 and "truncated or corrupt" in r.json()["detail"], r.text
    bomb = io.BytesIO()  # 16 MiB of zeros compress to a few KiB; the cap is 4 MiB per session
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("manifest.npy", b"\0" * (16 << 20))
    assert len(bomb.getvalue()) < 1 << 20
    r = httpx.post(f"{url}/state", headers={"X-Lease-Token": other}, content=bomb.getvalue())
    assert r.status_code == 413 and "MiB" in r.json()["detail"], r.text
    np.testing.assert_array_equal(session.label_map(), before)
    r = httpx.post(f"{url}/state", headers={"X-Lease-Token": "0" * 32}, content=data)
    assert r.status_code == 410, r.text
    assert httpx.get(f"{url}/state").status_code == 410  # no token
