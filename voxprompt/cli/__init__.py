"""Command lines: ``voxprompt`` and its subcommands (:mod:`.entry`), ``segment`` for 3D (:mod:`.segment`)
and 2D models (:mod:`.segment2d`), ``export-onnx`` (:mod:`.onnx`), the demo (:mod:`.demo`), and the
helpers they share (:mod:`.common`). The ``data``, ``eval``, ``train`` and ``serve`` subcommands live
with their packages (``voxprompt.<package>.cli``).

Light at import (no torch): ``voxprompt --help`` must stay fast.
"""
from .entry import build_parser, main

__all__ = ["main", "build_parser"]
