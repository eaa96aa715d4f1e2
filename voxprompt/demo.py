"""``make demo``: segment a real CT from one click with the default model.

Until the default model is trained and shipped (see the training issue), this only checks the
installation and says what is needed."""
from __future__ import annotations

import sys

import voxprompt


def main() -> int:
    sys.stdout.write(f"voxprompt {voxprompt.__version__}: models {', '.join(voxprompt.list_models())}\n")
    sys.stdout.write(
        "The demo needs a checkpoint: no default model is shipped yet. Load an official one with\n"
        "  voxprompt.load_model('sam-med3d', 'sam_med3d_turbo.pth')\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
