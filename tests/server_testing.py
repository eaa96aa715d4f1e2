"""Test helpers for running the server inside the test process: a background uvicorn and a tiny model."""
from __future__ import annotations

import logging
import socket
import threading
import time
from pathlib import Path

import numpy as np
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
    from voxprompt.models.loading import load_model

    base = load_model("voxprompt-med3d-small", pretrained=False).cfg.to_dict()
    torch.manual_seed(seed)
    return load_model("voxprompt-med3d-small", pretrained=False, config={**base, **TINY_MED3D})


def slicer_volume() -> np.ndarray:
    """A (K, J, I) int16 volume with a bright box at [8:16, 12:30, 10:26], as Slicer's
    ``arrayFromVolume`` returns one."""
    rng = np.random.default_rng(0)
    vol = rng.normal(0, 20, size=(24, 40, 36)).astype(np.int16)
    vol[8:16, 12:30, 10:26] += 300
    return vol


def fix_model_masks(monkeypatch, masks: dict[int, np.ndarray], refine: bool = False) -> None:
    """Every prompt's pasted model result becomes ``masks[object id]`` on the whole image (a random
    tiny model finds nothing), so what the server and the session do with it is exact; the boundary
    refinement returns its input unless ``refine``."""
    from voxprompt.session import Session

    monkeypatch.setattr(Session, "_pasted", lambda self, mask, roi, mask_roi, cache=True: (
        tuple(slice(0, n) for n in mask.shape), masks[self.object_id].copy()))
    if not refine:
        monkeypatch.setattr(Session, "_refined", lambda self, region, block, clicks, cancel=None: block)


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
            from voxprompt.server.transport import http_protocol

            extra["http"] = http_protocol(settings.header_timeout_s)
        self._server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on", **extra))
        self._thread: threading.Thread | None = None
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


def blob_volume(seed: int) -> np.ndarray:
    """A (k, j, i) = 20x36x40 int16 noise volume with one bright box: a structure a tiny model can find."""
    rng = np.random.default_rng(seed)
    arr = rng.normal(0, 20, size=(20, 36, 40)).astype(np.int16)
    arr[6:14, 10:26, 12:30] += 300
    return arr


def write_blob_volume(folder: Path, seed: int) -> Path:
    """:func:`blob_volume` written as ``folder/vol.nii.gz`` (unit spacing, identity geometry)."""
    import SimpleITK as sitk

    path = folder / "vol.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(blob_volume(seed)), str(path))
    return path
