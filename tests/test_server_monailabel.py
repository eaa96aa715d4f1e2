"""MONAI Label subset, with requests shaped as 3D Slicer's MONAILabel module sends them.

``PUT /session/`` is a ``requests``-style multipart upload of the saved volume; ``/infer`` is the
module's hand-made multipart body (its fixed boundary included) over ``http.client``; the reply is
parsed with ``cgi.FieldStorage`` as the module does, and the label is read by geometry.
"""
from __future__ import annotations

import http.client
import io
import json
import os
import warnings
from pathlib import Path
from urllib.parse import quote_plus, urlparse

import httpx
import numpy as np
import pytest
import SimpleITK as sitk
from server_testing import BackgroundServer, fix_model_masks, tiny_model

from voxprompt.io import read_image
from voxprompt.server import ServerSettings, create_app
from voxprompt.session import Session, from_slicer_ijk

MODEL = "voxprompt-med3d-small"
BOUNDARY = "----------lImIt_of_THE_fIle_eW_$"  # the MONAILabel Slicer client's


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def volume_path(tmp_path_factory) -> Path:
    """An LPS-flipped, anisotropic NIfTI (what Slicer saves before PUT /session/)."""
    rng = np.random.default_rng(1)
    arr = rng.normal(0, 20, size=(20, 36, 40)).astype(np.int16)  # (k, j, i)
    arr[6:14, 10:26, 12:30] += 300
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((1.0, 1.3, 2.0))
    img.SetOrigin((10.0, -20.0, 5.0))
    img.SetDirection((-1, 0, 0, 0, 0, 1, 0, -1, 0))
    path = tmp_path_factory.mktemp("vol") / "Volume 1.nii.gz"
    sitk.WriteImage(img, str(path))
    return path


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, volume_path) -> Path:
    root = tmp_path_factory.mktemp("data")
    (root / "sub").mkdir()
    (root / "sub" / "ct.nii.gz").write_bytes(volume_path.read_bytes())
    outside = tmp_path_factory.mktemp("outside") / "secret.nii.gz"
    outside.write_bytes(volume_path.read_bytes())
    os.symlink(outside, root / "link.nii.gz")
    return root


@pytest.fixture(scope="module")
def server(model, data_dir):
    with BackgroundServer(create_app(ServerSettings(data_dir=data_dir, max_upload_mb=2), model=model)) as url:
        yield url


# ----------------------------------------------------------------------------- Slicer-shaped client
def create_session(url: str, path: Path) -> dict:
    with open(path, "rb") as fh:  # requests.put(url, files=[("files", (name, fh))], data=params)
        r = httpx.put(f"{url}/session/", files=[("files", (path.name, fh))], data={"client_id": "user-xyz"})
    assert r.status_code == 200, r.text
    return r.json()


def encode_multipart(fields: dict) -> tuple[str, bytes]:
    lines: list = []
    for key, value in fields.items():
        lines += ["--" + BOUNDARY, f'Content-Disposition: form-data; name="{key}"', "", value]
    lines += ["--" + BOUNDARY + "--", ""]
    body = bytearray()
    for line in lines:
        body.extend(line if isinstance(line, bytes) else line.encode("utf-8"))
        body.extend(b"\r\n")
    return f"multipart/form-data; boundary={BOUNDARY}", bytes(body)


