"""voxprompt server: nnInteractive v2 and MONAI Label protocols plus a NiiVue browser viewer.

    from voxprompt.server import ServerSettings, create_app
    app = create_app(ServerSettings(port=1527))      # uvicorn.run(app, host=..., port=...)

FastAPI is imported only when :func:`create_app` is first used, so ``voxprompt --help`` stays fast.
"""
from __future__ import annotations

from typing import Any

from .settings import ServerSettings

__all__ = ["ServerSettings", "create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from .app import create_app

        return create_app
    raise AttributeError(name)
