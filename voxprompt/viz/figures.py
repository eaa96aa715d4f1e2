"""Matplotlib plumbing shared by the overlays and the evaluation report."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the non-interactive Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def draw_mask(ax: Any, mask: np.ndarray, **kwargs: Any) -> None:
    """Draw a bool mask on ``ax`` in translucent colour (``kwargs`` go to ``imshow``: aspect, origin)."""
    ax.imshow(np.ma.masked_where(~mask, mask.astype(float)), cmap="autumn", alpha=0.45, vmin=0, vmax=1,
              interpolation="nearest", **kwargs)


def save_figure(fig: Any, path: Path, dpi: int) -> Path:
    """Write ``fig`` as PNG to a temporary name beside ``path``, rename it into place, close it."""
    import matplotlib.pyplot as plt

    tmp = path.with_name(f".{path.name}.tmp.png")
    try:
        fig.savefig(tmp, dpi=dpi)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
    return path


__all__ = ["draw_mask", "pyplot", "save_figure"]