def infer(url: str, image: str, params: dict, session_id: str | None = None, model: str = MODEL):
    """POST /infer/{model}?image=..&session_id=.. -> (status, params, {filename: bytes})."""
    selector = f"/infer/{quote_plus(model)}?image={quote_plus(image)}"
    if session_id:
        selector += f"&session_id={quote_plus(session_id)}"
    ctype, body = encode_multipart({"params": json.dumps({**params, "client_id": "user-xyz"})})
    u = urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port)
    conn.request("POST", selector, body, {"content-type": ctype, "content-length": str(len(body))})
    resp = conn.getresponse()
    rtype = resp.getheader("content-type", ctype)
    if "multipart" not in rtype or resp.status != 200:
        data = resp.read()
        conn.close()
        return resp.status, json.loads(data), {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import cgi

        fs = cgi.FieldStorage(fp=resp.fp, environ={"REQUEST_METHOD": "POST"}, headers=resp.msg,
                              keep_blank_values=True)
    form, files = {}, {}
    for f in fs.list:
        (files if f.filename else form)[f.filename or f.name] = f.value
    conn.close()
    out = form.get("params")
    return resp.status, json.loads(out) if isinstance(out, str) else out, files


def read_label(files: dict, tmp_path: Path) -> sitk.Image:
    (name, data), = files.items()
    assert name.endswith(".nii.gz") and "/" not in name
    path = tmp_path / name
    path.write_bytes(data)
    return sitk.ReadImage(str(path))


def same_geometry(a: sitk.Image, b: sitk.Image) -> bool:
    return (a.GetSize() == b.GetSize() and np.allclose(a.GetSpacing(), b.GetSpacing())
            and np.allclose(a.GetOrigin(), b.GetOrigin()) and np.allclose(a.GetDirection(), b.GetDirection()))


# ----------------------------------------------------------------------------- tests
def test_info_and_auth(server):
    info = httpx.get(f"{server}/info/").json()
    assert "config" not in info  # Slicer refuses servers with a top-level config
    assert info["models"][MODEL]["type"] == "deepgrow" and info["models"][MODEL]["dimension"] == 3
    assert httpx.get(f"{server}/auth/").json() == {"enabled": False}


def test_click_workflow_matches_local_session(server, model, volume_path, tmp_path):
    sid = create_session(server, volume_path)["session_id"]
    assert httpx.get(f"{server}/session/{sid}").status_code == 200  # Slicer checks before every infer
    ref = sitk.ReadImage(str(volume_path))
    local = Session(model)
    local.set_image(read_image(volume_path))

    p1, n1, p2 = [20, 18, 10], [3, 3, 3], [25, 20, 9]  # IJK, i fastest (RASToIJK, rounded)
    steps = [  # (foreground, background, what the local session does)
        ([p1], [], lambda: local.add_point(from_slicer_ijk(p1), True)),
        ([p1], [n1], lambda: local.add_point(from_slicer_ijk(n1), False)),
        ([p1, p2], [n1], lambda: local.add_point(from_slicer_ijk(p2), True)),
    ]
    for step, (fg, bg, expect) in enumerate(steps):
        status, params, files = infer(server, "Volume 1", {"label": "liver", "foreground": fg, "background": bg},
                                      session_id=sid)
        assert status == 200, params
        assert params["label_names"] == {"liver": 1} and not params["voxprompt"]["replayed"]
        lab = read_label(files, tmp_path)
        assert same_geometry(lab, ref)  # imported by physical geometry
        want = expect().mask
        np.testing.assert_array_equal(sitk.GetArrayFromImage(lab), want.astype(np.uint8))
        # a negative click only removes (monotone clicks): this random model's removal may empty the mask
        assert want.any() or step == 1

    # a deleted point: the label is reset and its points replayed (foreground first)
    status, params, files = infer(server, "Volume 1", {"label": "liver", "foreground": [p2], "background": [n1]},
                                  session_id=sid)
    assert status == 200 and params["voxprompt"]["replayed"]
    local.reset()
    local.add_point(from_slicer_ijk(p2), True)
    want = local.add_point(from_slicer_ijk(n1), False).mask
    np.testing.assert_array_equal(sitk.GetArrayFromImage(read_label(files, tmp_path)), want.astype(np.uint8))

    # another segment is another object; the first keeps its state
    status, params, files = infer(server, "Volume 1", {"label": "spleen", "foreground": [p1]}, session_id=sid)
    assert status == 200 and params["voxprompt"]["object_id"] == 2
    local.new_object()
    want = local.add_point(from_slicer_ijk(p1), True).mask
    np.testing.assert_array_equal(sitk.GetArrayFromImage(read_label(files, tmp_path)), want.astype(np.uint8))

    # output=json / output=image
    r = httpx.post(f"{server}/infer/{MODEL}", params={"image": "x", "session_id": sid, "output": "json"},
                   files={"params": (None, json.dumps({"label": "spleen", "foreground": [p1]}))})
    assert r.status_code == 200 and r.json()["voxprompt"]["points_added"] == 0
    r = httpx.post(f"{server}/infer/{MODEL}", params={"image": "x", "session_id": sid, "output": "image"},
                   files={"params": (None, json.dumps({"label": "spleen", "foreground": [p1]}))})
    assert r.status_code == 200 and r.content[:2] == b"\x1f\x8b"

    assert httpx.delete(f"{server}/session/{sid}").status_code == 200
    assert httpx.get(f"{server}/session/{sid}").status_code == 404
    status, params, _ = infer(server, "Volume 1", {"label": "liver", "foreground": [p1]}, session_id=sid)
    assert status == 404 and "expired" in params["detail"]


def test_upload_and_data_dir_images(server, model, volume_path, tmp_path):
    local = Session(model)
    local.set_image(read_image(volume_path))
    want = local.add_point(from_slicer_ijk([20, 18, 10])).mask.astype(np.uint8)
    # image by name under --data-dir (kept in a session of its own)
    for _ in range(2):
        status, params, files = infer(server, "sub/ct.nii.gz", {"label": "a", "foreground": [[20, 18, 10]]})
        assert status == 200, params
        np.testing.assert_array_equal(sitk.GetArrayFromImage(read_label(files, tmp_path)), want)
    # a one-off upload in the 'file' part
    with open(volume_path, "rb") as fh:
        r = httpx.post(f"{server}/infer/{MODEL}", params={"image": "up", "output": "image"},
                       files={"params": (None, json.dumps({"foreground": [[20, 18, 10]]})),
                              "file": ("up.nii.gz", fh)})
    assert r.status_code == 200
    (tmp_path / "o.nii.gz").write_bytes(r.content)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "o.nii.gz"))), want)
    for image, needle in (("../secret.nii.gz", "without '..'"), ("/etc/passwd", "without '..'"),
                          ("link.nii.gz", "outside --data-dir"), ("nope.nii.gz", "does not exist")):
        status, params, _ = infer(server, image, {"foreground": [[1, 1, 1]]})
        assert status in (400, 404) and needle in params["detail"], (image, params)


