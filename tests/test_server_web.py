"""Browser viewer: geometry helpers, the /api/viewer endpoints, and a real headless Chromium session.

The browser test loads an LPS volume (where NiiVue's RAS-reoriented voxel index differs from the
file's), clicks the canvas, checks the overlay changed, and compares the downloaded mask with the
server session's label map.
"""
from __future__ import annotations

import io
import os
import shutil
import zipfile
from pathlib import Path

import httpx
import numpy as np
import pytest
import SimpleITK as sitk
from server_testing import BackgroundServer, fix_model_masks, tiny_model

from voxprompt.io import read_image
from voxprompt.server import ServerSettings, create_app
from voxprompt.server.viewer import STATIC_DIR
from voxprompt.server.volumes import nifti_affine, ras_to_file_ijk
from voxprompt.session import from_slicer_ijk

API = "api/viewer"


@pytest.fixture(scope="module")
def model():
    return tiny_model()


def make_volume(path: Path, direction=(1, 0, 0, 0, 1, 0, 0, 0, 1)) -> Path:
    """(k, j, i) = (20, 36, 44) int16 with a bright box in the middle; LPS-identity by default."""
    rng = np.random.default_rng(2)
    arr = rng.normal(0, 20, size=(20, 36, 44)).astype(np.int16)
    arr[6:14, 10:26, 12:32] += 300
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((1.1, 1.3, 2.0))
    img.SetOrigin((-20.0, 15.0, 7.5))
    img.SetDirection(direction)
    sitk.WriteImage(img, str(path))
    return path


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("viewer-data")
    make_volume(root / "lps.nii.gz")
    return root


@pytest.fixture(scope="module")
def served(model, data_dir):
    app = create_app(ServerSettings(data_dir=data_dir), model=model)
    with BackgroundServer(app) as url:
        yield url, app.state.ctx


def test_file_voxel_geometry_matches_simpleitk(tmp_path):
    path = make_volume(tmp_path / "obl.nii.gz", direction=(0, -1, 0, 0.6, 0, -0.8, 0.8, 0, 0.6))
    ref = sitk.ReadImage(str(path))
    aff = nifti_affine(read_image(path))
    for ijk in ([0, 0, 0], [5.5, 7.25, 3], [43, 35, 19]):
        lps = np.array(ref.TransformContinuousIndexToPhysicalPoint([float(v) for v in ijk]))
        ras = lps * [-1, -1, 1]
        np.testing.assert_allclose(aff @ [*ijk, 1], [*ras, 1], atol=1e-9)
        np.testing.assert_allclose(ras_to_file_ijk(aff, ras), ijk, atol=1e-9)


def test_viewer_point_reports_a_poor_result(served, monkeypatch):
    from voxprompt.session import Session

    url, _ = served
    tok = httpx.post(f"{url}/{API}/open", data={"path": "lps.nii.gz"}).json()["token"]
    decode = Session._decode
    monkeypatch.setattr(Session, "_decode", lambda self, *a: (decode(self, *a)[0], 0.01))
    s = httpx.post(f"{url}/{API}/{tok}/point", json={"ijk": [22, 18, 10]}, timeout=60).json()
    assert s["low_confidence"] is True and "predicted IoU 0.01" in s["warning"]
    assert httpx.delete(f"{url}/{API}/{tok}").json() == {"closed": True}


def test_viewer_api(served, data_dir, model):
    url, ctx = served
    assert httpx.get(f"{url}/").status_code == 200
    assert httpx.get(f"{url}/web/viewer.js").status_code == 200
    cfg = httpx.get(f"{url}/{API}/config").json()
    assert cfg["data_dir"] and not cfg["auth"]
    assert httpx.get(f"{url}/{API}/files").json() == {"files": ["lps.nii.gz"]}
    info = httpx.post(f"{url}/{API}/open", data={"path": "lps.nii.gz"}).json()
    tok = info["token"]
    assert info["size_ijk"] == [44, 36, 20] and info["objects"] == [1]
    lease = ctx.leases.peek(tok)
    # ijk (file voxel) and mm (RAS) name the same voxel
    s1 = httpx.post(f"{url}/{API}/{tok}/point", json={"ijk": [22, 18, 10]}).json()
    assert s1["voxels"] > 0 and lease.session.prompts[-1] == ("point", ((10, 18, 22), True))
    assert s1["low_confidence"] is (s1["warning"] is not None)  # the Session's flag, for the status line
    mm = (nifti_affine(lease.session.image) @ [30, 20, 9, 1])[:3]
    httpx.post(f"{url}/{API}/{tok}/point", json={"mm": mm.tolist(), "positive": False})
    assert lease.session.prompts[-1] == ("point", ((9, 20, 30), False))
    assert httpx.post(f"{url}/{API}/{tok}/undo").json()["can_undo"]
    assert httpx.post(f"{url}/{API}/{tok}/objects").json()["objects"] == [1, 2]
    assert httpx.post(f"{url}/{API}/{tok}/objects/1").json()["object_id"] == 1
    r = httpx.get(f"{url}/{API}/{tok}/labels.nii.gz", params={"download": True})
    assert "attachment" in r.headers["content-disposition"]
    (Path(data_dir).parent / "dl.nii.gz").write_bytes(r.content)
    got = sitk.GetArrayFromImage(sitk.ReadImage(str(Path(data_dir).parent / "dl.nii.gz")))
    np.testing.assert_array_equal(got, lease.session.label_map())
    for path, body, needle in [
        ("point", {"ijk": [99, 1, 1]}, "outside the volume"),
        ("point", {"ijk": [1, 1, 1], "mm": [0, 0, 0]}, "exactly one"),
        ("point", {"ijk": [1, 1]}, "ijk"),
        ("objects/7", None, "no object 7"),
    ]:
        r = httpx.post(f"{url}/{API}/{tok}/{path}", json=body)
        assert r.status_code == 400 and needle in r.json()["detail"], r.json()
    for form, code in (({"path": "../x.nii.gz"}, 400), ({"path": "none.nii.gz"}, 404), ({}, 400)):
        assert httpx.post(f"{url}/{API}/open", data=form).status_code == code
    assert httpx.delete(f"{url}/{API}/{tok}").json() == {"closed": True}
    assert httpx.get(f"{url}/{API}/{tok}/labels.nii.gz").status_code == 410


