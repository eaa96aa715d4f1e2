"""Leases: one :class:`~voxprompt.session.Session` per client, with time-outs and a capacity.

A lease is claimed by a client (nnInteractive ``/claim``, MONAI Label ``PUT /session/``, the browser
viewer) and identified by a random token. Two clocks drop it:

* **idle**: no interaction (image, prompt, undo ... or a heartbeat: a client that is open but
  whose user is reading keeps its work) for ``idle_timeout`` seconds;
* **liveness** (optional): no request at all, not even a heartbeat, for ``liveness_timeout``
  seconds, which frees the slots of crashed clients quickly.

An expired lease is dropped by the background reaper or, at the latest, by the next request
that names it (so behaviour does not depend on the reaper's timing). All leases share one
model; each has its own Session and lock.

Restoring: an expired lease (idle or dead, not released or evicted) keeps its Session, image and
masks (cached embeddings dropped) for ``grace_s`` seconds outside the slot count. Requests naming
it get 410 saying so; :meth:`LeaseManager.restore` (``POST /restore`` with the token) puts it back
under the same token when a slot is free. Under memory pressure these are dropped first.
"""
from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

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
    liveness_timeout: float | None
    created: float
    last_active: float
    last_seen: float
    lock: threading.RLock = field(default_factory=threading.RLock)
    state: dict[str, Any] = field(default_factory=dict)
    memory_bytes: int = 0  # last estimate, taken under ``lock`` (see LeaseManager.account)
    closed: bool = False  # released, reaped or evicted
    expired_at: float | None = None  # when it expired, while it waits to be restored
    expired_why: str = ""  # sentence for the 410

    def expiry_reason(self, now: float) -> str | None:
        if self.liveness_timeout is not None and now - self.last_seen > self.liveness_timeout:
            return "dead"
        if now - self.last_active > self.idle_timeout:
            return "idle"
        return None

    def remaining(self, now: float) -> float:
        """Seconds until the idle time-out."""
        return max(0.0, self.idle_timeout - (now - self.last_active))

    def why(self, reason: str) -> str:
        if reason == "dead":
            return f"no request, not even a heartbeat, for {self.liveness_timeout:g} s"
        return f"no interaction or heartbeat for {self.idle_timeout:g} s"