def test_bad_requests(server, volume_path):
    sid = create_session(server, volume_path)["session_id"]
    cases = [
        ({"foreground": [[999, 1, 1]]}, 400, "outside the volume"),
        ({"foreground": [[1, 1]]}, 400, "three numbers"),
        ({"foreground": "abc"}, 400, "list of"),
    ]
    for params, code, needle in cases:
        status, body, _ = infer(server, "v", params, session_id=sid)
        assert status == code and needle in body["detail"], (params, body)
    status, body, _ = infer(server, "v", {}, session_id=sid, model="other")
    assert status == 404 and MODEL in body["detail"]
    r = httpx.post(f"{server}/infer/{MODEL}", params={"session_id": sid}, files={"params": (None, "{oops")})
    assert r.status_code == 400 and "JSON" in r.json()["detail"]
    r = httpx.put(f"{server}/session/", files=[("files", ("x.txt", io.BytesIO(b"hello")))])
    assert r.status_code == 400 and "unsupported" in r.json()["detail"]
    r = httpx.put(f"{server}/session/", files=[("files", ("x.nii.gz", io.BytesIO(b"not a nifti")))])
    assert r.status_code == 400 and "upload" in r.json()["detail"]
    r = httpx.put(f"{server}/session/", files=[("files", ("big.nii.gz", io.BytesIO(b"0" * 3_000_000)))])
    assert r.status_code == 413
    httpx.delete(f"{server}/session/{sid}")


def test_api_key_via_auth_token(model, volume_path):
    app = create_app(ServerSettings(api_key="k3y"), model=model)
    with BackgroundServer(app) as url:
        assert httpx.get(f"{url}/auth/").json() == {"enabled": True}
        assert httpx.get(f"{url}/info/").status_code == 401
        bad = httpx.post(f"{url}/auth/token", data={"username": "u", "password": "nope", "grant_type": "password"})
        assert bad.status_code == 401
        tok = httpx.post(f"{url}/auth/token", data={"username": "u", "password": "k3y", "grant_type": "password"})
        auth = {"Authorization": f"{tok.json()['token_type']} {tok.json()['access_token']}"}
        assert httpx.get(f"{url}/info/", headers=auth).status_code == 200


def test_infer_reports_a_poor_result(server, volume_path, monkeypatch):
    """``params.voxprompt`` carries the Session's flag (``low_confidence``, ``warning``)."""
    sid = create_session(server, volume_path)["session_id"]
    decode = Session._decode
    monkeypatch.setattr(Session, "_decode", lambda self, *a: (decode(self, *a)[0], 0.01))
    status, params, files = infer(server, "Volume 1", {"label": "liver", "foreground": [[20, 18, 10]]},
                                  session_id=sid)
    assert status == 200 and files
    assert params["voxprompt"]["low_confidence"] is True and "predicted IoU 0.01" in params["voxprompt"]["warning"]
    assert params["voxprompt"]["score"] == pytest.approx(0.01)
    httpx.delete(f"{server}/session/{sid}")


