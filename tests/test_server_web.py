"""Browser viewer: geometry helpers, the /api/viewer endpoints, and a real headless Chromium session.

The browser test loads an LPS volume (where NiiVue's RAS-reoriented voxel index differs from the
file's), clicks the canvas, checks the overlay changed, and compares the downloaded mask with the
server session's label map.
"""
from __future__ import annotations

import shutil
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


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


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
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                    args=["--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader"])
        try:
            page = browser.new_page(viewport={"width": 900, "height": 700}, accept_downloads=True)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(f"{url}/")
            page.wait_for_function("window.voxprompt && window.voxprompt.state.config")
            page.evaluate("window.voxprompt.ready")
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
            before = canvas.screenshot()

            def settled(action) -> None:
                """Do ``action`` in the page and wait until it shows the answer (refined, for a click)."""
                v0 = page.evaluate("window.voxprompt.state.version")
                action()
                page.wait_for_function(f"(s => s.version > {v0} && !s.busy && !s.refining)(window.voxprompt.state)",
                                       timeout=30000)

            def click(dx: float, dy: float) -> None:
                settled(lambda: page.mouse.click(box["x"] + box["width"] * (0.5 + dx),
                                                 box["y"] + box["height"] * (0.5 + dy)))

            click(0, 0)
            text, cls = page.inner_text("#status"), page.get_attribute("#status", "class")
            assert "check the result: low confidence: predicted IoU 0.01" in text and cls == "warn"
            last = page.evaluate("window.voxprompt.state.lastClick")
            want = np.floor(ras_to_file_ijk(nifti_affine(img), last["mm"]) + 0.5).astype(int).tolist()
            assert last["ijk"] == want
            assert lease.session.prompts[-1] == ("point", (tuple(from_slicer_ijk(want)), True))
            ras_vox = page.evaluate("Array.from(window.voxprompt.nv.frac2vox(window.voxprompt.nv.scene.crosshairPos))")
            assert [round(v) for v in ras_vox] != want  # NiiVue's RAS grid index is not the file's (LPS input)
            overlay_sum = page.evaluate("window.voxprompt.state.overlay.img.reduce((a, b) => a + b, 0)")
            assert overlay_sum == int(lease.session.label_map().sum()) > 0
            assert canvas.screenshot() != before  # the overlay is drawn

            page.check("#negative")
            click(0.15, 0.15)
            assert lease.session.prompts[-1][1][1] is False
            settled(lambda: page.click("#undo"))
            assert len(lease.session.prompts) == 1
            settled(lambda: page.click("#new-object"))
            page.check("#positive")
            click(-0.05, 0.05)
            assert lease.session.object_ids == [1, 2] and lease.session.mask.any()
            settled(lambda: page.check("#lock"))  # label policy: lock the current object, others as negatives
            assert lease.session.locked_objects == [2] and "object 2 (locked)" in page.inner_text("#objects")
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
