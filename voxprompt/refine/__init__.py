"""Boundary refinement: a model's mask re-decided at the image's resolution by a random walker seeded by
the model (:mod:`.boundary`), on a linear system built on the undecided band only (:mod:`.walker`).

The random-walker primitives are shared with the classical baseline (:mod:`voxprompt.eval.baseline`).
"""
from .boundary import (
                       RefineConfig,
                       band_seeds,
                       draw_seed_balls,
                       grid_factors,
                       normalise_window,
                       refine_mask,
                       refine_reach,
                       resolve_refine,
                       solve_random_walker,
)
from .walker import RefineCancelled

__all__ = ["RefineConfig", "refine_mask", "refine_reach", "resolve_refine", "band_seeds", "normalise_window",
           "draw_seed_balls",
           "solve_random_walker", "grid_factors", "RefineCancelled"]
