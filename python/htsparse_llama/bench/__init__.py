"""`python -m htsparse_llama bench`: our runtime against llama.cpp itself on
the same GGUF, threads and inputs, in one process run: the dense paths
(dense), HT-Sparse on long-context retrieval (sparse, with tasks/text.py),
and one question about a video through libmtmd (video); llama_cpp holds the
reference engines, report the machine facts and the JSON output. Speed and
memory claims are checked here, never by timed unit tests."""

from __future__ import annotations

import argparse

from ..errors import InvalidArgumentError
from ..fetch import resolve_model_path
from . import dense, memory, sparse, video


def run(args: argparse.Namespace) -> int:
    """The benchmark the bench command's options ask for (cli/bench.py)."""
    if args.reps is None:
        args.reps = 1 if args.video else 3
    if args.video:
        return video.run(args)
    if not args.model:
        raise InvalidArgumentError("bench needs -m MODEL (or --video CLIP, which runs the demo model without -m)")
    path = resolve_model_path(args.model)
    if args.memory:
        return memory.run(args, path)
    return dense.run(args, path) if args.dense_only else sparse.run(args, path)
