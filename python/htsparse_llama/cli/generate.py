"""`generate`: one completion of a prompt, streamed to stdout."""

from __future__ import annotations

import argparse
import sys

from .args import (
    add_context_file_arg,
    add_model_args,
    add_sampling_args,
    add_sparse_args,
    load_model,
    read_context_file,
    sampling_kwargs,
    sparse_config,
    user_content,
)

SPARSE_TITLE = "HT-Sparse (a long context the question needs only parts of)"


def register(sub) -> None:
    p = sub.add_parser(
        "generate",
        help="complete one prompt and exit",
        description="Complete one prompt with a GGUF model and stream the text to stdout.",
    )
    add_model_args(p)
    p.add_argument("-p", "--prompt", required=True, help="the prompt")
    p.add_argument("--raw", action="store_true", help="use the prompt as is, without the chat template")
    add_sampling_args(p)
    add_context_file_arg(add_sparse_args(p, SPARSE_TITLE))
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    context = read_context_file(args)
    model = load_model(args)
    session = model.session(sparse=sparse_config(args))
    if args.raw:
        if context is not None:
            session.add_text(context, sparse=True)
        session.add_text(args.prompt)
    else:
        session.add_message("user", user_content(args.prompt, context))
    for piece in session.generate(**sampling_kwargs(args)):
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    if args.stats:
        print(session.stats().line(), file=sys.stderr)
    return 0
