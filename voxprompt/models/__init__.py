"""Model architectures (dimension-generic SAM parts, SAM-Med2D adapter, SAM-UNet) and the zoo.

Submodules load on first use (``voxprompt.models.config`` imports no torch)."""
from typing import TYPE_CHECKING

from .._lazy import lazy_attributes

if TYPE_CHECKING:
    from .fast import reference_enabled, reference_mode

__all__ = ["reference_mode", "reference_enabled"]

__getattr__, __dir__ = lazy_attributes(__name__, {"reference_mode": ".fast", "reference_enabled": ".fast"})
