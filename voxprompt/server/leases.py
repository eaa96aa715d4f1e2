"""Leases: one :class:`~voxprompt.session.Session` per client, with time-outs and a capacity.

A lease is claimed by a client (nnInteractive ``/claim``, MONAI Label ``PUT /session/``, the browser
viewer) and identified by a random token. Two clocks drop it:

* **idle**: no real interaction (image, prompt, undo ...) for ``idle_timeout`` seconds;
* **liveness** (optional): no request at all, not even a heartbeat, for ``liveness_timeout``
  seconds, which frees the slots of crashed clients quickly.

An expired lease is dropped by the background reaper or, at the latest, by the next request
that names it (so behaviour does not depend on the reaper's timing). All leases share one
model; each has its own Session and lock.
"""
from __future__ import annotations

import logging
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from ..session import Session
from .errors import AtCapacity, LeaseGone

log = logging.getLogger(__name__)

Clock = Callable[[], float]


@dataclass(eq=False)
class Lease:
    """One client's session and bookkeeping; ``state`` holds protocol-specific extras."""

    token: str
    kind: str
    session: Session
    idle_timeout: float
    liveness_timeout: Optional[float]
    created: float
    last_active: float
    last_seen: float
    lock: threading.RLock = field(default_factory=threading.RLock)
    state: dict[str, Any] = field(default_factory=dict)
    memory_bytes: int = 0  # last estimate, taken under ``lock`` (see LeaseManager.account)
    closed: bool = False  # released, reaped or evicted

    def expiry_reason(self, now: float) -> Optional[str]:
        if self.liveness_timeout is not None and now - self.last_seen > self.liveness_timeout:
            return "dead"
        if now - self.last_active > self.idle_timeout:
            return "idle"
        return None

    def remaining(self, now: float) -> float:
        """Seconds until the idle time-out."""
        return max(0.0, self.idle_timeout - (now - self.last_active))


