"""`serve`: one model behind the OpenAI chat-completions API.

    python -m htsparse_llama serve -m model.gguf --mmproj mmproj.gguf --media-dir ~/videos
    # then: OpenAI(base_url="http://127.0.0.1:8080/v1", api_key="-").chat.completions.create(...)

Without -m, the built-in demo VLM (random weights, meaningless answers) is
served, as `chat --video` does. Flags set the defaults and limits; requests
override the defaults field by field (server_request.py lists the fields).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from .cli import add_model_args, add_sampling_args, sampling_kwargs
from .errors import InvalidArgumentError

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def register(sub) -> None:
    p = sub.add_parser(
        "serve",
        help="serve a model over the OpenAI chat-completions API",
        description="Serve one GGUF model (and its mmproj) over HTTP, speaking the OpenAI chat-completions API: "
                    "text, image_url and video_url parts (data URLs, or file paths under --media-dir), streamed "
                    "or not. Requests run one at a time; the others wait. Without -m, a small demo VLM with "
                    "random weights is served.",
    )
    add_model_args(p, model_required=False)
    p.add_argument("--mmproj", metavar="FILE", help="the vision tower GGUF made with the model (for images and video)")
    p.add_argument("--alias", default=None, help="the model id clients use (default: the GGUF file name without .gguf)")
    g = p.add_argument_group("network")
    g.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    g.add_argument("--port", type=int, default=8080, help="port (default: 8080; 0 picks a free one)")
    g.add_argument("--api-key", default=os.environ.get("HTSPARSE_API_KEY"),
                   help="require 'Authorization: Bearer KEY' on /v1 routes (default: $HTSPARSE_API_KEY; none)")
    g.add_argument("--quiet", action="store_true", help="no line per request on stderr")
    g = p.add_argument_group("limits")
    g.add_argument("--media-dir", metavar="DIR", action="append", default=[],
                   help="a folder whose files requests may name by path (repeatable; default: none, so only data "
                        "URLs are taken)")
    g.add_argument("--max-body-mb", type=float, default=64.0, help="largest request body, MiB (default: 64)")
    g.add_argument("--max-media-mb", type=float, default=48.0,
                   help="largest image or video in a request, MiB (default: 48)")
    g.add_argument("--max-visual-tokens", type=int, default=8192,
                   help="visual-token budget of a request; a video's frames are chosen to fit it, and a request "
                        "may ask for less (default: 8192)")
    g.add_argument("--max-queue", type=int, default=16, help="requests that may wait for the model (default: 16)")
    g.add_argument("--queue-timeout", type=float, default=None,
                   help="seconds a request may wait for the model before a 503 (default: no limit)")
    g.add_argument("--cache-dir", default=None, help="keep visual embeddings here between runs")
    add_sampling_args(p)
    g = p.add_argument_group("HT-Sparse defaults (requests may override them)")
    g.add_argument("--dense", action="store_true", help="turn HT-Sparse off by default")
    g.add_argument("--keep-ratio", type=float, default=None, help="share of the visual tokens kept, in (0, 1]")
    g.add_argument("--keep-mass", type=float, default=None, help="keep the fewest frames holding this share of "
                                                                 "the attention, in (0, 1]")
    g.add_argument("--full-heads", type=float, default=None, metavar="RATIO",
                   help="share of KV heads that keep every visual token, in [0, 1]")
    g.add_argument("--select-layer", type=int, default=None, help="layer where tokens are selected")
    g.add_argument("--prune-layer", type=int, default=None, help="layer from which unselected tokens are not computed")
    p.set_defaults(run=run)


def _check(args: argparse.Namespace) -> None:
    """Bad flags fail before the model loads."""
    if not 0 <= args.port <= 65535:
        raise InvalidArgumentError(f"--port must be in [0, 65535], got {args.port}")
    for name in ("max_body_mb", "max_media_mb", "max_visual_tokens", "max_queue"):
        if getattr(args, name) <= 0:
            raise InvalidArgumentError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    for d in args.media_dir:
        if not os.path.isdir(d):
            raise InvalidArgumentError(f"--media-dir {d!r} is not a folder")


def _load(args: argparse.Namespace):
    """(model, vision or None, model id)."""
    from .cli import resolve_model_path
    from .model import Model
    from .vision import Vision

    if args.model is None:
        from .default_model import demo_model_paths

        model_path, mmproj_path = demo_model_paths("serving")
    else:
        model_path, mmproj_path = resolve_model_path(args.model), args.mmproj
    model = Model(model_path, n_ctx=args.ctx, n_threads=args.threads, device=args.device, verbose=args.verbose)
    vision = Vision(model, mmproj_path, n_threads=args.threads) if mmproj_path else None
    name = args.alias or Path(model_path).name.removesuffix(".gguf")
    return model, vision, name


def _engine(args: argparse.Namespace):
    from .embedding_cache import EmbeddingCache
    from .server_engine import Defaults, Engine, RequestQueue
    from .server_request import Limits

    model, vision, name = _load(args)
    sparse = dict(dense=args.dense, keep_ratio=args.keep_ratio, keep_mass=args.keep_mass,
                  full_head_ratio=args.full_heads, select_layer=args.select_layer, prune_layer=args.prune_layer)
    defaults = Defaults(sampling_kwargs(args), {k: v for k, v in sparse.items() if v is not None}, args.ctx)
    limits = Limits(max_body_bytes=int(args.max_body_mb * 2**20), max_media_bytes=int(args.max_media_mb * 2**20),
                    max_visual_tokens=args.max_visual_tokens,
                    media_dirs=[os.path.realpath(d) for d in args.media_dir])
    engine = Engine(model, vision, name, defaults, limits, EmbeddingCache(args.cache_dir),
                    RequestQueue(args.max_queue, args.queue_timeout))
    engine._sparse_config({})  # the default HT-Sparse flags fit this model, or fail now
    return engine


def _interrupt(signum, frame) -> None:
    """SIGTERM (a service manager, `kill`) stops the server as Ctrl-C does."""
    raise KeyboardInterrupt


def run(args: argparse.Namespace) -> int:
    from .server_http import Server

    _check(args)
    engine = _engine(args)
    try:
        server = Server((args.host, args.port), engine, api_key=args.api_key, log_requests=not args.quiet)
    except OSError as exc:
        raise InvalidArgumentError(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}") from None
    host, port = server.server_address[:2]
    if args.host not in LOCAL_HOSTS and not args.api_key:
        print(f"warning: listening on {args.host} without --api-key: anyone who can reach this machine can use "
              f"the model", file=sys.stderr)
    model = engine.model
    media = "text, images and video" if engine.vision is not None else "text only"
    shown = f"[{host}]" if ":" in host else host
    print(f"serving {engine.model_id} ({model.arch} on {model.device}; {media}) at http://{shown}:{port}/v1 "
          f"- Ctrl-C stops", flush=True)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("stopped", file=sys.stderr)
    finally:
        server.server_close()
    return 0
