"""Every recipe shipped under configs/ is a valid training configuration."""
from __future__ import annotations

from pathlib import Path

import pytest

from voxprompt.train.config import load_config

CONFIGS = sorted((Path(__file__).resolve().parent.parent / "configs").glob("*.yaml"))


def test_configs_exist():
    assert len(CONFIGS) >= 7


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_config_loads(path: Path):
    cfg = load_config(path)
    assert cfg.steps > 0 and cfg.batch_size > 0
    for source in cfg.data:
        assert source.weight > 0
