"""`serve` as a library call: load the model (or the demo VLM), build the
engine with the server's defaults and limits, listen, and serve until Ctrl-C
or SIGTERM. cli/serve.py turns the command's flags into a ServerConfig.

    serve(ServerConfig(model="model.gguf", mmproj="mmproj.gguf", port=8080))

Stopping: Ctrl-C (SIGINT) and SIGTERM stop the server even when SIGINT came
ignored from the parent (a job started with `&` by a script ignores it). The
server stops listening, refuses what waits, ends the running answer between
two tokens, closes the open connections, and exits 0 once nothing runs in the
runtime, within STOP_GRACE_S seconds. Interpreter shutdown must not start
while a handler thread is inside a runtime call: that thread, coming back
into Python, is ended from within pybind11's GIL guard and the process
aborts (or races with the teardown of the model). When a runtime call does
not end in time (a long prefill cannot be interrupted from Python), serve
exits with os._exit(0) instead of returning.
"""

from __future__ import annotations

import os
import signal
import sys
import time
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
STOP_GRACE_S = 10.0  # how long a stop waits for the running runtime call (one token, or a prefill) to end
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


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


def _catch_stop_signals() -> Dict[int, Any]:
    """Ctrl-C and SIGTERM (a service manager, `kill`) raise KeyboardInterrupt
    in the main thread, once: a second one during the stop is ignored (the
    stop is bounded). SIGINT is caught even when it came ignored from the
    parent process. Returns the handlers to restore."""
    raised = []

    def interrupt(signum, frame) -> None:
        if not raised:
            raised.append(signum)
            raise KeyboardInterrupt

    return {sig: signal.signal(sig, interrupt) for sig in STOP_SIGNALS}


def _stop(server: Server, engine: Engine, grace: float) -> bool:
    """Stops listening, the engine and the connections; True once no request
    is in the runtime any more, False if one still is after `grace` s."""
    deadline = time.monotonic() + grace
    server.server_close()  # no new connections
    engine.stop()  # waiting and new requests get a 503; the running answer ends at its next token
    server.close_connections()  # idle keep-alive connections end; a running request still writes its end
    idle = engine.queue.wait_idle(grace)
    if idle:  # the answers' last bytes (the 503s) reach their clients; at most a second more
        server.wait_connections(min(1.0, max(0.0, deadline - time.monotonic())))
    return idle


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
    previous = _catch_stop_signals()  # before the listening line: a client may signal as soon as it reads it
    try:
        try:
            print(
                f"serving {engine.model_id} ({model.arch} on {model.device}; {media}) at http://{shown}:{port}/v1 "
                f"- Ctrl-C stops",
                flush=True,
            )
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            idle = _stop(server, engine, STOP_GRACE_S)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if not idle:
        print(
            f"stopped (a request was still in the runtime after {STOP_GRACE_S:g} s; not waiting for it)",
            file=sys.stderr,
        )
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)  # interpreter shutdown under a thread in a runtime call would abort (see the top)
    print("stopped", file=sys.stderr)
    return 0
