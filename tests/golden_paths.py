"""Where the golden fixtures are read from (tests, ``benchmarks/golden_parity.py``,
``benchmarks/fast_parity.py``).

Default: ``tests/golden/`` in this repository (fixtures) and ``tests/golden/reference/`` (full-size
key manifests), byte-identical copies of the project's shared ``golden/`` and ``reference/``
folders (sha256 in ``tests/golden/SHA256SUMS``). ``VOXPROMPT_SHARED=/path/to/shared`` (or a
benchmark's ``--shared``) reads ``<shared>/golden`` and ``<shared>/reference`` instead, e.g. to test
regenerated fixtures before copying them in.
"""
from __future__ import annotations

import os
from pathlib import Path

IN_REPO = Path(__file__).resolve().parent / "golden"


def golden_dirs(shared: os.PathLike | str | None = None) -> tuple[Path, Path]:
    """(golden folder, reference folder): ``shared`` if given, else $VOXPROMPT_SHARED, else in-repo."""
    shared = shared or os.environ.get("VOXPROMPT_SHARED") or None
    if shared:
        return Path(shared) / "golden", Path(shared) / "reference"
    return IN_REPO, IN_REPO / "reference"