class LeaseManager:
    """Thread-safe token -> Lease table with a capacity and a reaper thread."""

    def __init__(self, session_factory: Callable[[], Session], max_sessions: int,
                 retry_after_s: int = 10, clock: Clock = time.monotonic) -> None:
        self._factory = session_factory
        self.max_sessions = int(max_sessions)
        self.retry_after_s = int(retry_after_s)
        self._clock = clock
        self._leases: dict[str, Lease] = {}
        self._mu = threading.Lock()
        self._stop = threading.Event()
        self._reaper: Optional[threading.Thread] = None

    def __len__(self) -> int:
        with self._mu:
            return len(self._leases)

    def now(self) -> float:
        return self._clock()

    # ------------------------------------------------------------------ lifecycle
    def claim(self, kind: str, idle_timeout: float, liveness_timeout: Optional[float] = None) -> Lease:
        """A new lease with a fresh Session; AtCapacity (503) when every slot is taken."""
        self.sweep()
        with self._mu:
            if len(self._leases) >= self.max_sessions:
                raise AtCapacity(f"server is at capacity ({self.max_sessions} sessions); retry later or "
                                 "raise --max-sessions", self.retry_after_s)
            token = secrets.token_hex(16)
            now = self._clock()
            lease = Lease(token=token, kind=kind, session=self._factory(), idle_timeout=float(idle_timeout),
                          liveness_timeout=None if liveness_timeout is None else float(liveness_timeout),
                          created=now, last_active=now, last_seen=now)
            self._leases[token] = lease
            count = len(self._leases)
        log.info("claimed %s lease %s… (%d/%d)", kind, token[:8], count, self.max_sessions)
        return lease

    def get(self, token: Optional[str], kind: Optional[str] = None, active: bool = False) -> Lease:
        """The live lease for ``token`` (LeaseGone otherwise); marks it seen, and active if asked."""
        lease = self.peek(token, kind)
        now = self._clock()
        lease.last_seen = now
        if active:
            lease.last_active = now
        return lease

    def peek(self, token: Optional[str], kind: Optional[str] = None) -> Lease:
        """Like :meth:`get` without touching either clock."""
        if not token:
            raise LeaseGone("lease token missing")
        with self._mu:
            lease = self._leases.get(token)
            if lease is not None and (kind is not None and lease.kind != kind):
                lease = None
            if lease is not None and lease.expiry_reason(self._clock()) is not None:
                self._leases.pop(token, None)
                lease.closed = True
                log.info("dropped expired %s lease %s…", lease.kind, token[:8])
                lease = None
        if lease is None:
            raise LeaseGone("lease expired or unknown")
        return lease

    def release(self, token: Optional[str]) -> bool:
        """Drop a lease; idempotent. Returns whether one was dropped."""
        if not token:
            return False
        with self._mu:
            lease = self._leases.pop(token, None)
        if lease is not None:
            lease.closed = True
            log.info("released %s lease %s…", lease.kind, token[:8])
        return lease is not None

    def sweep(self) -> int:
        """Drop every expired lease; returns how many."""
        now = self._clock()
        with self._mu:
            dead = [(t, lease, r) for t, lease in self._leases.items() if (r := lease.expiry_reason(now))]
            for token, lease, _ in dead:
                self._leases.pop(token, None)
                lease.closed = True
        for token, lease, reason in dead:
            log.info("reaped %s %s lease %s…", reason, lease.kind, token[:8])
        return len(dead)

    # ------------------------------------------------------------------ memory
    def total_memory_bytes(self) -> int:
        """Sum of the leases' last memory estimates."""
        with self._mu:
            return sum(lease.memory_bytes for lease in self._leases.values())

    def account(self, lease: Lease, session_cap: int, total_cap: int) -> list[str]:
        """Trim ``lease``'s cache to ``session_cap``, then evict LRU idle leases while over ``total_cap``.

        The caller holds ``lease.lock``. A lease is idle when its lock is free; evicted leases are
        dropped like expired ones (their clients get 410). Returns the evicted tokens.
        """
        session = lease.session
        if session.memory_bytes() > session_cap:
            freed = session.trim_cache(session_cap)
            log.info("lease %s…: over its %d MiB cap, trimmed %d KiB of cached embeddings", lease.token[:8],
                     session_cap >> 20, freed >> 10)
        lease.memory_bytes = session.memory_bytes()
        evicted: list[str] = []
        with self._mu:
            total = sum(x.memory_bytes for x in self._leases.values())
            if total <= total_cap:
                return evicted
            others = sorted((x for x in self._leases.values() if x is not lease and x.memory_bytes > 0),
                            key=lambda x: x.last_active)
        for other in others:
            if total <= total_cap:
                break
            if not other.lock.acquire(blocking=False):
                continue  # busy: not idle
            try:
                with self._mu:
                    if self._leases.get(other.token) is not other:
                        continue
                    self._leases.pop(other.token)
                    other.closed = True
                total -= other.memory_bytes
                evicted.append(other.token)
                log.warning("evicted idle %s lease %s… (%d MiB) : sessions use more than --max-memory-mb %d",
                            other.kind, other.token[:8], other.memory_bytes >> 20, total_cap >> 20)
            finally:
                other.lock.release()
        if total > total_cap:
            log.warning("sessions use %d MiB, above --max-memory-mb %d, and no idle session is left to evict",
                        total >> 20, total_cap >> 20)
        return evicted

    def close_all(self) -> None:
        with self._mu:
            self._leases.clear()

    # ------------------------------------------------------------------ reaper
    def start_reaper(self, interval_s: float) -> None:
        """Sweep every ``interval_s`` seconds in a daemon thread until :meth:`stop_reaper`."""
        if self._reaper is not None:
            return
        self._stop.clear()

        def loop() -> None:
            while not self._stop.wait(interval_s):
                try:
                    self.sweep()
                except Exception:  # the reaper must survive anything
                    log.exception("lease sweep failed")

        self._reaper = threading.Thread(target=loop, name="voxprompt-lease-reaper", daemon=True)
        self._reaper.start()

    def stop_reaper(self) -> None:
        self._stop.set()
        if self._reaper is not None:
            self._reaper.join(timeout=5)
            self._reaper = None
