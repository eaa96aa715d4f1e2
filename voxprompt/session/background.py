"""Boundary refinement after the fast mask: one worker thread per prompt, cancelled by the next one.

``Session(refine_background=True)`` returns the model's own mask at once (``Prediction.refining``)
and refines its boundary in a :class:`RefineJob`. The worker only computes: it reads the image and
the fast mask block and returns the refined block, and never touches the session. The session
applies the result in the caller's thread, at its next call (``wait_refined``, ``mask``, a new
prompt), so the session's state changes only inside its own methods, as without the option. A new
prompt, undo, reset or image first cancels a refinement that has not finished: its result would
describe a state the user has already left, and the work would slow the new prompt down.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from ..refine import RefineCancelled

log = logging.getLogger(__name__)


class RefineJob:
    """``work(cancel)`` running in a daemon thread; ``context`` is what applying its result needs."""

    def __init__(self, work: Callable[[threading.Event], np.ndarray], context: Any) -> None:
        self.context = context
        self.cancel = threading.Event()
        self._result: np.ndarray | None = None
        self._thread = threading.Thread(target=self._work, args=(work,), name="voxprompt-refine", daemon=True)
        self._thread.start()

    def _work(self, work: Callable[[threading.Event], np.ndarray]) -> None:
        try:
            self._result = work(self.cancel)
        except RefineCancelled:
            log.debug("refinement cancelled")
        except Exception:  # a bug, not the user's input: the fast mask stays, the log says why
            log.exception("boundary refinement failed; the model's mask stays")

    @property
    def done(self) -> bool:
        return not self._thread.is_alive()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait up to ``timeout`` seconds (None: until finished); whether it has finished."""
        self._thread.join(timeout)
        return self.done

    def stop(self) -> None:
        """Cancel and wait for the thread (it stops within one solver iteration)."""
        self.cancel.set()
        self._thread.join()

    @property
    def result(self) -> np.ndarray | None:
        """The refined block once finished, None if cancelled, failed or still running."""
        return self._result if self.done and not self.cancel.is_set() else None


__all__ = ["RefineJob"]
