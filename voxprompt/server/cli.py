"""``voxprompt serve``: the nnInteractive v2 / MONAI Label / browser-viewer server (FastAPI + uvicorn)."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ..errors import UsageError
from ..models.config import DEFAULT_MODEL
from .settings import DEFAULT_PORT, ServerSettings

log = logging.getLogger(__name__)


def settings_from_args(args: argparse.Namespace) -> ServerSettings:
    """Settings from parsed arguments (reads the API key file); raises UsageError on bad values."""
    from .security import read_api_key_file

    return ServerSettings(
        host=args.host, port=args.port, model=args.model, checkpoint=args.checkpoint, device=args.device,
        precision=args.precision, max_sessions=args.max_sessions,
        api_key=read_api_key_file(args.api_key_file) if args.api_key_file else None,
        data_dir=Path(args.data_dir) if args.data_dir else None, max_upload_mb=args.max_upload_mb,
        body_timeout_s=args.body_timeout, header_timeout_s=args.header_timeout,
        allowed_hosts=tuple(args.allowed_host or ()),
        idle_timeout_s=args.idle_timeout, liveness_timeout_s=args.liveness_timeout,
        restore_grace_s=args.restore_grace,
        autozoom=args.autozoom, refine=args.refine, clean=args.clean, web=not args.no_web,
        session_memory_mb=args.session_memory_mb, max_memory_mb=args.max_memory_mb, max_points=args.max_points,
    ).validate()


def cmd_serve(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    try:
        import uvicorn

        from .app import create_app
        from .transport import http_protocol
    except ImportError as exc:
        raise UsageError(f"the server needs its extra packages ({exc.name} is missing): "
                         "pip install 'voxprompt[server]'") from None
    app = create_app(settings)
    scheme_host = f"[{settings.host}]" if ":" in settings.host else settings.host
    log.warning("voxprompt server on http://%s:%d (model %s, %d session(s), API key %s)", scheme_host,
                settings.port, settings.model, settings.max_sessions, "on" if settings.api_key else "off")
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="info" if args.verbose else "warning",
                http=http_protocol(settings.header_timeout_s))
    return 0


def add_subcommands(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser(
        "serve",
        help="run the segmentation server (3D Slicer nnInteractive / MONAI Label, browser viewer)",
        description=(
            "Serve the model over the nnInteractive v2 remote protocol (3D Slicer's nnInteractive extension, "
            "Remote mode), a MONAI Label subset (Slicer's MONAILabel module) and a browser viewer at /. "
            "Binds 127.0.0.1 by default; for another host give --api-key-file (clients send "
            "'Authorization: Bearer <key>')."),
    )
    s.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1, loopback only)")
    s.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    s.add_argument("--model", default=DEFAULT_MODEL, help=f"zoo model, 3D (default {DEFAULT_MODEL})")
    s.add_argument("--checkpoint", help="weights file (default: the weights shipped for --model)")
    s.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    s.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32",
                   help="inference precision (default fp32, exact; bf16: faster clicks on GPUs and, for "
                        "sam-med3d, on CPUs with bf16 instructions)")
    s.add_argument("--max-sessions", type=int, default=4, help="concurrent leases/sessions (default 4)")
    s.add_argument("--max-points", type=int, default=32, metavar="N",
                   help="most points in one MONAI Label infer request (each point is a model step; other "
                        "users' clicks run between the steps; default 32)")
    s.add_argument("--allowed-host", action="append", metavar="NAME",
                   help="also accept requests whose Host header names NAME (repeatable; by default only "
                        "localhost, 127.0.0.1 and [::1] are accepted when bound to loopback)")
    s.add_argument("--api-key-file", metavar="F", help="file holding the API key (one line)")
    s.add_argument("--data-dir", metavar="D", help="folder whose volumes clients may open by relative path")
    s.add_argument("--max-upload-mb", type=float, default=1024.0, help="largest request body (default 1024)")
    s.add_argument("--body-timeout", type=float, default=30.0, metavar="S",
                   help="answer 408 and close the connection when a request body stalls for S seconds "
                        "(default 30)")
    s.add_argument("--header-timeout", type=float, default=30.0, metavar="S",
                   help="answer 408 and close the connection when a request's headers take longer than S "
                        "seconds (default 30)")
    s.add_argument("--idle-timeout", type=float, default=600.0, metavar="S",
                   help="drop a session after S seconds without interaction; heartbeats count, so an open "
                        "client keeps its session (default 600)")
    s.add_argument("--liveness-timeout", type=float, default=60.0, metavar="S",
                   help="drop an nnInteractive/browser lease after S seconds without any request (default 60)")
    s.add_argument("--restore-grace", type=float, default=1800.0, metavar="S",
                   help="keep an expired session's image and masks S seconds more: its client gets 410 saying "
                        "so and POST /restore (header X-Lease-Token) brings it back; 0 turns this off "
                        "(default 1800)")
    s.add_argument("--autozoom", action=argparse.BooleanOptionalAction, default=False,
                   help="auto-zoom on for new sessions (clients may switch it; default off)")
    s.add_argument("--refine", action=argparse.BooleanOptionalAction, default=None,
                   help="boundary refinement at the image's resolution (voxprompt.refine; default: the "
                        "model's stored setting)")
    s.add_argument("--clean", action=argparse.BooleanOptionalAction, default=None,
                   help="keep only the mask's parts connected to a positive click, holes filled; --no-clean "
                        "keeps every component (voxprompt.cleanup; default: the model's stored setting)")
    s.add_argument("--session-memory-mb", type=float, default=2048.0, metavar="MB",
                   help="per-session memory cap: cached embeddings are trimmed above it and a larger "
                        "image is refused with 413 (default 2048)")
    s.add_argument("--max-memory-mb", type=float, default=8192.0, metavar="MB",
                   help="memory cap of all sessions together: least recently used idle sessions are "
                        "evicted above it (their clients get 410; default 8192)")
    s.add_argument("--no-web", action="store_true", help="do not serve the browser viewer")
    s.set_defaults(func=cmd_serve)
