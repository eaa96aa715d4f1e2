"""Model architectures (dimension-generic SAM parts, SAM-Med2D adapter, SAM-UNet) and the zoo."""
from .fast import reference_enabled, reference_mode

__all__ = ["reference_mode", "reference_enabled"]
