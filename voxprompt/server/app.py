"""``create_app(settings) -> FastAPI``: one shared stateless model, one Session per lease.

Routers: nnInteractive v2 (:mod:`.protocols.nninteractive`), MONAI Label
(:mod:`.protocols.monailabel`) and the browser viewer at ``/`` (:mod:`.web`), all over the same lease table
(:mod:`.leases`) and model (:class:`.sessions.ModelHost`). A background reaper drops expired
leases while the app runs (uvicorn's lifespan).
"""
from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import torch
from fastapi import Depends, FastAPI
from fastapi.responses import HTMLResponse, JSONResponse

from ..errors import UsageError
from ..runtime import single_thread_blas
from ..version import __version__
from .context import ServerContext
from .errors import install_error_handlers
from .leases import LeaseManager
from .model_host import ModelHost
from .security import (
    BodyLimitMiddleware,
    HostCheckMiddleware,
    OriginCheckMiddleware,
    RequestGuardMiddleware,
    install_access_log_filter,
)
from .settings import ServerSettings

log = logging.getLogger(__name__)


def security_warnings(settings: ServerSettings) -> list[str]:
    """Warnings for risky settings (a reachable host without an API key)."""
    out = []
    if not settings.loopback and settings.api_key is None:
        out.append(f"binding {settings.host} (not loopback) WITHOUT an API key: anyone who can reach this "
                   "port can upload images and run the model; use --api-key-file or --host 127.0.0.1")
    return out


def load_server_model(settings: ServerSettings) -> torch.nn.Module:
    """The zoo model with its checkpoint (or shipped weights); warns when it is untrained."""
    from ..models.loading import load_model, shipped_weights

    model = load_model(settings.model, settings.checkpoint, device=settings.device)
    model.set_precision(settings.precision)
    if settings.checkpoint is None and shipped_weights(settings.model) is None:
        log.warning("model %s has no shipped weights and no --checkpoint was given: it is randomly "
                    "initialised and its masks are meaningless", settings.model)
    return model


def create_app(settings: ServerSettings, model: torch.nn.Module | None = None) -> FastAPI:
    """Build the server. ``model`` (already loaded, e.g. a tiny one in tests) skips loading."""
    settings.validate()
    if model is None:
        model = load_server_model(settings)
    if model.spatial_dims != 3:
        raise UsageError(f"the server needs a 3D model; {settings.model} is {model.spatial_dims}D")
    model.eval()
    for msg in security_warnings(settings):
        log.warning(msg)
    install_access_log_filter()  # session tokens in URLs stay out of the access log
    single_thread_blas()  # the leases' refinements run in parallel threads

    host = ModelHost(model, settings.model, autozoom_default=settings.autozoom, refine=settings.refine,
                     clean=settings.clean)
    leases = LeaseManager(host.new_session, settings.max_sessions, settings.retry_after_s,
                          grace_s=settings.restore_grace_s)
    ctx = ServerContext(settings=settings, host=host, leases=leases)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        leases.start_reaper(settings.reaper_interval_s)
        try:
            yield
        finally:
            leases.stop_reaper()
            leases.close_all()

    keyed = settings.api_key is not None
    app = FastAPI(title="voxprompt server", version=__version__, lifespan=lifespan,
                  **({"docs_url": None, "redoc_url": None, "openapi_url": None} if keyed else {}))
    app.state.ctx = ctx
    install_error_handlers(app)
    if keyed:  # the API description only for clients holding the key
        from fastapi.openapi.docs import get_swagger_ui_html

        @app.get("/openapi.json", include_in_schema=False, dependencies=[Depends(ctx.auth)])
        def openapi() -> JSONResponse:
            return JSONResponse(app.openapi())

        @app.get("/docs", include_in_schema=False, dependencies=[Depends(ctx.auth)])
        def docs() -> HTMLResponse:
            return get_swagger_ui_html(openapi_url="/openapi.json", title="voxprompt server")

    from . import lease_routes
    from .protocols import monailabel, nninteractive

    app.include_router(lease_routes.make_router(ctx))
    app.include_router(nninteractive.make_router(ctx))
    app.include_router(monailabel.make_router(ctx))
    if settings.web:
        from . import viewer

        viewer.install(app, ctx)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_upload_bytes)
    app.add_middleware(RequestGuardMiddleware, body_timeout_s=settings.body_timeout_s)
    if settings.web:
        app.add_middleware(OriginCheckMiddleware)  # the viewer's API: its own page only (no cross-site forms)
    if settings.check_host:
        extra = () if settings.loopback or settings.host in ("0.0.0.0", "::") else (settings.host,)
        app.add_middleware(HostCheckMiddleware, allowed=frozenset(settings.allowed_hosts + extra))
    return app
