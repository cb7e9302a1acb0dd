"""`python -m htsparse_llama <command>`: a thin dispatcher. Each command lives
in its own module with register(subparsers) and run(args) -> exit code; the
modules parse flags and call the library (the flags of the settings come
from their one declaration, options.py)."""

from __future__ import annotations

import sys
from typing import List, Optional

from .. import __version__
from ..errors import HtsError
from ..fetch import ModelUnavailable
from . import bench, c_flags, calibrate, chat, convert, generate, serve
from .args import Parser

COMMANDS = (generate, chat, serve, bench, convert, calibrate, c_flags)


def build_parser() -> Parser:
    parser = Parser(
        prog="python -m htsparse_llama",
        description="Local long-video question answering on llama.cpp GGUF files (HT-Sparse).",
    )
    parser.add_argument("--version", action="version", version=f"htsparse-llama {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True
    for module in COMMANDS:
        module.register(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except (HtsError, ModelUnavailable) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