def test_label_in_seeds_the_object(server, model, volume_path, tmp_path):
    """A ``label`` file part (the client's ``label_in``) becomes the object's mask before the points."""
    sid = create_session(server, volume_path)["session_id"]
    ref = sitk.ReadImage(str(volume_path))
    seg = np.zeros(sitk.GetArrayFromImage(ref).shape, np.uint8)  # (k, j, i)
    seg[7:13, 12:24, 14:28] = 3
    lab = sitk.GetImageFromArray(seg)
    lab.CopyInformation(ref)
    label_file = tmp_path / "label_in.nii.gz"
    sitk.WriteImage(lab, str(label_file))
    local = Session(model)
    local.set_image(read_image(volume_path))

    def post(fg, label_path=label_file):
        files = {"params": (None, json.dumps({"label": "liver", "foreground": fg}))}
        if label_path is not None:
            files["label"] = (label_path.name, label_path.read_bytes())
        return httpx.post(f"{server}/infer/{MODEL}", params={"session_id": sid, "output": "image"}, files=files)

    def mask_of(r) -> np.ndarray:
        assert r.status_code == 200, r.text
        (tmp_path / "out.nii.gz").write_bytes(r.content)
        return sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out.nii.gz")))

    p1, p2 = [20, 18, 10], [3, 3, 3]
    local.add_mask(seg > 0)
    want = local.add_point(from_slicer_ijk(p1)).mask
    got = mask_of(post([p1]))
    np.testing.assert_array_equal(got, want.astype(np.uint8))
    assert not np.array_equal(got, (seg > 0).astype(np.uint8))  # the click changed the seeded mask
    # a moved point (no label part now): replayed on top of the same seed
    local.reset()
    local.add_mask(seg > 0)
    want = local.add_point(from_slicer_ijk(p2)).mask
    np.testing.assert_array_equal(mask_of(post([p2], None)), want.astype(np.uint8))
    # a label on another grid is refused
    small = sitk.GetImageFromArray(seg[:, :, :20])
    small.SetSpacing(ref.GetSpacing())
    sitk.WriteImage(small, str(tmp_path / "small.nii.gz"))
    r = post([p1], tmp_path / "small.nii.gz")
    assert r.status_code == 400 and "image's grid" in r.json()["detail"]
    httpx.delete(f"{server}/session/{sid}")


def test_locked_labels_and_others_negative(server, volume_path, tmp_path, monkeypatch):
    """``locked_labels`` / ``others_negative`` params (voxprompt's): a locked label keeps its voxels."""
    shape = sitk.GetArrayFromImage(sitk.ReadImage(str(volume_path))).shape  # (k, j, i)
    a = np.zeros(shape, bool)
    a[6:14, 10:26, 12:22] = True
    b = np.zeros(shape, bool)
    b[6:14, 10:26, 18:30] = True
    fix_model_masks(monkeypatch, {1: a, 2: b})
    sid = create_session(server, volume_path)["session_id"]

    def post(params: dict) -> dict:
        files = {"params": (None, json.dumps(params))}
        r = httpx.post(f"{server}/infer/{MODEL}", params={"session_id": sid, "output": "json"}, files=files)
        assert r.status_code == 200, r.text
        return r.json()["voxprompt"]

    def mask(params: dict) -> np.ndarray:
        files = {"params": (None, json.dumps(params))}
        r = httpx.post(f"{server}/infer/{MODEL}", params={"session_id": sid, "output": "image"}, files=files)
        assert r.status_code == 200, r.text
        (tmp_path / "out.nii.gz").write_bytes(r.content)
        return sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out.nii.gz"))).astype(bool)

    np.testing.assert_array_equal(mask({"label": "liver", "foreground": [[14, 18, 10]]}), a)
    got = mask({"label": "spleen", "foreground": [[27, 18, 10]], "locked_labels": ["liver"]})
    np.testing.assert_array_equal(got, b & ~a)
    info = post({"label": "spleen", "foreground": [[27, 18, 10]]})  # no change: the locks stay
    assert info["locked_labels"] == ["liver"] and info["others_negative"] is False
    # unlocked, and a moved point (replayed): the spleen takes the overlap
    np.testing.assert_array_equal(mask({"label": "spleen", "foreground": [[28, 18, 10]], "locked_labels": []}), b)
    got = mask({"label": "spleen", "foreground": [[27, 18, 10]], "others_negative": True})
    np.testing.assert_array_equal(got, b & ~a)
    for bad, needle in (({"locked_labels": "liver"}, "locked_labels"), ({"others_negative": 1}, "others_negative")):
        files = {"params": (None, json.dumps({"label": "spleen", "foreground": [[27, 18, 10]], **bad}))}
        r = httpx.post(f"{server}/infer/{MODEL}", params={"session_id": sid, "output": "json"}, files=files)
        assert r.status_code == 400 and needle in r.json()["detail"], r.text
    httpx.delete(f"{server}/session/{sid}")
