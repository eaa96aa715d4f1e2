"""Start-up: ``import voxprompt``, ``import voxprompt.errors`` and ``voxprompt --help`` load no heavy stack.

Each check runs in a fresh interpreter (this test process has torch loaded already). Timings are in
benchmarks/startup.py, not here.
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

# Neither the models (torch) nor the image / science / server stacks may load before a command runs.
HEAVY = ("torch", "SimpleITK", "scipy", "skimage", "matplotlib", "fastapi", "uvicorn",
         "voxprompt.models.loading", "voxprompt.models.sam", "voxprompt.models.zoo", "voxprompt.session")


def _loaded_after(code: str) -> list[str]:
    """The HEAVY modules in sys.modules after running ``code`` in a fresh interpreter."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("code", [
    "import voxprompt.errors",
    "import voxprompt",
    "from voxprompt import UsageError, VoxpromptError, __version__, __all__",
    "import voxprompt.cli; voxprompt.cli.build_parser()",
])
def test_imports_stay_light(code):
    assert _loaded_after(code) == []


@pytest.mark.parametrize("argv", [["--help"], ["segment", "--help"], ["serve", "--help"], ["eval", "--help"],
                                  ["train", "--help"], ["data", "--help"], ["export-onnx", "--help"]])
def test_help_loads_no_heavy_module(argv):
    """``python -m voxprompt ... --help`` end to end: the interpreter's own import log lists no heavy module."""
    r = subprocess.run([sys.executable, "-X", "importtime", "-m", "voxprompt", *argv],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "usage: voxprompt" in r.stdout
    imported = {line.rsplit("|", 1)[1].strip() for line in r.stderr.splitlines() if line.startswith("import time:")}
    assert "voxprompt.cli" in imported  # the log is read right
    heavy = sorted(m for m in imported if m in HEAVY or m.split(".")[0] in HEAVY)
    assert heavy == []


def test_public_names_resolve_lazily():
    code = (
        "import sys, voxprompt\n"
        "before = 'torch' in sys.modules\n"
        "names = dir(voxprompt)\n"
        "from voxprompt import SamConfig, SamUNetConfig, build_model, convert_checkpoint, load_model\n"
        "from voxprompt.models.loading import load_model as direct\n"
        "import json\n"
        "print(json.dumps({'before': before, 'after': 'torch' in sys.modules, 'same': load_model is direct,\n"
        "                  'listed': sorted(set(voxprompt.__all__) - set(names)),\n"
        "                  'models': voxprompt.list_models(), 'config': SamConfig.__name__,\n"
        "                  'callable': callable(voxprompt.build_model) and callable(voxprompt.convert_checkpoint)}))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["before"] is False and out["after"] is True  # attribute access imported the models
    assert out["same"] and out["callable"] and out["config"] == "SamConfig"
    assert out["listed"] == []  # dir(voxprompt) lists every public name before any is loaded
    assert "voxprompt-med3d-small" in out["models"]


def test_attribute_errors_and_submodules():
    import voxprompt
    import voxprompt.eval
    import voxprompt.io

    with pytest.raises(AttributeError, match="no_such_thing"):
        voxprompt.no_such_thing  # noqa: B018
    with pytest.raises(AttributeError):
        voxprompt.io.no_such_reader  # noqa: B018
    assert not hasattr(voxprompt, "__wrapped__")
    assert voxprompt.load_model is voxprompt.models.loading.load_model
    assert voxprompt.ZOO is voxprompt.models.zoo.ZOO
    assert voxprompt.io.read_image is voxprompt.io.read.read_image
    assert callable(voxprompt.eval.dice) and "dice" in dir(voxprompt.eval)
    from voxprompt.data import split_for
    from voxprompt.train import TrainConfig, train

    assert callable(split_for) and callable(train) and TrainConfig.__name__ == "TrainConfig"
    from voxprompt.models.config import DEFAULT_MODEL
    from voxprompt.models.loading import DEFAULT_MODEL as from_loading

    assert DEFAULT_MODEL == from_loading == "voxprompt-med3d-small"
