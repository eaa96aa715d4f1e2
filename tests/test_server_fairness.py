"""Fair sharing of the one model (issue 21): a long MONAI Label infer lets other users' clicks run between
its steps, is bounded by ``--max-points`` and stops when its client goes away.

Ordering is forced with events (a step waits until the other request is queued on the model lock), never
with wall-clock timing; the generous deadlines only end a test that would otherwise hang.
"""
from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest
from server_testing import BackgroundServer, tiny_model, write_blob_volume

import voxprompt.server.context as server_context
from voxprompt.server import ServerSettings, create_app
from voxprompt.server.model_host import FairLock
from voxprompt.session import Session

MODEL = "voxprompt-med3d-small"
DEADLINE_S = 30.0


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def volume_path(tmp_path_factory) -> Path:
    return write_blob_volume(tmp_path_factory.mktemp("vol"), seed=3)


def points(n: int) -> list[list[int]]:
    """``n`` distinct IJK points inside the (40, 36, 20) volume."""
    return [[4 + (3 * i) % 32, 4 + (5 * i) % 28, 3 + i % 14] for i in range(n)]


def open_session(h: httpx.Client, path: Path) -> str:
    with open(path, "rb") as fh:
        r = h.put("/session/", files=[("files", (path.name, fh))])
    assert r.status_code == 200, r.text
    return r.json()["session_id"]


def infer_json(h: httpx.Client, sid: str, fg: list, label: str = "a") -> httpx.Response:
    return h.post(f"/infer/{MODEL}", params={"session_id": sid, "output": "json"},
                  files={"params": (None, json.dumps({"label": label, "foreground": fg}))})


def wait_for(cond, what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


def test_fair_lock_is_first_come_first_served():
    lock, order = FairLock(), []
    lock.acquire()
    threads = [threading.Thread(target=lambda i=i: (lock.acquire(), order.append(i), lock.release())) for i in range(3)]
    for n, t in enumerate(threads):
        t.start()
        wait_for(lambda n=n: lock.waiting == n + 1, f"waiter {n}")
    lock.release()
    for t in threads:
        t.join(DEADLINE_S)
    assert order == [0, 1, 2] and lock.waiting == 0


def test_long_infer_lets_another_users_click_through(model, volume_path, monkeypatch):
    app = create_app(ServerSettings(max_sessions=4), model=model)
    ctx = app.state.ctx
    steps: list[str] = []
    b_done = threading.Event()
    b_done_before_a_finished: list[bool] = []
    n = 6
    with BackgroundServer(app) as url, httpx.Client(base_url=url, timeout=120) as h:
        sid_a, sid_b = open_session(h, volume_path), open_session(h, volume_path)
        session_a = ctx.leases.peek(sid_a).session
        add_point = Session.add_point

        def spy(self, index, positive=True):
            who = "A" if self is session_a else "B"
            steps.append(who)
            if who == "A" and steps.count("A") == 1:  # A's first step: hold the model until B is queued
                wait_for(lambda: ctx.host.lock.waiting >= 1, "B's click to queue on the model lock")
            if who == "A" and steps.count("A") == n:  # A's last step: B must be answered by now
                b_done_before_a_finished.append(b_done.wait(DEADLINE_S))
            return add_point(self, index, positive)

        monkeypatch.setattr(Session, "add_point", spy)
        result: dict = {}

        def run_a() -> None:
            with httpx.Client(base_url=url, timeout=120) as ha:
                result["a"] = infer_json(ha, sid_a, points(n))

        a = threading.Thread(target=run_a)
        a.start()
        wait_for(lambda: "A" in steps, "A's first step")
        rb = infer_json(h, sid_b, points(1))
        b_done.set()
        a.join(120)
    assert rb.status_code == 200 and result["a"].status_code == 200, (rb.text, result["a"].text)
    assert result["a"].json()["voxprompt"]["points_added"] == n
    assert steps == ["A", "B"] + ["A"] * (n - 1)  # B's click ran after one step of A's request
    assert b_done_before_a_finished == [True]


def test_points_per_request_are_capped(model, volume_path):
    app = create_app(ServerSettings(max_points=3), model=model)
    with BackgroundServer(app) as url, httpx.Client(base_url=url, timeout=60) as h:
        sid = open_session(h, volume_path)
        r = h.post(f"/infer/{MODEL}", params={"session_id": sid, "output": "json"},
                   files={"params": (None, json.dumps({"foreground": points(2), "background": points(4)[2:]}))})
        assert r.status_code == 400 and "--max-points" in r.json()["detail"] and "4 points" in r.json()["detail"]
        assert infer_json(h, sid, points(3)).status_code == 200


def test_infer_stops_when_its_client_disconnects(model, volume_path, monkeypatch):
    app = create_app(ServerSettings(), model=model)
    ctx = app.state.ctx
    noticed = threading.Event()
    watch = server_context.watch_disconnect

    async def spy_watch(request, gone):
        await watch(request, gone)
        noticed.set()

    monkeypatch.setattr(server_context, "watch_disconnect", spy_watch)
    steps: list[int] = []
    add_point = Session.add_point
    closed = threading.Event()

    def spy(self, index, positive=True):
        steps.append(1)
        if len(steps) == 1:
            assert closed.wait(DEADLINE_S)
            wait_for(noticed.is_set, "the server to notice the disconnect")
        return add_point(self, index, positive)

    with BackgroundServer(app) as url, httpx.Client(base_url=url, timeout=60) as h:
        sid = open_session(h, volume_path)
        monkeypatch.setattr(Session, "add_point", spy)
        fg = points(8)
        req = httpx.Request("POST", f"{url}/infer/{MODEL}", params={"session_id": sid},
                            files={"params": (None, json.dumps({"label": "a", "foreground": fg}))})
        body = req.read()
        head = "".join(f"{k}: {v}\r\n" for k, v in req.headers.items())
        sock = socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])))
        sock.sendall(f"POST {req.url.raw_path.decode()} HTTP/1.1\r\n{head}\r\n".encode() + body)
        wait_for(lambda: steps, "the first step")
        sock.close()
        closed.set()
        # the next request on the session waits for the stopped one (the lease lock), then sees its state
        r = infer_json(h, sid, fg[:1])
        assert r.status_code == 200, r.text
        assert r.json()["voxprompt"]["points_added"] == 0 and not r.json()["voxprompt"]["replayed"]
        assert len(steps) == 1  # the other seven points never ran
        assert ctx.host.lock.waiting == 0
