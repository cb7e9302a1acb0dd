"""`serve`: one model behind the OpenAI chat-completions API.

    python -m htsparse_llama serve -m model.gguf --mmproj mmproj.gguf --media-dir ~/videos
    # then: OpenAI(base_url="http://127.0.0.1:8080/v1", api_key="-").chat.completions.create(...)

Without -m, the built-in demo VLM (random weights, meaningless answers) is
served, as `chat --video` does. Flags set the defaults and limits; requests
override the defaults field by field (server/request.py lists the fields).
"""

from __future__ import annotations

import argparse
import os

from ..server import ServerConfig, serve
from ..server.types import Limits
from .args import add_model_args, add_sampling_args, add_sparse_args, sampling_kwargs, sparse_values


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
    g.add_argument(
        "--api-key",
        default=os.environ.get("HTSPARSE_API_KEY"),
        help="require 'Authorization: Bearer KEY' on /v1 routes (default: $HTSPARSE_API_KEY; none)",
    )
    g.add_argument("--quiet", action="store_true", help="no line per request on stderr")
    g = p.add_argument_group("limits")
    g.add_argument(
        "--media-dir",
        metavar="DIR",
        action="append",
        default=[],
        help="a folder whose files requests may name by path (repeatable; default: none, so only data URLs are taken)",
    )
    g.add_argument("--max-body-mb", type=float, default=64.0, help="largest request body, MiB (default: 64)")
    g.add_argument(
        "--max-media-mb", type=float, default=48.0, help="largest image or video in a request, MiB (default: 48)"
    )
    g.add_argument(
        "--max-visual-tokens",
        type=int,
        default=8192,
        help="visual-token budget of a request; a video's frames are chosen to fit it, and a request "
        "may ask for less (default: 8192)",
    )
    g.add_argument("--max-queue", type=int, default=16, help="requests that may wait for the model (default: 16)")
    g.add_argument(
        "--queue-timeout",
        type=float,
        default=None,
        help="seconds a request may wait for the model before a 503 (default: no limit)",
    )
    g.add_argument("--cache-dir", default=None, help="keep visual embeddings here between runs")
    add_sampling_args(p)
    add_sparse_args(p, "HT-Sparse defaults (requests may override them)", exclude=("reroute",))
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    limits = Limits(
        max_body_bytes=int(args.max_body_mb * 2**20),
        max_media_bytes=int(args.max_media_mb * 2**20),
        max_visual_tokens=args.max_visual_tokens,
        media_dirs=list(args.media_dir),
    )
    return serve(
        ServerConfig(
            model=args.model,
            mmproj=args.mmproj,
            alias=args.alias,
            ctx=args.ctx,
            threads=args.threads,
            device=args.device,
            verbose=args.verbose,
            host=args.host,
            port=args.port,
            api_key=args.api_key,
            quiet=args.quiet,
            limits=limits,
            max_queue=args.max_queue,
            queue_timeout=args.queue_timeout,
            cache_dir=args.cache_dir,
            sampling=sampling_kwargs(args),
            sparse=sparse_values(args, exclude=("reroute",)),
        )
    )
