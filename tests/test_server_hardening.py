"""The server under real use (issue 21): decompression bombs, client disconnects, stalled bodies,
Host checking (DNS rebinding) and the API description behind the key."""
from __future__ import annotations

import gzip
import logging
import socket
import time

import httpx
import numpy as np
import pytest
import SimpleITK as sitk
from server_testing import BackgroundServer, tiny_model

import voxprompt.io.read as vread
from voxprompt.errors import ImageTooLarge
from voxprompt.io import read_image
from voxprompt.server import ServerSettings, create_app

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def bomb(tmp_path_factory):
    """A ~40 KB .nii.gz whose voxel data expands to 32 MiB (zeros)."""
    path = tmp_path_factory.mktemp("bomb") / "bomb.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((512, 256, 256), np.uint8)), str(path), useCompression=True)
    assert path.stat().st_size < MiB
    return path


class _Spy:
    """Counts voxel reads by ITK and bytes decompressed through Python's gzip in voxprompt.io.read."""

    def __init__(self, monkeypatch):
        self.executed = 0
        self.gunzipped = 0
        spy = self
        real_execute = sitk.ImageFileReader.Execute

        def execute(reader, *a, **k):
            spy.executed += 1
            return real_execute(reader, *a, **k)

        class CountingGzip(gzip.GzipFile):
            def read(self, size=-1):
                out = super().read(size)
                spy.gunzipped += len(out)
                return out

        monkeypatch.setattr(sitk.ImageFileReader, "Execute", execute)
        monkeypatch.setattr(vread.gzip, "open", lambda path, mode="rb": CountingGzip(path, mode))


def test_read_image_refuses_a_bomb_from_its_header(bomb, monkeypatch):
    spy = _Spy(monkeypatch)
    with pytest.raises(ImageTooLarge, match="MiB"):
        read_image(bomb, max_bytes=4 * MiB)
    assert spy.executed == 0 and spy.gunzipped <= 4096  # only the NIfTI header was decompressed
    assert read_image(bomb, max_bytes=64 * MiB).array.nbytes == 32 * MiB  # under the cap: read as before


@pytest.mark.parametrize("route", ["monailabel", "web"])
def test_upload_bomb_is_413_without_expanding(model, bomb, monkeypatch, route):
    app = create_app(ServerSettings(session_memory_mb=4, max_upload_mb=2), model=model)
    spy = _Spy(monkeypatch)
    with BackgroundServer(app) as url, httpx.Client(base_url=url, timeout=30) as h:
        with open(bomb, "rb") as fh:
            if route == "monailabel":
                r = h.put("/session/", files=[("files", (bomb.name, fh))])
            else:
                r = h.post("/api/viewer/open", files={"file": (bomb.name, fh)})
    assert r.status_code == 413, r.text
    assert "--session-memory-mb" in r.json()["detail"]
    assert spy.executed == 0, "the voxel data was read before the size check"
    assert spy.gunzipped <= 4096, f"{spy.gunzipped} bytes were decompressed"


# ----------------------------------------------------------------------------- disconnects, stalled bodies
class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        if not any(r is record for r in self.records):  # attached to a logger and to its parent
            self.records.append(record)


@pytest.fixture
def server_log():
    """Every record of uvicorn's loggers (they do not propagate to the root) and of voxprompt."""
    handler = _Records()
    loggers = [logging.getLogger(n) for n in ("uvicorn", "uvicorn.error", "voxprompt", "asyncio", "")]
    for lg in loggers:
        lg.addHandler(handler)
    yield handler.records
    for lg in loggers:
        lg.removeHandler(handler)


def _partial_upload(port: int, declared: int = 100_000, sent: int = 1000) -> socket.socket:
    head = (b"--xyz\r\nContent-Disposition: form-data; name=\"file\"; filename=\"v.nii.gz\"\r\n"
            b"Content-Type: application/octet-stream\r\n\r\n")
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(b"POST /api/viewer/open HTTP/1.1\r\nHost: 127.0.0.1\r\n"
              b"Content-Type: multipart/form-data; boundary=xyz\r\n"
              + f"Content-Length: {declared}\r\n\r\n".encode() + head + b"\0" * (sent - len(head)))
    return s