def test_viewer_answers_the_model_mask_then_the_refined_one(model, data_dir, monkeypatch):
    """/point answers before the refinement (refining: true); /refined answers the refined mask (the
    synchronous session's); a click while a refinement runs cancels it (refined: false)."""
    import threading

    from voxprompt.session import Session

    pytest.importorskip("skimage")
    shape = read_image(data_dir / "lps.nii.gz").shape
    coarse = np.zeros(shape, bool)
    coarse[7:14, 12:26, 15:34] = True  # the bright box, shifted: the refinement moves its boundary
    fix_model_masks(monkeypatch, {1: coarse}, refine=True)
    go, real = threading.Event(), Session._refined

    def held(self, region, block, clicks, cancel=None):  # a refinement that waits for the test
        while not go.wait(0.01):
            if cancel is not None and cancel.is_set():
                from voxprompt.refine import RefineCancelled

                raise RefineCancelled("cancelled")
        return real(self, region, block, clicks, cancel)

    monkeypatch.setattr(Session, "_refined", held)
    go.set()  # the synchronous reference runs straight through
    local = Session(model, refine=True)
    local.set_image(read_image(data_dir / "lps.nii.gz"))
    expected = local.add_point(from_slicer_ijk([20, 18, 10])).mask
    go.clear()
    app = create_app(ServerSettings(data_dir=data_dir, refine=True), model=model)
    with BackgroundServer(app) as url, httpx.Client(base_url=f"{url}/{API}", timeout=60) as h:
        tok = h.post("/open", data={"path": "lps.nii.gz"}).json()["token"]
        fast = h.post(f"/{tok}/point", json={"ijk": [20, 18, 10]}).json()
        assert fast["refining"] and fast["voxels"] == int(coarse.sum())
        go.set()
        done = h.post(f"/{tok}/refined").json()
        assert done["refined"] and not done["refining"] and done["version"] > fast["version"]
        labels = h.get(f"/{tok}/labels.nii.gz").content
        got = _labels_from_bytes(labels) == 1
        np.testing.assert_array_equal(got, expected)
        assert done["voxels"] == int(expected.sum()) != fast["voxels"]
        go.clear()
        h.post(f"/{tok}/point", json={"ijk": [22, 18, 10], "positive": False})
        h.post(f"/{tok}/point", json={"ijk": [24, 18, 10]})  # cancels the one still running
        go.set()
        last = h.post(f"/{tok}/refined").json()
        assert last["refined"] and h.post(f"/{tok}/refined").json()["refined"] is False  # nothing pending
        # a download waits for the refinement still running
        go.clear()
        assert h.post(f"/{tok}/point", json={"ijk": [20, 18, 10]}).json()["refining"]
        got = {}
        fetch = threading.Thread(target=lambda: got.update(r=httpx.get(
            f"{url}/{API}/{tok}/labels.nii.gz", params={"download": True}, timeout=60)))
        fetch.start()
        fetch.join(0.5)
        assert fetch.is_alive()
        go.set()
        fetch.join(30)
        session = app.state.ctx.leases.peek(tok).session
        assert not session.refining
        np.testing.assert_array_equal(_labels_from_bytes(got["r"].content), session.label_map())


def _labels_from_bytes(data: bytes) -> np.ndarray:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "labels.nii.gz"
        path.write_bytes(data)
        return read_image(path).array


def test_viewer_label_policy(served, monkeypatch):
    """Lock / unlock an object and others-as-negatives through the viewer API (known masks per object)."""

    url, ctx = served
    shape = (20, 36, 44)  # (k, j, i)
    a = np.zeros(shape, bool)
    a[6:14, 10:26, 12:24] = True
    b = np.zeros(shape, bool)
    b[6:14, 10:26, 20:32] = True
    fix_model_masks(monkeypatch, {1: a, 2: b})
    info = httpx.post(f"{url}/{API}/open", data={"path": "lps.nii.gz"}).json()
    tok = info["token"]
    assert info["locked"] == [] and info["others_negative"] is False
    lease = ctx.leases.peek(tok)
    httpx.post(f"{url}/{API}/{tok}/point", json={"ijk": [14, 18, 10]}, timeout=60)
    s = httpx.post(f"{url}/{API}/{tok}/objects/1/lock", json={"locked": True}).json()
    assert s["locked"] == [1] and s["object_id"] == 1
    httpx.post(f"{url}/{API}/{tok}/objects")
    s = httpx.post(f"{url}/{API}/{tok}/point", json={"ijk": [28, 18, 10]}, timeout=60).json()
    assert s["voxels"] == int((b & ~a).sum()) and s["locked"] == [1]
    np.testing.assert_array_equal(lease.session.mask, b & ~a)
    assert httpx.post(f"{url}/{API}/{tok}/objects/1/lock", json={"locked": False}).json()["locked"] == []
    s = httpx.post(f"{url}/{API}/{tok}/point", json={"ijk": [29, 18, 10]}, timeout=60).json()
    assert s["voxels"] == int(b.sum())
    s = httpx.post(f"{url}/{API}/{tok}/policy", json={"others_negative": True}).json()
    assert s["others_negative"] is True
    s = httpx.post(f"{url}/{API}/{tok}/point", json={"ijk": [28, 19, 10]}, timeout=60).json()
    assert s["voxels"] == int((b & ~a).sum())
    assert httpx.post(f"{url}/{API}/{tok}/objects/2/lock").json()["locked"] == [2]  # no body: lock
    for path, body, needle in [("objects/7/lock", {"locked": True}, "no object 7"),
                               ("policy", {"others_negative": "on"}, "others_negative"),
                               ("objects/1/lock", {"locked": True, "x": 1}, "x")]:
        r = httpx.post(f"{url}/{API}/{tok}/{path}", json=body)
        assert r.status_code == 400 and needle in r.json()["detail"], r.json()
    assert httpx.delete(f"{url}/{API}/{tok}").json() == {"closed": True}


def _nifti_voxels(data: bytes) -> np.ndarray:
    """The voxels of a gzipped NIfTI-1 file as its bytes lie (the order and dtype NiiVue keeps), indexed
    [k, j, i]: parsed by hand, not by a reader that could reorder them."""
    import gzip

    raw = gzip.decompress(data)
    dims = np.frombuffer(raw, "<i2", 8, 40)
    code = int(np.frombuffer(raw, "<i2", 1, 70)[0])
    offset = int(np.frombuffer(raw, "<f4", 1, 108)[0])
    dtype = {2: np.dtype("<u1"), 512: np.dtype("<u2")}[code]
    n = int(np.prod(dims[1:4]))
    return np.frombuffer(raw, dtype, n, offset).reshape(dims[3], dims[2], dims[1])


def _block(h: httpx.Client, tok: str, box, **headers) -> httpx.Response:
    (k0, k1), (j0, j1), (i0, i1) = box
    return h.get(f"/{tok}/labels/block", params=dict(k0=k0, k1=k1, j0=j0, j1=j1, i0=i0, i1=i1), headers=headers)


