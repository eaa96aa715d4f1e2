"""Memory caps: per-session embedding-cache trimming, 413 for oversized images, LRU eviction (410)."""
from __future__ import annotations

import httpx
import numpy as np
import pytest
from server_testing import BackgroundServer, tiny_model

from voxprompt.server import ServerSettings, create_app
from voxprompt.server.protocols import nnia
from voxprompt.session import Session

remote = pytest.importorskip("nnInteractive.inference.remote")
Client = remote.nnInteractiveRemoteInferenceSession
MiB = 1024 * 1024


@pytest.fixture(scope="module")
def model():
    return tiny_model()


def volume(seed: int = 0, shape=(24, 40, 36)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    vol = rng.normal(0, 20, size=shape).astype(np.int16)
    vol[8:16, 12:30, 10:26] += 300
    return vol


CLICKS = [((12, 20, 18), True), ((4, 35, 32), True), ((12, 5, 5), False), ((20, 30, 3), True),
          ((12, 20, 18), True)]


def test_trim_cache_keeps_results_identical(model):
    vol = volume()
    ref, trimmed = Session(model), Session(model)
    ref.set_image(vol)
    trimmed.set_image(vol)
    floor = trimmed.memory_bytes()
    for point, positive in CLICKS:
        a = ref.add_point(point, positive=positive)
        assert trimmed.cache_bytes() >= 0
        trimmed.trim_cache(0)  # drop every cached embedding: re-encoded on demand
        assert trimmed.cache_bytes() == 0
        b = trimmed.add_point(point, positive=positive)
        np.testing.assert_array_equal(a.mask, b.mask)
        assert a.score == pytest.approx(b.score)
    assert ref.cache_bytes() > 0 and ref.memory_bytes() > floor
    np.testing.assert_array_equal(ref.undo().mask, trimmed.undo().mask)


def test_server_trims_to_session_cap_and_matches_local(model):
    vol = volume()
    local = Session(model)
    local.set_image(vol)
    img_mb = vol.nbytes / MiB
    settings = dict(max_sessions=2, session_memory_mb=img_mb * 1.6 + 0.05)  # no room for a cache
    app = create_app(ServerSettings(**settings), model=model)
    with BackgroundServer(app) as url, Client(url) as c:
        c.set_image(vol[None], {"spacing": [1.0, 1.0, 1.0]})
        buf = np.zeros(vol.shape, np.uint8)
        c.set_target_buffer(buf)
        for point, positive in CLICKS:
            c.add_point_interaction(list(point), include_interaction=positive)
            np.testing.assert_array_equal(buf, local.add_point(point, positive=positive).mask.astype(np.uint8))
        (lease,) = app.state.ctx.leases._leases.values()
        assert lease.memory_bytes <= settings["session_memory_mb"] * MiB or lease.session.cache_bytes() == 0


def test_image_over_session_cap_is_413(model):
    vol = volume()
    app = create_app(ServerSettings(max_sessions=2, session_memory_mb=vol.nbytes / MiB / 2), model=model)
    with BackgroundServer(app) as url, httpx.Client(base_url=url) as h:
        token = h.post("/claim").json()["lease_token"]
        r = h.post("/set_image", content=nnia.pack(vol[None]), headers={"X-Lease-Token": token})
        assert r.status_code == 413, r.text
        assert "--session-memory-mb" in r.json()["detail"]
        h.post("/release", headers={"X-Lease-Token": token})


def test_lru_idle_session_is_evicted_with_410(model):
    vols = [volume(i) for i in range(3)]
    probe = Session(model)
    probe.set_image(vols[0])
    probe.add_point((12, 20, 18))
    m1 = probe.memory_bytes()
    probe.add_point((12, 22, 18))
    m2 = probe.memory_bytes()
    cap = (m1 + m2 + m1 // 2) / MiB  # room for two sessions, not three
    app = create_app(ServerSettings(max_sessions=4, session_memory_mb=m2 * 10 / MiB, max_memory_mb=cap),
                     model=model)
    with BackgroundServer(app) as url:
        clients = [Client(url) for _ in range(3)]
        try:
            for c, v in zip(clients[:2], vols):
                c.set_image(v[None], {"spacing": [1.0, 1.0, 1.0]})
                c.set_target_buffer(np.zeros(v.shape, np.uint8))
                c.add_point_interaction([12, 20, 18], include_interaction=True)
            clients[1].add_point_interaction([12, 22, 18], include_interaction=True)  # client 0 is now LRU
            leases = app.state.ctx.leases
            assert len(leases) == 3  # the third client has claimed but holds nothing yet
            clients[2].set_image(vols[2][None], {"spacing": [1.0, 1.0, 1.0]})
            clients[2].set_target_buffer(np.zeros(vols[2].shape, np.uint8))
            clients[2].add_point_interaction([12, 20, 18], include_interaction=True)
            assert len(leases) == 2 and leases.total_memory_bytes() <= cap * MiB
            with httpx.Client(base_url=url) as h:
                r = h.post("/add_point_interaction", headers={"X-Lease-Token": clients[0]._lease_token},
                           json={"coordinates": [12, 20, 18], "include_interaction": True})
                assert r.status_code == 410, r.text
                r = h.post("/heartbeat", headers={"X-Lease-Token": clients[1]._lease_token})
                assert r.status_code == 200, r.text
        finally:
            for c in clients:
                try:
                    c.close()
                except Exception:
                    pass
