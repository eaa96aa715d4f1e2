"""Size-weighted target draws (``DataSource.size_power``)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from voxprompt.errors import UsageError
from voxprompt.train import samples
from voxprompt.train.config import DataSource
from voxprompt.train.samples import TargetPool, draw_probabilities


@dataclass
class _T:
    case: str
    name: str
    label: int
    voxels: int


TARGETS = [_T("a", "small", 1, 100), _T("a", "large", 2, 10_000), _T("b", "mid", 1, 2_500)]


def _pool(monkeypatch, power: float, targets=TARGETS) -> TargetPool:
    monkeypatch.setattr(samples, "source_targets", lambda source: list(targets))
    return TargetPool(DataSource(path="unused", size_power=power))


def test_probabilities_follow_the_power_of_the_size():
    assert draw_probabilities(TARGETS, 0.0) is None
    p = draw_probabilities(TARGETS, 0.5)
    np.testing.assert_allclose(p, np.array([10, 100, 50]) / 160)
    np.testing.assert_allclose(draw_probabilities(TARGETS, 1.0), np.array([100, 10_000, 2_500]) / 12_600)


def test_unknown_sizes_are_refused():
    with pytest.raises(UsageError, match="size_power needs every target's size; unknown for a:small"):
        draw_probabilities([_T("a", "small", 1, 0)] + TARGETS[1:], 0.5)


def test_power_zero_draws_what_a_uniform_pool_drew(monkeypatch):
    pool = _pool(monkeypatch, 0.0)
    rng, ref = np.random.default_rng(7), np.random.default_rng(7)
    assert [pool._draw(rng) for _ in range(50)] == [int(ref.integers(3)) for _ in range(50)]


def test_large_targets_are_drawn_in_proportion(monkeypatch):
    pool = _pool(monkeypatch, 0.5)
    rng = np.random.default_rng(0)
    n = 8000
    counts = np.bincount([pool._draw(rng) for _ in range(n)], minlength=3)
    expected = n * np.array([10, 100, 50]) / 160
    sd = np.sqrt(n * (expected / n) * (1 - expected / n))
    assert np.all(np.abs(counts - expected) < 5 * sd), (counts, expected)


@pytest.mark.parametrize("power", [-0.5, 2.5, float("nan")])
def test_config_refuses_bad_powers(power):
    with pytest.raises(UsageError, match="size_power must be in"):
        DataSource(path="x", size_power=power)
