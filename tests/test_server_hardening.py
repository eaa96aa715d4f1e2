"""The server under real use (issue 21): decompression bombs, client disconnects, stalled bodies,
Host checking (DNS rebinding) and the API description behind the key."""
from __future__ import annotations

import gzip

import httpx
import numpy as np
import pytest
import SimpleITK as sitk

import voxprompt.io.read as vread
from voxprompt.errors import ImageTooLarge
from voxprompt.io import read_image
from voxprompt.server import ServerSettings, create_app
from voxprompt.server.testing import BackgroundServer, tiny_model

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