def test_viewer_label_block(served, monkeypatch):
    """GET labels/block: the label map inside a half-open (k, j, i) box, as the bytes of that block of the
    labels.nii.gz the page loads (file order, dtype); bad boxes are 400 with a message."""
    url, ctx = served
    shape = (20, 36, 44)
    a = np.zeros(shape, bool)
    a[6:14, 10:26, 12:24] = True
    b = np.zeros(shape, bool)
    b[7:12, 15:30, 20:35] = True
    fix_model_masks(monkeypatch, {1: a, 2: b})
    with httpx.Client(base_url=f"{url}/{API}", timeout=60) as h:
        tok = h.post("/open", data={"path": "lps.nii.gz"}).json()["token"]
        session = ctx.leases.peek(tok).session
        s1 = h.post(f"/{tok}/point", json={"ijk": [14, 18, 10]}).json()
        assert s1["changed_bbox_kji"] == [[6, 14], [10, 26], [12, 24]]
        h.post(f"/{tok}/objects")
        s2 = h.post(f"/{tok}/point", json={"ijk": [30, 20, 9]}).json()
        assert s2["changed_bbox_kji"] == [[7, 12], [15, 30], [20, 35]]
        page = _nifti_voxels(h.get(f"/{tok}/labels.nii.gz").content)
        np.testing.assert_array_equal(page, session.label_map())
        for box in (s1["changed_bbox_kji"], s2["changed_bbox_kji"], [[0, 20], [0, 36], [0, 44]], [[9, 10], [20, 21],
                                                                                                 [21, 23]]):
            r = _block(h, tok, box)
            region = tuple(slice(lo, hi) for lo, hi in box)
            assert r.status_code == 200 and r.headers["x-label-dtype"] == "uint8"
            assert r.content == page[region].tobytes() and np.frombuffer(r.content, np.uint8).any()
        assert set(np.frombuffer(_block(h, tok, [[6, 12], [10, 30], [12, 35]]).content, np.uint8).tolist()) == {0, 1, 2}
        for box, needle in [([[3, 3], [0, 5], [0, 5]], "k0=3, k1=3 is empty"),
                            ([[0, 5], [0, 37], [0, 5]], "j1=37"),
                            ([[0, 5], [0, 5], [-1, 5]], "i0=-1"),
                            ([[5, 2], [0, 5], [0, 5]], "0 <= k0 < k1 <= 20")]:
            r = _block(h, tok, box)
            assert r.status_code == 400 and needle in r.json()["detail"], (box, r.json())
        for params, needle in [({"k0": 0, "k1": 1.5, "j0": 0, "j1": 1, "i0": 0, "i1": 1}, "k1"),
                               ({"k0": 0, "k1": 1, "j0": 0, "j1": 1, "i0": 0}, "i1")]:
            r = h.get(f"/{tok}/labels/block", params=params)
            assert r.status_code == 400 and needle in r.json()["detail"], (params, r.json())
        h.delete(f"/{tok}")
        assert _block(h, tok, s1["changed_bbox_kji"]).status_code == 410


def test_viewer_label_block_needs_the_key(model, data_dir):
    app = create_app(ServerSettings(data_dir=data_dir, api_key="k3y"), model=model)
    with BackgroundServer(app) as url, httpx.Client(base_url=f"{url}/{API}", timeout=60) as h:
        key = {"Authorization": "Bearer k3y"}
        tok = h.post("/open", data={"path": "lps.nii.gz"}, headers=key).json()["token"]
        box = [[0, 2], [0, 3], [0, 4]]
        assert _block(h, tok, box).status_code == 401
        assert _block(h, tok, box, Authorization="Bearer nope").status_code == 401
        r = _block(h, tok, box, **key)
        assert r.status_code == 200 and r.content == bytes(24)


def test_viewer_reports_a_refinement_another_request_applied(model, data_dir, monkeypatch):
    """A refinement that finished is applied by the next request on the session, whichever it is (here the
    page's block fetch); the next summary's changed_bbox_kji still covers its change, so that the page,
    which updates only the blocks it is told of, shows it."""
    import time

    pytest.importorskip("skimage")
    shape = read_image(data_dir / "lps.nii.gz").shape
    coarse = np.zeros(shape, bool)
    coarse[7:14, 12:26, 15:34] = True  # the bright box, shifted: the refinement moves its boundary
    fix_model_masks(monkeypatch, {1: coarse}, refine=True)
    app = create_app(ServerSettings(data_dir=data_dir, refine=True), model=model)
    with BackgroundServer(app) as url, httpx.Client(base_url=f"{url}/{API}", timeout=60) as h:
        tok = h.post("/open", data={"path": "lps.nii.gz"}).json()["token"]
        session = app.state.ctx.leases.peek(tok).session
        fast = h.post(f"/{tok}/point", json={"ijk": [20, 18, 10]}).json()
        assert fast["refining"] and fast["changed_bbox_kji"] == [[7, 14], [12, 26], [15, 34]]
        deadline = time.monotonic() + 30
        while session.refining and time.monotonic() < deadline:  # finished, not yet applied
            time.sleep(0.01)
        shown = coarse.astype(np.uint8)  # what the page shows: the fast mask
        box = fast["changed_bbox_kji"]
        region = tuple(slice(lo, hi) for lo, hi in box)
        shown[region] = np.frombuffer(_block(h, tok, box).content, np.uint8).reshape(shown[region].shape)
        after = h.post(f"/{tok}/refined").json()  # nothing pending any more ...
        assert after["refined"] is False and after["changed_bbox_kji"] is not None  # ... but its change is told
        region = tuple(slice(lo, hi) for lo, hi in after["changed_bbox_kji"])
        shown[region] = np.frombuffer(_block(h, tok, after["changed_bbox_kji"]).content,
                                      np.uint8).reshape(shown[region].shape)
        np.testing.assert_array_equal(shown, session.label_map())
        assert not np.array_equal(shown, coarse)  # the refinement changed something
        assert h.post(f"/{tok}/refined").json()["changed_bbox_kji"] is None  # told once


def _label_file(labels: np.ndarray, like: Path, path: Path) -> bytes:
    """``labels`` (k, j, i) written as NIfTI on the grid of the volume file ``like``."""
    ref = sitk.ReadImage(str(like))
    img = sitk.GetImageFromArray(labels)
    img.CopyInformation(ref)
    sitk.WriteImage(img, str(path))
    return path.read_bytes()


def test_viewer_box_names_and_markers(served):
    """A box drawn on a slice (inclusive file-voxel corners, any order) is the Session's 2D box; the
    summary lists the current object's clicks and boxes in file voxels, and object names."""
    url, ctx = served
    with httpx.Client(base_url=f"{url}/{API}", timeout=60) as h:
        tok = h.post("/open", data={"path": "lps.nii.gz"}).json()["token"]
        session = ctx.leases.peek(tok).session
        s = h.post(f"/{tok}/point", json={"ijk": [22, 18, 10], "positive": False}).json()
        assert s["clicks"] == [{"ijk": [22, 18, 10], "positive": False}] and s["boxes"] == []
        s = h.post(f"/{tok}/box", json={"ijk": [[30, 25, 10], [12, 10, 10]]}).json()
        assert session.prompts[-1] == ("box", ((10, 10, 12), (11, 26, 31)))  # (k, j, i), [lo, hi)
        assert s["boxes"] == [{"lo_ijk": [12, 10, 10], "hi_ijk": [30, 25, 10]}] and len(s["clicks"]) == 1
        assert s["dicom"] is False and h.post(f"/{tok}/refined").json()["voxels"] == int(session.mask.sum())
        s = h.post(f"/{tok}/objects/1/name", json={"name": "  left\tkidney "}).json()
        assert s["names"] == {"1": "left kidney"}
        h.post(f"/{tok}/objects")
        s = h.post(f"/{tok}/objects/2/name", json={"name": "liver"}).json()
        assert s["names"] == {"1": "left kidney", "2": "liver"} and s["clicks"] == [] and s["boxes"] == []
        assert h.post(f"/{tok}/objects/1/name", json={"name": ""}).json()["names"] == {"2": "liver"}
        for path, body, needle in [
            ("box", {"ijk": [[1, 1, 1]]}, "ijk"),
            ("box", {"ijk": [[1, 1, 1], [2, 2, 2], [3, 3, 3]]}, "ijk"),
            ("box", {"ijk": [[1, 1], [2, 2]]}, "ijk"),
            ("box", {"ijk": [[1.5, 1, 1], [2, 2, 2]]}, "integer"),
            ("box", {"ijk": [[0, 0, 0], [44, 5, 5]]}, "outside the volume"),
            ("box", {"ijk": [[-1, 0, 0], [4, 5, 5]]}, "outside the volume"),
            ("objects/9/name", {"name": "x"}, "no object 9"),
            ("objects/1/name", {"name": "x" * 65}, "name"),
            ("objects/1/name", {"label": "x"}, "name"),
        ]:
            r = h.post(f"/{tok}/{path}", json=body)
            assert r.status_code == 400 and needle in r.json()["detail"], (path, body, r.json())
        assert len(session.prompts) == 0 and session.object_id == 2  # nothing ran for the bad ones
        r = h.get(f"/{tok}/labels.dcm")
        assert r.status_code == 400 and "DICOM" in r.json()["detail"]
        h.delete(f"/{tok}")


