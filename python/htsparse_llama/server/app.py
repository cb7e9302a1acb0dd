"""`serve` as a library call: load the model (or the demo VLM), build the
engine with the server's defaults and limits, listen, and serve until Ctrl-C
or SIGTERM. cli/serve.py turns the command's flags into a ServerConfig.

    serve(ServerConfig(model="model.gguf", mmproj="mmproj.gguf", port=8080))
"""

from __future__ import annotations

import os
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional

from ..errors import InvalidArgumentError
from ..fetch import resolve_model_path
from ..fetch.demo_model import demo_model_paths
from ..model import Model
from ..video.cache import EmbeddingCache
from ..vision import Vision
from .engine import Defaults, Engine, RequestQueue
from .http_handler import Server
from .types import Limits

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


@dataclass
class ServerConfig:
    """Everything `serve` is started with (its flags)."""

    model: Optional[str] = None  # a GGUF path or packaged:NAME; None: the demo VLM
    mmproj: Optional[str] = None
    alias: Optional[str] = None
    ctx: int = 4096
    threads: Optional[int] = None
    device: str = "auto"
    verbose: bool = False
    host: str = "127.0.0.1"
    port: int = 8080
    api_key: Optional[str] = None
    quiet: bool = False
    limits: Limits = field(default_factory=Limits)
    max_queue: int = 16
    queue_timeout: Optional[float] = None
    cache_dir: Optional[str] = None
    sampling: Dict[str, Any] = field(default_factory=dict)  # Sampling's options
    sparse: Dict[str, Any] = field(default_factory=dict)  # SparseConfig's options and `dense`


def check(cfg: ServerConfig) -> None:
    """Bad settings fail before the model loads."""
    if not 0 <= cfg.port <= 65535:
        raise InvalidArgumentError(f"--port must be in [0, 65535], got {cfg.port}")
    limits = cfg.limits
    for name, value in (
        ("max-body-mb", limits.max_body_bytes),
        ("max-media-mb", limits.max_media_bytes),
        ("max-visual-tokens", limits.max_visual_tokens),
        ("max-queue", cfg.max_queue),
    ):
        if value <= 0:
            raise InvalidArgumentError(f"--{name} must be positive, got {value}")
    for d in limits.media_dirs:
        if not os.path.isdir(d):
            raise InvalidArgumentError(f"--media-dir {d!r} is not a folder")


def load(cfg: ServerConfig):
    """(model, vision or None, model id)."""
    if cfg.model is None:
        model_path, mmproj_path = demo_model_paths("serving")
    else:
        model_path, mmproj_path = resolve_model_path(cfg.model), cfg.mmproj
    model = Model(model_path, n_ctx=cfg.ctx, n_threads=cfg.threads, device=cfg.device, verbose=cfg.verbose)
    vision = Vision(model, mmproj_path, n_threads=cfg.threads) if mmproj_path else None
    name = cfg.alias or Path(model_path).name.removesuffix(".gguf")
    return model, vision, name


def build_engine(cfg: ServerConfig) -> Engine:
    model, vision, name = load(cfg)
    defaults = Defaults(dict(cfg.sampling), {k: v for k, v in cfg.sparse.items() if v is not None}, cfg.ctx)
    limits = Limits(**{**vars(cfg.limits), "media_dirs": [os.path.realpath(d) for d in cfg.limits.media_dirs]})
    return Engine(
        model,
        vision,
        name,
        defaults,
        limits,
        EmbeddingCache(cfg.cache_dir),
        RequestQueue(cfg.max_queue, cfg.queue_timeout),
    )


def _interrupt(signum, frame) -> None:
    """SIGTERM (a service manager, `kill`) stops the server as Ctrl-C does."""
    raise KeyboardInterrupt


def serve(cfg: ServerConfig) -> int:
    """Serves until Ctrl-C or SIGTERM; prints the listening line on stdout."""
    check(cfg)
    engine = build_engine(cfg)
    try:
        server = Server((cfg.host, cfg.port), engine, api_key=cfg.api_key, log_requests=not cfg.quiet)
    except OSError as exc:
        raise InvalidArgumentError(f"cannot listen on {cfg.host}:{cfg.port}: {exc.strerror or exc}") from None
    host, port = server.server_address[:2]
    if cfg.host not in LOCAL_HOSTS and not cfg.api_key:
        print(
            f"warning: listening on {cfg.host} without --api-key: anyone who can reach this machine can use the model",
            file=sys.stderr,
        )
    model = engine.model
    media = "text, images and video" if engine.vision is not None else "text only"
    shown = f"[{host}]" if ":" in host else host
    print(
        f"serving {engine.model_id} ({model.arch} on {model.device}; {media}) at http://{shown}:{port}/v1 "
        f"- Ctrl-C stops",
        flush=True,
    )
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("stopped", file=sys.stderr)
    finally:
        server.server_close()
    return 0
