"""Server settings: one dataclass, filled by ``voxprompt serve`` or by tests."""
from __future__ import annotations

import ipaddress
import math
from dataclasses import dataclass
from pathlib import Path

from ..errors import UsageError
from ..models.config import DEFAULT_MODEL

DEFAULT_PORT = 1527  # the port 3D Slicer's nnInteractive extension suggests


@dataclass
class ServerSettings:
    """Everything ``create_app`` needs. Times are seconds; sizes are MiB."""

    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    model: str = DEFAULT_MODEL
    checkpoint: str | None = None
    device: str = "cpu"
    precision: str = "fp32"  # fp32, bf16 or fp16 (model.set_precision)
    max_sessions: int = 4
    api_key: str | None = None  # read from --api-key-file, never from the command line
    data_dir: Path | None = None
    max_upload_mb: float = 1024.0
    body_timeout_s: float = 30.0  # longest wait for the next piece of a request body: 408 and closed
    header_timeout_s: float = 30.0  # a request's headers must be complete within this: 408 and closed
    idle_timeout_s: float = 600.0  # no real interaction for this long: the lease is dropped
    liveness_timeout_s: float = 60.0  # no request at all (not even a heartbeat): dropped
    restore_grace_s: float = 1800.0  # an expired lease stays restorable (POST /restore) this long; 0: never
    monai_session_expiry_s: float = 3600.0  # MONAI Label ``PUT /session/?expiry=0``
    reaper_interval_s: float = 15.0
    autozoom: bool = False  # default of ``set_do_autozoom`` for new leases
    refine: bool | None = None  # boundary refinement (voxprompt.refine); None = the model's stored setting
    clean: bool | None = None  # mask clean-up (voxprompt.cleanup); None = the model's stored setting
    retry_after_s: int = 10  # Retry-After of a 503 at capacity
    web: bool = True  # serve the browser viewer at /
    session_memory_mb: float = 2048.0  # per session: embedding cache trimmed above it; larger images: 413
    max_memory_mb: float = 8192.0  # all sessions: least recently used idle sessions evicted above it
    max_points: int = 32  # points in one MONAI Label infer (each is a model step); more: 400
    allowed_hosts: tuple[str, ...] = ()  # Host header names accepted besides loopback ones (--allowed-host)

    def validate(self) -> ServerSettings:
        """Raise UsageError naming the first bad value; returns self."""
        if not 0 < int(self.port) < 65536:
            raise UsageError(f"--port must be 1..65535, got {self.port}")
        if int(self.max_sessions) < 1:
            raise UsageError(f"--max-sessions must be at least 1, got {self.max_sessions}")
        if not (math.isfinite(float(self.restore_grace_s)) and float(self.restore_grace_s) >= 0):
            raise UsageError(f"--restore-grace must be 0 or more seconds, got {self.restore_grace_s}")
        if int(self.max_points) < 1:
            raise UsageError(f"--max-points must be at least 1, got {self.max_points}")
        for name in ("max_upload_mb", "body_timeout_s", "header_timeout_s", "idle_timeout_s", "liveness_timeout_s",
                     "monai_session_expiry_s",
                     "reaper_interval_s", "session_memory_mb", "max_memory_mb"):
            v = float(getattr(self, name))
            if not (math.isfinite(v) and v > 0):
                raise UsageError(f"{name} must be a positive number, got {v}")
        self.allowed_hosts = tuple(str(h).strip() for h in self.allowed_hosts if str(h).strip())
        if self.precision not in ("fp32", "bf16", "fp16"):
            raise UsageError(f"--precision must be fp32, bf16 or fp16, got {self.precision!r}")
        if self.api_key is not None and not self.api_key.strip():
            raise UsageError("the API key is empty")
        if self.data_dir is not None:
            d = Path(self.data_dir)
            if not d.is_dir():
                raise UsageError(f"--data-dir {d} is not a folder")
            self.data_dir = d.resolve()
        return self

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    @property
    def session_memory_bytes(self) -> int:
        return int(self.session_memory_mb * 1024 * 1024)

    @property
    def max_memory_bytes(self) -> int:
        return int(self.max_memory_mb * 1024 * 1024)

    @property
    def loopback(self) -> bool:
        return is_loopback(self.host)

    @property
    def check_host(self) -> bool:
        """Whether the Host header is checked: when bound to loopback, or when --allowed-host was given."""
        return self.loopback or bool(self.allowed_hosts)


def is_loopback(host: str) -> bool:
    """Whether ``host`` binds only the loopback interface (127.0.0.0/8, ::1, localhost)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: assume it may be reachable from outside
