"""What the commands share: the parser that reports a bad flag in one line,
the model flags, the settings' flags (from their declarations in options.py)
and the --context-file text."""

from __future__ import annotations

import argparse
from typing import Optional

from ..errors import InvalidArgumentError
from ..fetch import PACKAGED_PREFIX, resolve_model_path
from ..model import Model
from ..options import add_flags, from_args
from ..sampling import Sampling
from ..sparse_config import SPARSE_SWITCHES, SparseConfig, sparse_config_from


class Parser(argparse.ArgumentParser):
    """argparse that reports a bad argument in one line (plus the usage hint)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def add_model_args(p: argparse.ArgumentParser, model_required: bool = True) -> None:
    """Options shared by every command that loads a model."""
    p.add_argument(
        "-m",
        "--model",
        required=model_required,
        help=f"GGUF model file, or {PACKAGED_PREFIX}NAME for a small model from the package index",
    )
    p.add_argument("-t", "--threads", type=int, default=None, help="CPU threads (default: all hardware threads)")
    p.add_argument("-c", "--ctx", type=int, default=4096, help="context length in tokens (default: 4096)")
    p.add_argument(
        "--device", default="auto", help="auto | cpu | gpu | a ggml device name such as CUDA0 (default: auto)"
    )
    p.add_argument("--verbose", action="store_true", help="show llama.cpp's own log output")


def add_sampling_args(p: argparse.ArgumentParser) -> None:
    add_flags(p, Sampling)


def sampling_kwargs(args: argparse.Namespace) -> dict:
    """Session.generate's keyword arguments from the sampling flags."""
    return from_args(Sampling, args)


def add_sparse_args(p: argparse.ArgumentParser, title: str, exclude=()) -> None:
    """The HT-Sparse flags (SparseConfig's options and --dense) in a group."""
    g = p.add_argument_group(title)
    add_flags(g, SPARSE_SWITCHES)
    add_flags(g, SparseConfig, exclude=exclude)
    return g


def sparse_values(args: argparse.Namespace, exclude=()) -> dict:
    """The HT-Sparse flags given (SparseConfig's options and `dense`)."""
    return {**from_args(SPARSE_SWITCHES, args), **from_args(SparseConfig, args, exclude=exclude)}


def sparse_config(args: argparse.Namespace) -> Optional[SparseConfig]:
    """The SparseConfig the flags ask for, or None for --dense."""
    return sparse_config_from(sparse_values(args))


def add_context_file_arg(g) -> None:
    g.add_argument("--context-file", metavar="FILE", help="a long text file put before the question as a sparse span")
    g.add_argument("--stats", action="store_true", help="print a line of statistics after each answer (stderr)")


def read_context_file(args: argparse.Namespace) -> "str | None":
    """The --context-file text; a missing or unreadable file is one clear error."""
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


def load_model(args: argparse.Namespace) -> Model:
    return Model(
        resolve_model_path(args.model), n_ctx=args.ctx, n_threads=args.threads, device=args.device, verbose=args.verbose
    )