def test_viewer_scribble_and_lasso(served):
    """A scribble path and a lasso outline (real file-voxel vertices) are the Session's scribble (the path's
    voxels) and lasso (the outline filled on its slice); the summary lists them for the page's markers."""
    from voxprompt.session.strokes import path_voxels

    url, ctx = served
    with httpx.Client(base_url=f"{url}/{API}", timeout=60) as h:
        tok = h.post("/open", data={"path": "lps.nii.gz"}).json()["token"]
        session = ctx.leases.peek(tok).session
        s = h.post(f"/{tok}/scribble", json={"ijk": [[10, 18, 10], [20.4, 18, 10]], "positive": False}).json()
        kind, stroke = session.prompts[-1]
        assert kind == "scribble" and stroke.positive is False
        np.testing.assert_array_equal(stroke.voxels, path_voxels([[10, 18, 10], [10, 18, 20.4]], session.shape))
        assert s["strokes"][0]["voxels"] == [[i, 18, 10] for i in range(10, 21)]
        assert s["strokes"][0]["kind"] == "scribble" and s["strokes"][0]["clicks"]
        assert all(c["positive"] is False for c in s["strokes"][0]["clicks"])
        outline = [[12.2, 10, 10.3], [30, 10, 10], [30, 25, 9.8], [12.2, 25, 10]]
        s = h.post(f"/{tok}/lasso", json={"ijk": outline}).json()
        kind, stroke = session.prompts[-1]
        assert kind == "lasso" and stroke.positive is True and len(s["strokes"]) == 2
        assert set(map(tuple, stroke.voxels.tolist())) == {(10, j, i) for j in range(10, 26) for i in range(13, 31)}
        assert s["strokes"][1]["voxels"] == [] and s["strokes"][1]["clicks"][0]["positive"] is True
        assert h.post(f"/{tok}/refined").json()["voxels"] == int(session.mask.sum())  # after its refinement
        zigzag = [[0, 0, 0], [43, 35, 19]] * 2048
        for path, body, needle in [
            ("scribble", {"ijk": []}, "ijk"),
            ("scribble", {"ijk": [[1, 2]]}, "ijk"),
            ("scribble", {"ijk": [[1, 1, 1], [50, 1, 1]]}, "outside"),
            ("scribble", {"ijk": [[1, 1, 1]] * 4097}, "ijk"),
            ("scribble", {"ijk": zigzag}, "more than 100000"),
            ("scribble", {"ijk": [[1, 1, 1]], "positive": "yes"}, "positive"),
            ("lasso", {"ijk": [[1, 1, 10], [5, 1, 10]]}, "at least 3"),
            ("lasso", {"ijk": [[1, 1, 10], [5, 1, 10], [5, 5, 12]]}, "one slice"),
        ]:
            r = h.post(f"/{tok}/{path}", json=body)
            assert r.status_code == 400 and needle in r.json()["detail"], (path, needle, r.json())
        assert len(session.prompts) == 2
        h.delete(f"/{tok}")


def test_viewer_masks_put_back_a_label_map(served, data_dir, tmp_path):
    """POST /masks: label v becomes object v's mask (objects created up to the largest label; an object
    the map leaves empty is emptied); bad label maps are 400, before the session changes."""
    url, ctx = served
    vol = data_dir / "lps.nii.gz"
    labels = np.zeros((20, 36, 44), np.uint8)
    labels[6:14, 10:26, 12:20] = 1
    labels[6:14, 10:26, 24:32] = 3
    with httpx.Client(base_url=f"{url}/{API}", timeout=60) as h:
        tok = h.post("/open", data={"path": "lps.nii.gz"}).json()["token"]
        session = ctx.leases.peek(tok).session
        data = _label_file(labels, vol, tmp_path / "l.nii.gz")
        s = h.post(f"/{tok}/masks", files={"file": ("labels.nii.gz", data)}).json()
        assert s["objects"] == [1, 2, 3] and s["object_id"] == 1
        np.testing.assert_array_equal(session.label_map(), labels)
        assert session.prompts == [("mask", None)]
        s = h.post(f"/{tok}/masks", files={"file": ("labels.nii.gz", _label_file(
            np.where(labels == 3, 3, 0).astype(np.uint8), vol, tmp_path / "m.nii.gz"))}).json()
        np.testing.assert_array_equal(session.label_map(), np.where(labels == 3, 3, 0))
        before = session.label_map()
        small = sitk.GetImageFromArray(np.zeros((4, 5, 6), np.uint8))
        sitk.WriteImage(small, str(tmp_path / "small.nii.gz"))
        moved = sitk.ReadImage(str(tmp_path / "l.nii.gz"))
        moved.SetOrigin((0.0, 0.0, 0.0))
        sitk.WriteImage(moved, str(tmp_path / "moved.nii.gz"))
        for files, needle in [
            ({"file": ("s.nii.gz", (tmp_path / "small.nii.gz").read_bytes())}, "size"),
            ({"file": ("m.nii.gz", (tmp_path / "moved.nii.gz").read_bytes())}, "origin"),
            ({"file": ("l.nii.gz", _label_file(labels.astype(np.int16) * 100, vol, tmp_path / "b.nii.gz"))},
             "0 (background) to 255"),
            ({"file": ("l.nii.gz", _label_file(-labels.astype(np.int16), vol, tmp_path / "n.nii.gz"))},
             "0 (background) to 255"),
            ({"file": ("l.nii.gz", _label_file(labels * np.float32(0.5), vol, tmp_path / "f.nii.gz"))},
             "non-integer"),
            ({"file": ("l.txt", b"hello")}, "unsupported type"),
            ({"other": ("l.nii.gz", data)}, "multipart 'file'"),
        ]:
            r = h.post(f"/{tok}/masks", files=files)
            assert r.status_code == 400 and needle in r.json()["detail"], (needle, r.json())
        np.testing.assert_array_equal(session.label_map(), before)
        h.delete(f"/{tok}")


