"""The "unseen structures" split of the built dataset (shared docs/data.md, section 2).

Held out ("test"): AAL deep grey matter and the CT soft organs and vessels; everything else is
"train". The rule looks only at the structure name with its side tokens removed, so left and
right variants of a structure always land in the same split (no mirror leak). A source may
override the rule for all its targets (``SourceCase.split``): the external evaluation sources
``robex`` and ``itk_t1`` put their ``brain`` targets in "test" although the rule says "train".
"""
from __future__ import annotations

import re

SIDE_TOKENS = frozenset({"l", "r", "left", "right", "lh", "rh"})

# token sequences: a name is held out when one of them occurs in its (side-free) tokens
HELD_OUT: tuple[tuple[str, ...], ...] = tuple(tuple(k.split()) for k in (
    # AAL deep grey matter
    "hippocampus", "amygdala", "caudate", "putamen", "pallidum", "thalamus",
    # CT soft organs
    "liver", "spleen", "kidney", "kidneys", "stomach", "pancreas", "adrenal", "adrenals", "heart",
    "esophagus", "oesophagus", "trachea", "thyroid", "small bowel", "duodenum", "colon",
    # CT vessels
    "aorta", "vena cava", "svc", "ivc", "portal vein", "pulmonary vein", "carotid", "subclavian",
    "brachiocephalic", "atrial appendage",
))


def name_tokens(name: str) -> tuple[str, ...]:
    """Lower-case tokens of a structure name with side tokens (left/right/L/R) removed."""
    tokens = re.split(r"[^0-9a-z]+", name.lower())
    return tuple(t for t in tokens if t and t not in SIDE_TOKENS)


def split_for(name: str) -> str:
    """``"test"`` for a held-out structure name, else ``"train"``.

    >>> split_for("Hippocampus_L"), split_for("kidney_right"), split_for("rib_left_3")
    ('test', 'test', 'train')
    """
    tokens = name_tokens(name)
    for key in HELD_OUT:
        n = len(key)
        if any(tokens[i:i + n] == key for i in range(len(tokens) - n + 1)):
            return "test"
    return "train"