class LeaseManager:
    """Thread-safe token -> Lease table with a capacity and a reaper thread."""

    def __init__(self, session_factory: Callable[[], Session], max_sessions: int,
                 retry_after_s: int = 10, clock: Clock = time.monotonic, grace_s: float = 0.0) -> None:
        self._factory = session_factory
        self.max_sessions = int(max_sessions)
        self.retry_after_s = int(retry_after_s)
        self.grace_s = float(grace_s)
        self._clock = clock
        self._leases: dict[str, Lease] = {}
        self._expired: dict[str, Lease] = {}  # restorable, oldest first
        self._mu = threading.Lock()
        self._stop = threading.Event()
        self._reaper: threading.Thread | None = None

    def __len__(self) -> int:
        with self._mu:
            return len(self._leases)

    def now(self) -> float:
        return self._clock()

    # ------------------------------------------------------------------ lifecycle
    def claim(self, kind: str, idle_timeout: float, liveness_timeout: float | None = None) -> Lease:
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

    def get(self, token: str | None, kind: str | None = None, active: bool = False) -> Lease:
        """The live lease for ``token`` (LeaseGone otherwise); marks it seen, and active if asked."""
        lease = self.peek(token, kind)
        now = self._clock()
        lease.last_seen = now
        if active:
            lease.last_active = now
        return lease

    def peek(self, token: str | None, kind: str | None = None) -> Lease:
        """Like :meth:`get` without touching either clock."""
        if not token:
            raise LeaseGone("lease token missing")
        now = self._clock()
        expired = None
        with self._mu:
            lease = self._leases.get(token)
            if lease is not None and (kind is not None and lease.kind != kind):
                lease = None
            if lease is not None and (reason := lease.expiry_reason(now)) is not None:
                self._expire(token, lease, reason, now)
                expired, lease = lease, None
            grave = self._expired.get(token) if lease is None else None
            if grave is not None and (kind is not None and grave.kind != kind or not self._restorable(grave, now)):
                grave = None
        if expired is not None:
            log.info("dropped expired %s lease %s…", expired.kind, token[:8])
            self._trim(expired)
        if grave is not None:
            raise LeaseGone(self.gone_detail(grave, now))
        if lease is None:
            raise LeaseGone("lease expired or unknown")
        return lease

    def gone_detail(self, lease: Lease, now: float) -> str:
        """The 410 sentence for an expired lease that can still be restored."""
        left = self.grace_s - (now - (lease.expired_at or now))
        return (f"lease expired ({lease.expired_why}); its image and masks are kept for {max(0.0, left):.0f} s "
                "more: POST /restore with header X-Lease-Token set to this token (the MONAI Label session id, "
                "the viewer's token) brings it back")

    def restore(self, token: str | None, kind: str | None = None) -> Lease:
        """Put an expired lease back under its token (clocks restarted); LeaseGone when there is none
        to restore, AtCapacity (503) when every slot is taken."""
        now = self._clock()
        with self._mu:
            self._purge(now)
            lease = self._expired.get(token or "")
            if lease is None or (kind is not None and lease.kind != kind):
                raise LeaseGone(f"nothing to restore: the lease is unknown, was released, or expired more than "
                                f"{self.grace_s:g} s ago (claim a new one)")
            if len(self._leases) >= self.max_sessions:
                raise AtCapacity(f"server is at capacity ({self.max_sessions} sessions); retry the restore later "
                                 f"(kept for {self.grace_s - (now - (lease.expired_at or now)):.0f} s more)",
                                 self.retry_after_s)
            self._expired.pop(lease.token)
            lease.closed, lease.expired_at, lease.expired_why = False, None, ""
            lease.last_active = lease.last_seen = now
            self._leases[lease.token] = lease
        log.info("restored %s lease %s…", lease.kind, lease.token[:8])
        return lease

    # the helpers below run with ``_mu`` held (except _trim)
    def _expire(self, token: str, lease: Lease, reason: str, now: float) -> None:
        self._leases.pop(token, None)
        lease.closed = True
        if self.grace_s > 0:
            lease.expired_at, lease.expired_why = now, lease.why(reason)
            self._expired[token] = lease

    def _restorable(self, lease: Lease, now: float) -> bool:
        return lease.expired_at is not None and now - lease.expired_at <= self.grace_s

    def _purge(self, now: float) -> None:
        for token in [t for t, x in self._expired.items() if not self._restorable(x, now)]:
            lease = self._expired.pop(token)
            log.info("restore grace of expired %s lease %s… ended: dropped", lease.kind, token[:8])

    def _trim(self, lease: Lease) -> None:
        """Drop an expired lease's cached embeddings (if nobody is using it) while it waits."""
        if lease.token not in self._expired or not lease.lock.acquire(blocking=False):
            return
        try:
            lease.session.trim_cache(0)
            lease.memory_bytes = lease.session.memory_bytes()
        finally:
            lease.lock.release()

    def expired_leases(self) -> list[Lease]:
        """The leases waiting to be restored, oldest first."""
        with self._mu:
            self._purge(self._clock())
            return list(self._expired.values())

    def leases(self) -> list[Lease]:
        """The live leases, oldest first."""
        with self._mu:
            return list(self._leases.values())

    def release(self, token: str | None) -> bool:
        """Drop a lease; idempotent. Returns whether one was dropped."""
        if not token:
            return False
        with self._mu:
            lease = self._leases.pop(token, None)
            if lease is None:
                lease = self._expired.pop(token, None)
        if lease is not None:
            lease.closed = True
            log.info("released %s lease %s…", lease.kind, token[:8])
        return lease is not None

    def sweep(self) -> int:
        """Drop every expired lease; returns how many."""
        now = self._clock()
        with self._mu:
            self._purge(now)
            dead = [(t, lease, r) for t, lease in self._leases.items() if (r := lease.expiry_reason(now))]
            for token, lease, reason in dead:
                self._expire(token, lease, reason, now)
        for token, lease, reason in dead:
            log.info("reaped %s %s lease %s…", reason, lease.kind, token[:8])
            self._trim(lease)
        return len(dead)

    # ------------------------------------------------------------------ memory
    def total_memory_bytes(self) -> int:
        """Sum of the leases' last memory estimates (those waiting to be restored included)."""
        with self._mu:
            return sum(x.memory_bytes for x in (*self._leases.values(), *self._expired.values()))

    def account(self, lease: Lease, session_cap: int, total_cap: int) -> list[str]:
        """Trim ``lease``'s cache to ``session_cap``, then evict LRU idle leases while over ``total_cap``.

        The caller holds ``lease.lock``. Expired leases waiting to be restored go first (oldest
        first), then idle live ones (a lease is idle when its lock is free); evicted leases are
        dropped for good (their clients get 410). Returns the evicted tokens.
        """
        session = lease.session
        if session.memory_bytes() > session_cap:
            freed = session.trim_cache(session_cap)
            log.info("lease %s…: over its %d MiB cap, trimmed %d KiB of cached embeddings", lease.token[:8],
                     session_cap >> 20, freed >> 10)
        lease.memory_bytes = session.memory_bytes()
        evicted: list[str] = []
        with self._mu:
            total = sum(x.memory_bytes for x in (*self._leases.values(), *self._expired.values()))
            while total > total_cap and self._expired:
                token, grave = next(iter(self._expired.items()))
                self._expired.pop(token)
                total -= grave.memory_bytes
                evicted.append(token)
                log.warning("dropped expired %s lease %s… (%d MiB) before its restore grace ended: sessions use "
                            "more than --max-memory-mb %d", grave.kind, token[:8], grave.memory_bytes >> 20,
                            total_cap >> 20)
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
            self._expired.clear()

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