def _wait_for(pred, timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return pred()


def test_client_disconnect_during_upload_logs_one_line(model, server_log):
    app = create_app(ServerSettings(), model=model)
    server = BackgroundServer(app)
    with server:
        _partial_upload(server.port).close()

        def mine():
            return [r for r in server_log if "disconnect" in r.getMessage()]
        assert _wait_for(lambda: len(mine()) >= 1)
        time.sleep(0.3)
        assert httpx.get(f"{server.url}/api/viewer/config").status_code == 200  # still serving
    assert len(mine()) == 1, [r.getMessage() for r in mine()]
    assert not [r for r in server_log if r.exc_info or "Traceback" in r.getMessage()], \
        [r.getMessage() for r in server_log]


def test_stalled_body_gets_408_and_is_closed(model, server_log):
    app = create_app(ServerSettings(body_timeout_s=1.0), model=model)
    server = BackgroundServer(app)
    with server:
        s = _partial_upload(server.port)
        t0 = time.monotonic()
        try:
            reply = b""
            while chunk := s.recv(65536):  # the server closes the connection after its answer
                reply += chunk
        finally:
            s.close()
        elapsed = time.monotonic() - t0
    assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
    assert b"--body-timeout" in reply
    assert 0.8 < elapsed < 5, elapsed
    assert not [r for r in server_log if r.exc_info], [r.getMessage() for r in server_log]


# ----------------------------------------------------------------------------- Host header, API description
def test_host_header_is_checked_on_loopback(model):
    app = create_app(ServerSettings(allowed_hosts=("viewer.lab",)), model=model)
    with BackgroundServer(app) as url, httpx.Client(base_url=url, timeout=10) as h:
        port = url.rsplit(":", 1)[1]
        for host in ("evil.example", f"evil.example:{port}", "localhost.evil.example", "127.0.0.1.nip.io"):
            r = h.get("/api/viewer/config", headers={"Host": host})
            assert r.status_code == 400, (host, r.text)
            assert "--allowed-host" in r.json()["detail"]
        for host in (f"127.0.0.1:{port}", "localhost", f"LOCALHOST:{port}", f"[::1]:{port}", "viewer.lab",
                     f"viewer.lab:{port}"):
            assert h.get("/api/viewer/config", headers={"Host": host}).status_code == 200, host


def test_host_check_settings():
    from voxprompt.server.security import host_name

    assert host_name("[::1]:1527") == "::1" and host_name("LocalHost.:80") == "localhost"
    assert ServerSettings().check_host and not ServerSettings(host="0.0.0.0").check_host
    assert ServerSettings(host="0.0.0.0", allowed_hosts=("seg.lab",)).check_host


def test_api_description_behind_the_key(model):
    with BackgroundServer(create_app(ServerSettings(), model=model)) as url:
        assert httpx.get(f"{url}/openapi.json").status_code == 200  # no key: open
        assert httpx.get(f"{url}/docs").status_code == 200
    app = create_app(ServerSettings(api_key="s3cret"), model=model)
    with BackgroundServer(app) as url, httpx.Client(base_url=url, timeout=10) as h:
        for path in ("/openapi.json", "/docs", "/redoc"):
            assert h.get(path).status_code in (401, 404), path
        assert h.get("/openapi.json").status_code == 401
        auth = {"Authorization": "Bearer s3cret"}
        r = h.get("/openapi.json", headers=auth)
        assert r.status_code == 200 and "/claim" in r.json()["paths"]
        assert "/openapi.json" not in r.json()["paths"]
        assert h.get("/docs", headers=auth).status_code == 200


def test_session_tokens_are_masked_in_the_access_log(model):
    from voxprompt.server.security import TokenMaskFilter

    create_app(ServerSettings(), model=model)
    access = logging.getLogger("uvicorn.access")
    (flt,) = [f for f in access.filters if isinstance(f, TokenMaskFilter)]
    token = "0123abcd" + "e" * 24
    rec = logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
                            ("127.0.0.1:5", "GET", f"/api/viewer/{token}/labels.nii.gz?download=true", "1.1", 200),
                            None)
    assert flt.filter(rec)
    line = rec.getMessage()
    assert token not in line and "/api/viewer/0123abcd…/labels.nii.gz?download=true" in line
    assert flt.mask(f"/session/{token}") == "/session/0123abcd…"
    assert flt.mask("/api/viewer/config") == "/api/viewer/config"


def test_viewer_api_refuses_cross_site_requests(model):
    with BackgroundServer(create_app(ServerSettings(), model=model)) as url, \
            httpx.Client(base_url=url, timeout=10) as h:
        evil = h.post("/api/viewer/open", data={"path": "x"}, headers={"Origin": "http://evil.example"})
        assert evil.status_code == 403 and "cross-site" in evil.json()["detail"]
        assert h.post("/api/viewer/open", data={"path": "x"}, headers={"Origin": "null"}).status_code == 403
        own = h.post("/api/viewer/open", data={"path": "x"}, headers={"Origin": url})
        assert own.status_code == 400, own.text  # this server's own page: on to the route (no --data-dir)
        assert h.post("/api/viewer/open", data={"path": "x"}).status_code == 400  # not a browser: no Origin
        assert h.get("/healthz", headers={"Origin": "http://evil.example"}).status_code == 200  # not a viewer route


def _send_until_closed(port: int, data: bytes) -> tuple[bytes, float]:
    """Send ``data`` on a new connection and read until the server closes it: (reply, seconds)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        s.sendall(data)
        t0 = time.monotonic()
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
    finally:
        s.close()
    return reply, time.monotonic() - t0


def test_stalled_headers_get_408_and_are_closed(model, server_log):
    app = create_app(ServerSettings(header_timeout_s=1.0), model=model)
    server = BackgroundServer(app)
    with server:
        sends = (b"",  # nothing
                 b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n",  # half the headers
                 # a kept-alive connection: the second request's headers stall
                 b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\nGET /healthz HTTP/1.1\r\n")
        replies = [_send_until_closed(server.port, data) for data in sends]
        assert httpx.get(f"{server.url}/healthz").status_code == 200  # a prompt client is served as before
    for reply, elapsed in replies:
        assert b"408 Request Timeout" in reply, reply[:300]
        assert 0.8 < elapsed < 5, elapsed
    assert replies[2][0].startswith(b"HTTP/1.1 200")
    assert len([r for r in server_log if "--header-timeout" in r.getMessage()]) == 3
