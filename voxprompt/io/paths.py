"""File-name helpers that need no image library (the CLI parser and argument checks use them)."""
from __future__ import annotations

import os
from pathlib import Path


def file_extension(path: str | os.PathLike) -> str:
    """Lower-case extension, treating ``.nii.gz`` as one extension."""
    name = Path(path).name.lower()
    if name.endswith(".nii.gz"):
        return ".nii.gz"
    return Path(name).suffix
