"""The shared model and the per-lease Session it backs, with auto-zoom switchable per lease.

:class:`AutoZoomSwitch` is a :class:`~voxprompt.session.RoiPlanner` that delegates to
:class:`~voxprompt.session.autozoom.AutoZoomPlanner` or to the official
:class:`~voxprompt.session.CenteredRoiPlanner`, so a lease's ``set_do_autozoom`` takes effect on its
next prompt without losing the session's state.
"""
from __future__ import annotations

import dataclasses
import logging
import threading
from dataclasses import dataclass, field

import torch

from ..io.image import Image
from ..preprocess import Roi
from ..session import AutoZoomPlanner, BasePlanner, BaseStage, CenteredRoiPlanner, Expansion, RoiPredictor, Session
from ..session.planning import Box

log = logging.getLogger(__name__)


@dataclass
class AutoZoomSwitch(BasePlanner):
    """RoiPlanner that follows ``enabled``: auto-zoom planner when on, official planner when off."""

    enabled: bool = False
    base: CenteredRoiPlanner = field(default_factory=CenteredRoiPlanner)
    zoom: AutoZoomPlanner = field(default_factory=AutoZoomPlanner)

    @property
    def active(self) -> bool:
        return self.enabled

    @property
    def cache_size(self) -> int:  # type: ignore[override]  # room for auto-zoom's tiles either way
        return int(self.zoom.cache_size)

    @property
    def expands(self) -> bool:  # type: ignore[override]
        return self.enabled

    def bind(self, size: int, spacing: float) -> AutoZoomSwitch:
        base = CenteredRoiPlanner(size=int(size), spacing=float(spacing))
        return dataclasses.replace(self, base=base, zoom=self.zoom.bind(size, spacing))

    def plan(self, image: Image, focus_zyx, current: Roi | None, box: Box | None = None) -> Roi:
        return (self.zoom if self.enabled else self.base).plan(image, focus_zyx, current, box=box)

    def expand(self, predictor: RoiPredictor, base: BaseStage) -> Expansion | None:
        return self.zoom.expand(predictor, base) if self.enabled else None


class FairLock:
    """A first-come, first-served lock for the shared model.

    ``threading.Lock`` lets the thread that just released it take it straight back, so a request
    that runs many model steps in a row (a MONAI Label infer with many points) would starve other
    users' clicks. Here every ``acquire`` takes a ticket and waits for its turn: a click queued while
    a step runs goes next, so it waits for at most the steps queued before it (one per other user).
    """

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._next = 0  # next ticket handed out
        self._serving = 0  # ticket that holds the lock (== _next when free)
        self._abandoned: set[int] = set()  # tickets whose waiter gave up (interrupted)

    def acquire(self) -> None:
        with self._cond:
            ticket = self._next
            self._next += 1
            try:
                while ticket != self._serving:
                    self._cond.wait()
            except BaseException:  # an interrupted waiter must not block those behind it
                if ticket == self._serving:
                    self._advance()
                else:
                    self._abandoned.add(ticket)
                raise

    def release(self) -> None:
        with self._cond:
            self._advance()

    def _advance(self) -> None:
        self._serving += 1
        while self._serving in self._abandoned:
            self._abandoned.discard(self._serving)
            self._serving += 1
        self._cond.notify_all()

    @property
    def waiting(self) -> int:
        """Threads queued for the lock (not counting its holder)."""
        with self._cond:
            return max(0, self._next - self._serving - 1 - len(self._abandoned))

    def __enter__(self) -> FairLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class ModelHost:
    """One model shared by every lease; ``lock`` (first come, first served) serialises model steps.

    Its sessions refine boundaries in the background (``Session(refine_background=True)``), so a
    request waits for the refinement of its prompt without holding ``lock``
    (:meth:`~voxprompt.server.context.ServerContext.prompt_step`)."""

    autozoom_available = True  # reported to nnInteractive clients (auto-zoom always ships)

    def __init__(self, model: torch.nn.Module, name: str, device: str | None = None,
                 autozoom_default: bool = False, refine: bool | None = None,
                 clean: bool | None = None) -> None:
        self.model = model
        self.refine = refine
        self.clean = clean
        self.name = name
        self.device = device
        self.autozoom_default = bool(autozoom_default)
        self.lock = FairLock()

    @property
    def roi_size(self) -> int:
        return int(self.model.cfg.img_size)

    def new_session(self) -> Session:
        return Session(self.model, device=self.device,
                       planner=AutoZoomSwitch(enabled=self.autozoom_default),
                       refine=self.refine, clean=self.clean, refine_background=True)


def set_autozoom(session: Session, enabled: bool) -> bool:
    """Switch a server-made session's auto-zoom; returns whether auto-zoom is now really on."""
    planner = session.planner
    if not isinstance(planner, AutoZoomSwitch):
        return False
    planner.enabled = bool(enabled)
    return planner.active


def autozoom_on(session: Session) -> bool:
    planner = session.planner
    return isinstance(planner, AutoZoomSwitch) and planner.active
