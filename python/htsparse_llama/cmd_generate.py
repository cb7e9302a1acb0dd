"""`generate`: one completion of a prompt, streamed to stdout."""

from __future__ import annotations

import argparse
import sys

from .cli import add_model_args, add_sampling_args, load_model, sampling_kwargs


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
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    model = load_model(args)
    session = model.session()
    if args.raw:
        session.add_text(args.prompt)
    else:
        session.add_message("user", args.prompt)
    for piece in session.generate(**sampling_kwargs(args)):
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    return 0
