"""`chat`: an interactive multi-turn conversation on the terminal (or a pipe).

Commands typed at the prompt: /reset forgets the conversation, /exit quits.
"""

from __future__ import annotations

import argparse
import sys

from .cli import (add_model_args, add_sampling_args, add_sparse_args, load_model, read_context_file, read_line,
                  sampling_kwargs, sparse_config, user_content)
from .cmd_video import add_video_args, wants_visual
from .errors import ContextOverflowError, InvalidArgumentError

HELP = "commands: /reset (forget the conversation), /exit (quit)"


def register(sub) -> None:
    p = sub.add_parser(
        "chat",
        help="interactive chat",
        description="Chat with a GGUF model, about a video or images if given. Type /reset to forget the "
                    "conversation, /exit or Ctrl-D to quit.",
    )
    add_model_args(p, model_required=False)
    p.add_argument("--system", default=None, help="a system message for the conversation")
    add_sampling_args(p)
    add_sparse_args(p)
    add_video_args(p)
    p.set_defaults(run=run)


def _start(session, system) -> None:
    session.reset()
    if system:
        session.add_message("system", system)


def run(args: argparse.Namespace) -> int:
    if wants_visual(args):
        if args.context_file:
            raise InvalidArgumentError("--context-file and --video/--image cannot be combined yet")
        from . import cmd_video

        return cmd_video.run(args)
    if args.model is None:
        raise InvalidArgumentError("chat needs -m MODEL (or --video/--image, which run a demo model without -m)")
    if args.prompt is not None or args.mmproj or args.explain or args.hf_repo:
        raise InvalidArgumentError("--prompt, --mmproj, --hf-repo and --explain go with --video or --image")
    context = read_context_file(args)
    model = load_model(args)
    session = model.session(sparse=sparse_config(args))
    _start(session, args.system)
    pending_context = context  # goes in the first question of each conversation
    interactive = sys.stdin.isatty()
    if interactive:
        print(f"{model.arch} model on {model.device}; {HELP}", file=sys.stderr)
    while True:
        line = read_line(interactive)
        if line is None or line.strip() == "/exit":
            return 0
        text = line.strip()
        if not text:
            continue
        if text == "/reset":
            _start(session, args.system)
            pending_context = context
            print("(conversation reset)", file=sys.stderr)
            continue
        if text.startswith("/"):
            print(f"unknown command {text!r}; {HELP}", file=sys.stderr)
            continue
        try:
            session.add_message("user", user_content(text, pending_context))
            pending_context = None
            for piece in session.generate(**sampling_kwargs(args)):
                sys.stdout.write(piece)
                sys.stdout.flush()
        except ContextOverflowError as exc:
            print(f"\nerror: {exc}; type /reset to start over", file=sys.stderr)
            continue
        sys.stdout.write("\n")
        sys.stdout.flush()
        if args.stats:
            print(session.stats().line(), file=sys.stderr)
