"""Load the official model code from the PyPI packages ``segment-anything`` (Meta's SAM) and
``medim`` (SAM-Med3D's own single-file copy), without their import-time extras (torchvision,
Hugging Face download helpers), to use as test oracles at full size."""
from __future__ import annotations

import importlib
import importlib.util
import sys
import types

import pytest


def _stub_package(name: str, path: str) -> None:
    if name not in sys.modules:
        mod = types.ModuleType(name)
        mod.__path__ = [path]
        sys.modules[name] = mod


def _package_dir(name: str) -> str:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        pytest.fail(f"reference package {name} is not installed (make installs requirements-ref.txt)")
    return list(spec.submodule_search_locations)[0]


def segment_anything_modeling():
    root = _package_dir("segment_anything")
    _stub_package("segment_anything", root)  # skip __init__ (it imports torchvision)
    return importlib.import_module("segment_anything.modeling")


def medim_sam_med3d():
    root = _package_dir("medim")
    _stub_package("medim", root)
    _stub_package("medim.models", root + "/models")
    registry = types.ModuleType("medim.models._registry")
    registry.register_model = lambda name: (lambda fn: fn)
    pretrain = types.ModuleType("medim.models._pretrain")
    pretrain.load_pretrained_weights = lambda *a, **k: None
    sys.modules.setdefault("medim.models._registry", registry)
    sys.modules.setdefault("medim.models._pretrain", pretrain)
    return importlib.import_module("medim.models.sam_med3d")
