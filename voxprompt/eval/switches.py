"""The 3D session's switches as command-line options: ``voxprompt segment`` and ``voxprompt eval`` share them
(kept here, not in :mod:`voxprompt.session`, so that ``--help`` loads no session code).

An option whose default is None takes the model's stored setting (:class:`~voxprompt.session.Session`).
"""
from __future__ import annotations

import argparse

from ..models.config import FLIP_ENSEMBLES

_SWITCHES = (  # (flag, Session keyword, default, help)
    ("--carry-over", "carry_over", None,
     "a click that opens a new ROI starts from the object's mask and its clicks in that ROI (--no-carry-over: a "
     "zero mask, the official behaviour; default: the model's stored setting, on for the default model, off for "
     "the official ones)"),
    ("--box-negatives", "box_negatives", None,
     "a box prompt also sends negative clicks just outside its faces (default: the model's stored setting, off "
     "for the default model, on for the official ones)"),
    ("--box-search", "box_search", False,
     "when the centre click's mask does not fill a box prompt, its positive click moves to where a grid of "
     "clicks around the centre fills it best, so that a C-shaped object is found (default: off, the centre)"),
    ("--retry-missed", "retry_missed", False,
     "when a result leaves out the positive click just made, decode again without the previous mask, then with "
     "that click alone (default: off)"),
    ("--monotone-clicks", "monotone_clicks", None,
     "once the object has a mask, a positive click only adds to it and a negative click removes only the part "
     "it touches (default: the model's stored setting, on for the default model, off for the official ones)"),
)




def add_session_switches(parser: argparse.ArgumentParser, scope: str = "") -> None:
    """Add ``--[no-]carry-over``, ``--[no-]box-negatives``, ``--[no-]box-search``, ``--[no-]retry-missed``,
    ``--[no-]monotone-clicks`` and ``--flip-ensemble N``; ``scope`` prefixes each help text (e.g. "3D
    sessions: ")."""
    for flag, _, default, text in _SWITCHES:
        parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=scope + text)
    parser.add_argument("--flip-ensemble", type=int, choices=FLIP_ENSEMBLES, default=None, metavar="N",
                        help=scope + "run the model on N mirror images of each ROI (1, 2, 4 or 8) and average "
                        "them (default: the model's stored setting; 1 = off)")


def session_switches(args: argparse.Namespace) -> dict:
    """The Session keywords those options give (None: the model's stored setting)."""
    return {key: getattr(args, key) for _, key, _, _ in _SWITCHES} | {"flip_ensemble": args.flip_ensemble}


__all__ = ["add_session_switches", "session_switches"]