def _dicom_zip(tmp_path: Path) -> tuple[bytes, list[str]]:
    from test_dicom_seg import make_series

    uids, _ = make_series(tmp_path / "ct")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for f in sorted((tmp_path / "ct").iterdir()):
            z.write(f, f"series/{f.name}")
        z.writestr("__MACOSX/series/._im00.dcm", b"junk")
    return buf.getvalue(), uids


def test_viewer_dicom_zip_upload_and_seg_download(model, tmp_path, monkeypatch):
    """A zip of a DICOM series opens as the series; GET labels.dcm is a DICOM SEG referencing its
    instances, one named segment per object. Zips are checked before unpacking (400 / 413)."""
    import pydicom

    data, uids = _dicom_zip(tmp_path)
    app = create_app(ServerSettings(max_upload_mb=1, session_memory_mb=2), model=model)
    with BackgroundServer(app) as url, httpx.Client(base_url=f"{url}/{API}", timeout=60) as h:
        info = h.post("/open", files={"file": ("my series.zip", data)}).json()
        tok, session = info["token"], app.state.ctx.leases.peek(info["token"]).session
        assert info["dicom"] is True and info["size_ijk"] == [16, 16, 4] and info["name"] == "my_series.zip"
        labels = np.zeros(session.shape, np.uint8)
        labels[1:3, 2:8, 3:9] = 1
        labels[0, 10:14, 10:14] = 2
        lf = sitk.GetImageFromArray(labels)
        lf.CopyInformation(session.image.to_sitk())
        sitk.WriteImage(lf, str(tmp_path / "l.nii.gz"))
        h.post(f"/{tok}/masks", files={"file": ("l.nii.gz", (tmp_path / "l.nii.gz").read_bytes())})
        h.post(f"/{tok}/objects/2/name", json={"name": "spleen"})
        r = h.get(f"/{tok}/labels.dcm")
        assert r.status_code == 200 and 'filename="my_series_seg.dcm"' in r.headers["content-disposition"]
        seg = pydicom.dcmread(io.BytesIO(r.content))
        assert seg.Modality == "SEG" and [d.SegmentLabel for d in seg.SegmentSequence] == ["object 1", "spleen"]
        assert seg.SegmentSequence[0].SegmentAlgorithmType == "SEMIAUTOMATIC"
        import highdicom as hd

        pix = hd.seg.Segmentation.from_dataset(seg).get_pixels_by_source_instance(uids, segment_numbers=[1, 2])
        np.testing.assert_array_equal(pix[..., 0].astype(bool), labels == 1)
        np.testing.assert_array_equal(pix[..., 1].astype(bool), labels == 2)
        # bad zips: corrupt, empty, unpacking past --max-upload-mb (declared sizes, before unpacking)
        big = io.BytesIO()
        with zipfile.ZipFile(big, "w", zipfile.ZIP_DEFLATED) as z:
            z.writestr("a.dcm", b"\0" * (2 << 20))
        empty = io.BytesIO()
        with zipfile.ZipFile(empty, "w") as z:
            z.writestr("dir/", b"")
        for payload, code, needle in [(b"PK\x03\x04 not a zip", 400, "not a readable zip"),
                                      (empty.getvalue(), 400, "holds no files"),
                                      (big.getvalue(), 413, "--max-upload-mb")]:
            r = h.post("/open", files={"file": ("x.zip", payload)})
            assert r.status_code == code and needle in r.json()["detail"], r.json()
        # a label map with more objects than the per-session memory allows: 413 before any is made
        sitk.WriteImage(sitk.Cast(lf, sitk.sitkUInt8) * 0 + 255, str(tmp_path / "many.nii.gz"))
        app.state.ctx.settings.session_memory_mb = 0.2
        r = h.post(f"/{tok}/masks", files={"file": ("many.nii.gz", (tmp_path / "many.nii.gz").read_bytes())})
        assert r.status_code == 413 and "255 objects" in r.json()["detail"], r.json()
        assert session.object_ids == [1, 2]


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTEFACTS = Path(os.environ.get("VOXPROMPT_TEST_ARTEFACTS", Path(__file__).resolve().parents[1] / "test-artefacts"))


def _launch(p):
    """Debian's headless chromium with WebGL through SwiftShader."""
    return p.chromium.launch(executable_path=CHROMIUM, headless=True,
                             args=["--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader"])


