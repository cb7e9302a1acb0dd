"""`bench`: speed of our runtime against llama.cpp (llama-cpp-python) on the
same GGUF and threads, in one process run. (Being written.)"""

from __future__ import annotations

import argparse


def register(sub) -> None:
    p = sub.add_parser("bench", help="benchmark against llama.cpp", description=__doc__)
    p.add_argument("-m", "--model", required=True, help="GGUF model file")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    raise SystemExit("bench: not written yet")
