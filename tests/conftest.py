"""Shared test fixtures: the golden files from the official code live in ../shared/golden."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("VOXPROMPT_SHARED", ROOT.parent / "shared"))
GOLDEN = SHARED / "golden"
REFERENCE = SHARED / "reference"

torch.set_num_threads(min(2, os.cpu_count() or 1))


def golden_path(name: str) -> Path:
    path = GOLDEN / name
    if not path.exists():
        pytest.fail(f"golden fixture {path} is missing (set VOXPROMPT_SHARED to the shared/ folder)")
    return path


def load_golden(name: str) -> dict:
    return torch.load(golden_path(name), weights_only=True)
