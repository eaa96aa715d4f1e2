"""Helpers for running the server inside a process: a background uvicorn and a tiny test model."""
from __future__ import annotations

import logging
import socket
import threading
import time
from typing import Optional

import torch

log = logging.getLogger(__name__)

# A tiny voxprompt-med3d-small (32^3 input, 4^3 tokens): fast enough for protocol tests on a CPU.
TINY_MED3D = {
    "img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2,
    "global_attn_indexes": [0, 1], "prompt_embed_dim": 24, "decoder_num_heads": 2,
    "decoder_mlp_dim": 32, "iou_head_hidden_dim": 16, "mask_in_chans": 4,
}


def tiny_model(seed: int = 0) -> torch.nn.Module:
    """A randomly initialised tiny voxprompt-med3d-small (deterministic for a given ``seed``)."""
    from ..models.loading import load_model

    base = load_model("voxprompt-med3d-small", pretrained=False).cfg.to_dict()
    torch.manual_seed(seed)
    return load_model("voxprompt-med3d-small", pretrained=False, config={**base, **TINY_MED3D})


class BackgroundServer:
    """``with BackgroundServer(app) as url:`` serves ``app`` with uvicorn on a free loopback port."""

    def __init__(self, app, host: str = "127.0.0.1", start_timeout_s: float = 20.0) -> None:
        import uvicorn

        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, 0))
        self.port = self._sock.getsockname()[1]
        self.url = f"http://{host}:{self.port}"
        settings = getattr(getattr(getattr(app, "state", None), "ctx", None), "settings", None)
        extra = {}
        if settings is not None:  # the header time-out of ``voxprompt serve``
            from .transport import http_protocol

            extra["http"] = http_protocol(settings.header_timeout_s)
        self._server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on", **extra))
        self._thread: Optional[threading.Thread] = None
        self._timeout = start_timeout_s

    def __enter__(self) -> str:
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._sock]},
                                        name="voxprompt-test-server", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + self._timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the background server did not start")
            time.sleep(0.02)
        return self.url

    def __exit__(self, *exc) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._sock.close()