def _viewer_page(browser, url: str, errors: list[str], width: int, height: int):
    """A new page on the viewer, started (config read, NiiVue attached); page errors go to ``errors``."""
    page = browser.new_page(viewport={"width": width, "height": height}, accept_downloads=True)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{url}/")
    page.wait_for_function("window.voxprompt && window.voxprompt.state.config")
    page.evaluate("window.voxprompt.ready")
    return page


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (make test installs it with apt-get)")
def test_browser_click_overlay_undo_download(served, data_dir, tmp_path, monkeypatch):
    sync_api = pytest.importorskip("playwright.sync_api")
    from voxprompt.session import Session

    decode = Session._decode  # a low predicted IoU: every result is flagged (the masks are unchanged)
    monkeypatch.setattr(Session, "_decode", lambda self, *a: (decode(self, *a)[0], 0.01))
    assert (STATIC_DIR / "viewer.js").is_file(), "run `make web`"
    url, ctx = served
    errors: list[str] = []
    with sync_api.sync_playwright() as p:
        browser = _launch(p)
        try:
            page = _viewer_page(browser, url, errors, 900, 700)
            requests: list[str] = []
            page.on("request", lambda r: requests.append(r.url))
            page.set_input_files("#file", str(data_dir / "lps.nii.gz"))  # a real upload
            page.wait_for_function("window.voxprompt.state.version >= 1", timeout=30000)
            token = page.evaluate("window.voxprompt.state.token")
            lease = ctx.leases.peek(token)
            img = lease.session.image

            # the page's mm -> file voxel helper equals the server's, through the file's own affine
            affine = page.evaluate("window.voxprompt.state.volume.hdr.affine")
            np.testing.assert_allclose(np.asarray(affine), nifti_affine(img), atol=1e-4)
            for mm in ([0.0, 0.0, 0.0], [12.5, -30.0, 40.0]):
                js = page.evaluate("([a, m]) => window.voxprompt.mmToFileVoxel(a, m)", [affine, mm])
                np.testing.assert_allclose(js, ras_to_file_ijk(nifti_affine(img), mm), atol=1e-6)

            page.evaluate("window.voxprompt.nv.setSliceType(0)")  # axial only: the canvas centre is the blob
            canvas = page.locator("#gl")
            box = canvas.bounding_box()

            def settled(action) -> None:
                """Do ``action`` in the page and wait until it shows the answer (refined, for a click)."""
                v0 = page.evaluate("window.voxprompt.state.version")
                action()
                page.wait_for_function(f"(s => s.version > {v0} && !s.busy && !s.refining)(window.voxprompt.state)",
                                       timeout=30000)

            def click(dx: float, dy: float) -> None:
                settled(lambda: page.mouse.click(box["x"] + box["width"] * (0.5 + dx),
                                                 box["y"] + box["height"] * (0.5 + dy)))

            assert sum("/labels.nii.gz" in u for u in requests) == 1  # the new image's label map
            requests.clear()
            # the layers NiiVue renders into textures from now on (0: the image, 1: the label overlay)
            page.evaluate("""(() => { const nv = window.voxprompt.nv, render = nv.refreshLayers.bind(nv);
                window.layers = []; nv.refreshLayers = (v, layer) => { window.layers.push(layer); render(v, layer); };
            })()""")
            click(0.08, 0.04)  # off the centre, where the LPS file's i and NiiVue's RAS index differ
            text, cls = page.inner_text("#status"), page.get_attribute("#status", "class")
            assert "check the result: low confidence: predicted IoU 0.01" in text and cls == "warn"
            last = page.evaluate("window.voxprompt.state.lastClick")
            want = np.floor(ras_to_file_ijk(nifti_affine(img), last["mm"]) + 0.5).astype(int).tolist()
            assert last["ijk"] == want
            assert lease.session.prompts[-1] == ("point", (tuple(from_slicer_ijk(want)), True))
            ras_vox = page.evaluate("Array.from(window.voxprompt.nv.frac2vox(window.voxprompt.nv.scene.crosshairPos))")
            assert [round(v) for v in ras_vox] != want  # NiiVue's RAS grid index is not the file's (LPS input)
            # the click's changed block only, copied into the overlay in place (no label map download)
            assert not any("/labels.nii.gz" in u for u in requests) and any("/labels/block?" in u for u in requests)
            assert page.evaluate("window.voxprompt.state.fullLoads") == 1
            shown = np.asarray(page.evaluate("Array.from(window.voxprompt.state.overlay.img)"), np.uint8)
            labels = lease.session.label_map()
            np.testing.assert_array_equal(shown.reshape(labels.shape), labels)  # file order = (k, j, i) C order
            assert labels.sum() > 0
            shot = _pixels(page, "#gl")
            red = (shot[..., 0] - shot[..., 1] > 60) & (shot[..., 0] - shot[..., 2] > 60)
            assert red.sum() > 200, red.sum()  # object 1's red overlay is drawn (nothing else on the tile is red)
            # the answer and its refinement render the overlay's texture only (the image's is slow on a large
            # volume), and the picture is the one NiiVue draws when it renders every layer again
            layers = page.evaluate("window.layers")
            assert layers and set(layers) == {1}, layers
            page.evaluate("window.layers = []; window.voxprompt.nv.updateGLVolume()")
            assert page.evaluate("window.layers") == [0, 1]
            np.testing.assert_array_equal(_pixels(page, "#gl"), shot)

            page.click("#sign")  # negative
            click(0.15, 0.15)
            assert lease.session.prompts[-1][1][1] is False
            page.evaluate("window.layers = []")
            settled(lambda: page.click("#undo"))
            assert len(lease.session.prompts) == 1
            assert page.evaluate("window.voxprompt.state.fullLoads") == 2  # undo: the whole label map
            # ... copied into the overlay shown, whose texture alone is rendered again
            assert page.evaluate("window.layers") == [1]
            shown = np.asarray(page.evaluate("Array.from(window.voxprompt.state.overlay.img)"), np.uint8)
            np.testing.assert_array_equal(shown.reshape(labels.shape), lease.session.label_map())
            shot = _pixels(page, "#gl")
            page.evaluate("window.voxprompt.nv.updateGLVolume()")
            np.testing.assert_array_equal(_pixels(page, "#gl"), shot)
            settled(lambda: page.click("#new-object"))
            page.click("#sign")  # positive again
            click(-0.05, 0.05)
            assert lease.session.object_ids == [1, 2] and lease.session.mask.any()
            # label policy: lock the current object (its row in the object list), others as negatives
            settled(lambda: page.check("#object-list li.current input.lock"))
            assert lease.session.locked_objects == [2] and "object 2 (locked)" in page.inner_text("#status")
            settled(lambda: page.check("#others-negative"))
            assert lease.session.others_negative is True

            with page.expect_download() as dl:
                page.click("#download")
            out = tmp_path / "mask.nii.gz"
            dl.value.save_as(out)
            assert dl.value.suggested_filename == "lps_labels.nii.gz"
            got = sitk.ReadImage(str(out))
            np.testing.assert_array_equal(sitk.GetArrayFromImage(got), lease.session.label_map())
            ref = sitk.ReadImage(str(data_dir / "lps.nii.gz"))
            assert np.allclose(got.GetDirection(), ref.GetDirection()) and np.allclose(got.GetOrigin(), ref.GetOrigin())
            assert page.evaluate("window.voxprompt.state.error") is None
        finally:
            browser.close()
    assert not errors, errors


def _pixels(page, selector: str = "#gl-wrap") -> np.ndarray:
    """A screenshot of an element as an (H, W, 3) uint8 array (CSS pixels; the page's scale is 1)."""
    from PIL import Image as PILImage

    return np.asarray(PILImage.open(io.BytesIO(page.locator(selector).screenshot())).convert("RGB")).astype(int)


def _count(rgb: np.ndarray, colour: str) -> int:
    """Pixels of a marker colour: saturated hues the half-transparent label overlay never shows."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    tests = {"positive": (g > 180) & (r < 70) & (b < 140), "negative": (r > 200) & (g < 70) & (b < 70),
             "box": (r > 220) & (g > 170) & (b < 50)}
    return int(tests[colour].sum())


def _near(rgb: np.ndarray, xy, radius: int = 10) -> np.ndarray:
    x, y = int(round(xy[0])), int(round(xy[1]))
    return rgb[max(y - radius, 0):y + radius + 1, max(x - radius, 0):x + radius + 1]


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (make test installs it with apt-get)")
def test_browser_annotation_tools(served, tmp_path, monkeypatch):
    """The page's annotation tools in Chromium, checked on screenshots: +/- markers at the clicks, T and
    Ctrl+Z, a box dragged on a slice (its outline drawn), Esc cancelling one, a scribble and a lasso, N
    and a named, locked object in its overlay colour, CT windows, prompts queued while a prediction runs,
    the radiological switch mirroring the picture, and the masks put back into a new session when the
    server lost it. Screenshots go to test-artefacts/viewer/ (VOXPROMPT_TEST_ARTEFACTS)."""
    import time

    sync_api = pytest.importorskip("playwright.sync_api")
    from voxprompt.session import Session

    url, ctx = served
    shape = (20, 36, 44)  # (k, j, i); the structure sits left of centre so that mirroring shows
    rng = np.random.default_rng(5)
    arr = rng.normal(0, 20, size=shape).astype(np.int16)
    arr[4:16, 8:28, 4:20] += 400
    vol = sitk.GetImageFromArray(arr)
    vol.SetSpacing((1.0, 1.0, 2.0))
    sitk.WriteImage(vol, str(tmp_path / "asym.nii.gz"))
    a = np.zeros(shape, bool)
    a[4:16, 8:28, 4:20] = True
    b = np.zeros(shape, bool)
    b[4:16, 8:28, 24:40] = True
    fix_model_masks(monkeypatch, {1: a, 2: b})
    out = ARTEFACTS / "viewer"
    out.mkdir(parents=True, exist_ok=True)
    errors: list[str] = []
    with sync_api.sync_playwright() as p:
        browser = _launch(p)
        try:
            page = _viewer_page(browser, url, errors, 1000, 640)
            page.set_input_files("#file", str(tmp_path / "asym.nii.gz"))
            page.wait_for_function("window.voxprompt.state.version >= 1 && !window.voxprompt.state.busy", timeout=30000)
            up = page.evaluate("window.voxprompt.state.upload")
            assert up["loaded"] == up["total"] > (tmp_path / "asym.nii.gz").stat().st_size  # the file + multipart
            assert page.is_disabled("#download-seg")  # NIfTI input: no DICOM SEG
            token = page.evaluate("window.voxprompt.state.token")
            session = ctx.leases.peek(token).session
            page.select_option("#window", "bone")  # W1800 L400
            assert page.evaluate("[window.voxprompt.state.volume.cal_min, window.voxprompt.state.volume.cal_max]") == [
                -500, 1300]
            page.select_option("#window", "auto")
            page.select_option("#layout", "0")  # axial only
            wrap = page.locator("#gl-wrap").bounding_box()

            def settled(action) -> None:
                v0 = page.evaluate("window.voxprompt.state.version")
                action()
                page.wait_for_function(f"(s => s.version > {v0} && !s.busy && !s.refining)(window.voxprompt.state)",
                                       timeout=30000)

            def at(fx: float, fy: float) -> tuple[float, float]:
                return wrap["x"] + wrap["width"] * fx, wrap["y"] + wrap["height"] * fy

            def marks_xy(kind: str = "clicks") -> list:
                """Canvas positions of the current object's clicks on the axial tile."""
                return page.evaluate(f"""(() => {{ const v = window.voxprompt, s = v.state;
                    return s.{kind}.map(c => v.worldToTile(v.nv.screenSlices[0],
                        v.fileVoxelToMm(s.volume.hdr.affine, c.ijk))); }})()""")

            def on_canvas(ijk) -> tuple[float, float]:
                """Where file voxel ``ijk`` shows on the axial tile (canvas pixels = CSS pixels here)."""
                p = page.evaluate(f"""(() => {{ const v = window.voxprompt, aff = v.state.volume.hdr.affine;
                    return v.worldToTile(v.nv.screenSlices[0], v.fileVoxelToMm(aff, {ijk})); }})()""")
                return p["x"], p["y"]

            def voxel_at(x: float, y: float) -> list[int]:
                """The file voxel under page position (x, y) on the axial tile."""
                return page.evaluate(f"""(() => {{ const v = window.voxprompt, r = v.nv.canvas.getBoundingClientRect();
                    const mm = v.tileToWorld(v.nv.screenSlices[0], {x} - r.left, {y} - r.top);
                    return v.mmToFileVoxel(v.state.volume.hdr.affine, mm).map(c => Math.floor(c + 0.5)); }})()""")

            def painted() -> None:  # the marker canvas has caught up with the state
                n = page.evaluate("window.voxprompt.state.marksPainted")
                page.wait_for_function(f"window.voxprompt.state.marksPainted > {n} || true")
                page.wait_for_timeout(150)

            # a positive click: a green + marker where it went, none elsewhere
            settled(lambda: page.mouse.click(*at(0.35, 0.5)))
            painted()
            shot = _pixels(page)
            (xy,) = marks_xy()
            assert _count(_near(shot, (xy["x"], xy["y"])), "positive") > 15
            assert _count(shot, "positive") == _count(_near(shot, (xy["x"], xy["y"])), "positive")
            assert _count(shot, "negative") == 0
            # T: the next click is negative (the badge says so), a red - marker; Ctrl+Z takes it back
            page.keyboard.press("t")
            assert page.inner_text("#sign") == "\u2212 negative"
            assert page.evaluate("window.voxprompt.state.positive") is False
            settled(lambda: page.mouse.click(*at(0.62, 0.4)))
            painted()
            assert session.prompts[-1][1][1] is False
            neg = marks_xy()[1]
            shot = _pixels(page)
            assert _count(_near(shot, (neg["x"], neg["y"])), "negative") > 15
            page.screenshot(path=str(out / "markers.png"))
            settled(lambda: page.keyboard.press("Control+z"))
            painted()
            assert len(session.prompts) == 1 and _count(_pixels(page), "negative") == 0
            page.keyboard.press("t")
            # B: a box dragged on the slice is the session's 2D box on that slice; its outline is drawn
            page.keyboard.press("b")
            assert page.evaluate("window.voxprompt.state.tool") == "box"

            def drag(p0, p1, before_up=None) -> None:
                page.mouse.move(*at(*p0))
                page.mouse.down()
                page.mouse.move(*at((p0[0] + p1[0]) / 2, (p0[1] + p1[1]) / 2), steps=3)
                page.mouse.move(*at(*p1), steps=3)
                if before_up:
                    before_up()
                page.mouse.up()

            settled(lambda: drag((0.22, 0.3), (0.48, 0.7)))
            painted()
            kind, (lo, hi) = session.prompts[-1]
            sent = page.evaluate("window.voxprompt.state.lastPrompt.body.ijk")
            want_lo = tuple(min(c) for c in zip(*sent))[::-1]
            assert kind == "box" and lo == want_lo and hi == tuple(max(c) + 1 for c in zip(*sent))[::-1]
            assert hi[0] - lo[0] == 1 and hi[1] - lo[1] > 5 and hi[2] - lo[2] > 5  # one axial slice
            crosshair_k = page.evaluate("window.voxprompt.state.volume.hdr.dims[3]")
            assert 0 <= lo[0] < crosshair_k
            assert _count(_pixels(page), "box") > 100
            page.screenshot(path=str(out / "box.png"))
            # Esc cancels a box being drawn: nothing is sent
            n_prompts = len(session.prompts)
            drag((0.3, 0.3), (0.5, 0.5), before_up=lambda: page.keyboard.press("Escape"))
            page.wait_for_timeout(300)
            assert len(session.prompts) == n_prompts and page.evaluate("window.voxprompt.state.drawing") is None
            assert "cancelled" in page.inner_text("#status")
            # S: a scribble along a path (its voxels drawn as dots); L: a lasso outline filled on its slice
            page.keyboard.press("s")
            before = _count(_pixels(page), "positive")
            settled(lambda: drag((0.55, 0.35), (0.8, 0.6)))
            painted()
            assert session.prompts[-1][0] == "scribble" and _count(_pixels(page), "positive") > before + 50
            page.keyboard.press("l")

            def outline() -> None:
                page.mouse.move(*at(0.5, 0.3))
                page.mouse.down()
                for f in ((0.85, 0.3), (0.85, 0.7), (0.5, 0.7)):
                    page.mouse.move(*at(*f), steps=4)
                page.mouse.up()

            settled(outline)
            kind, stroke = session.prompts[-1]
            assert kind == "lasso" and len(set(stroke.voxels[:, 0].tolist())) == 1 and len(stroke.voxels) > 50
            page.screenshot(path=str(out / "strokes.png"))
            # N: a new object; it is named and takes its own colour; object 1 locked in its row
            page.keyboard.press("p")
            settled(lambda: page.keyboard.press("n"))
            assert session.object_ids == [1, 2] and session.object_id == 2
            settled(lambda: (page.fill("#object-list li.current input.name", "liver"),
                             page.press("#object-list li.current input.name", "Enter")))
            assert ctx.leases.peek(token).state["names"] == {2: "liver"} and "liver" in page.inner_text("#status")
            settled(lambda: page.check("#object-list li[data-id='1'] input.lock"))
            assert session.locked_objects == [1]
            swatches = page.evaluate("[...document.querySelectorAll('#object-list .swatch')]"
                                     ".map(e => e.style.background)")
            assert swatches == ["rgb(255, 64, 64)", "rgb(64, 200, 64)"]
            # the canvas keeps its size whatever the footer says: a long message (cut, whole on hover) with the
            # busy spinner used to wrap onto a second line, shrinking the canvas, and NiiVue re-fitted the slice a
            # frame later, so a screen position meant another voxel than at the click just before
            size = "(r => [r.width, r.height])(document.getElementById('gl-wrap').getBoundingClientRect())"
            wrap_size = page.evaluate(size)
            long = "check the result: " * 30
            page.evaluate(f"document.body.classList.add('busy'); "
                          f"document.getElementById('status').textContent = '{long}'")
            assert page.evaluate(size) == wrap_size
            assert page.evaluate("document.querySelector('footer').scrollHeight <= "
                                 "document.querySelector('footer').clientHeight")  # one line, nothing hidden below
            page.evaluate("document.body.classList.remove('busy')")
            # prompts made while a prediction runs are queued and run in order
            add_point = Session.add_point

            def slow(self, *args, **kwargs):
                time.sleep(0.5)
                return add_point(self, *args, **kwargs)

            monkeypatch.setattr(Session, "add_point", slow)
            page.evaluate("window.voxprompt.state.maxQueued = 0")
            v0 = page.evaluate("window.voxprompt.state.version")
            page.mouse.click(*at(0.7, 0.5))
            page.mouse.click(*at(0.72, 0.55))
            page.wait_for_function("window.voxprompt.state.queued === 2")  # one running, one waiting
            assert page.is_visible("#busy") and "1 waiting" in page.inner_text("#busy")
            page.evaluate("window.voxprompt.state.maxQueue = 1")  # a full queue refuses, saying so
            page.mouse.click(*at(0.75, 0.6))
            assert "point refused: still working" in page.inner_text("#status")
            page.evaluate("window.voxprompt.state.maxQueue = 8; window.voxprompt.state.error = null")
            page.wait_for_function(f"(s => s.version > {v0} + 1 && !s.busy)(window.voxprompt.state)", timeout=30000)
            monkeypatch.setattr(Session, "add_point", add_point)
            assert page.evaluate("window.voxprompt.state.maxQueued") == 2
            assert [k for k, _ in session.prompts] == ["point", "point"]
            want = [tuple(from_slicer_ijk(voxel_at(*at(*f)))) for f in ((0.7, 0.5), (0.72, 0.55))]
            assert [index for _, (index, _) in session.prompts] == want and want[0] != want[1]  # in click order
            assert page.evaluate(size) == wrap_size  # the canvas never changed size, and NiiVue's pixels are CSS's
            assert page.evaluate("(c => c.height === c.offsetHeight)(window.voxprompt.nv.canvas)")
            painted()
            shot = _pixels(page)
            k = page.evaluate("window.voxprompt.state.lastClick.ijk[2]")
            obj1, obj2 = (_near(shot, on_canvas([i, 18, k]), 3).mean(axis=(0, 1)) for i in (8, 36))
            assert obj1[0] > obj1[1] + 30 and obj2[1] > obj2[0] + 30, (obj1, obj2)  # red object 1, green object 2
            page.screenshot(path=str(out / "objects.png"))
            # radiological: the picture is mirrored left-right on its tile
            tile = page.evaluate("window.voxprompt.nv.screenSlices[0].leftTopWidthHeight")
            x0, w = (tile[0] + tile[2], -tile[2]) if tile[2] < 0 else (tile[0], tile[2])
            crop = (slice(int(tile[1]) + 2, int(tile[1] + tile[3]) - 2), slice(int(x0) + 2, int(x0 + w) - 2))
            neuro = _pixels(page)[crop].mean(axis=2)
            page.check("#radiological")
            page.wait_for_timeout(300)
            radio = _pixels(page)[crop].mean(axis=2)

            def corr(u, v):
                return float(np.corrcoef(u.ravel(), v.ravel())[0, 1])

            assert corr(radio, neuro[:, ::-1]) > 0.9 > corr(radio, neuro) + 0.3, (corr(radio, neuro[:, ::-1]),
                                                                               corr(radio, neuro))
            page.screenshot(path=str(out / "radiological.png"))
            page.uncheck("#radiological")
            # the server loses the session: the next click opens the image again and puts the masks back
            labels = session.label_map()
            assert ctx.leases.release(token)
            page.mouse.click(*at(0.66, 0.45))
            page.wait_for_function("(s => s.recoveries === 1 && !s.busy && !s.refining)(window.voxprompt.state)",
                                   timeout=30000)
            new_token = page.evaluate("window.voxprompt.state.token")
            assert new_token != token and page.evaluate("window.voxprompt.state.recoveries") == 1
            lease = ctx.leases.peek(new_token)
            fresh = lease.session
            assert fresh.object_ids == [1, 2] and fresh.locked_objects == [1] and fresh.object_id == 2
            assert lease.state["names"] == {2: "liver"} and [k for k, _ in fresh.prompts] == ["mask", "point"]
            np.testing.assert_array_equal(fresh.label_map(), labels)
            assert "masks were put back" in page.inner_text("#notice")
            page.screenshot(path=str(out / "recovered.png"))
            assert page.evaluate("window.voxprompt.state.error") is None
        finally:
            browser.close()
    assert not errors, errors


def test_nan_upload_is_a_400_naming_the_upload(served, tmp_path):
    """Issue 20, item 8: NaN voxels (NIfTI too) are refused with 400; the message names the upload,
    never the server's temporary file."""
    from voxprompt.errors import InputError
    from voxprompt.server.volumes import read_uploaded

    arr = np.ones((6, 8, 10), np.float32)
    arr[2, 3, 4] = np.nan
    url, _ = served
    for ext in (".nii.gz", ".nrrd"):
        path = tmp_path / f"scan{ext}"
        sitk.WriteImage(sitk.GetImageFromArray(arr), str(path))
        data = path.read_bytes()
        with pytest.raises(InputError) as err:
            read_uploaded([(f"my scan{ext}", data)])
        assert "my scan" in str(err.value) and "voxprompt-upload" not in str(err.value)
        r = httpx.post(f"{url}/{API}/open", files={"file": (f"my scan{ext}", data)})
        detail = r.json()["detail"]
        assert r.status_code == 400 and "NaN" in detail and "my scan" in detail, detail
        assert "voxprompt-upload" not in detail and "/tmp" not in detail, detail
