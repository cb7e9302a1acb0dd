"""`c-flags`: the compiler and linker flags of the installed C API, so a C or
C++ app builds against this package's libhtsparse without Python:

    cc app.c $(python -m htsparse_llama c-flags) -o app
"""

from __future__ import annotations

import argparse
import sys

from ..c_api import PACKAGE, c_api_paths


def register(sub) -> None:
    p = sub.add_parser(
        "c-flags",
        help="print the flags that build a C app against the installed C API",
        description="Print the compiler and linker flags of the installed C API (htsparse.h, "
        "libhtsparse): cc app.c $(python -m htsparse_llama c-flags) -o app",
    )
    g = p.add_mutually_exclusive_group()
    g.add_argument("--cflags", action="store_true", help="only the compiler flags")
    g.add_argument("--libs", action="store_true", help="only the linker flags")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    paths = c_api_paths()
    if paths is None:
        print(f"error: no C API in {PACKAGE} (install the package with `pip install .`)", file=sys.stderr)
        return 1
    include, lib = paths
    cflags = [f"-I{include}"]
    libs = [f"-L{lib}", "-lhtsparse", f"-Wl,-rpath,{lib}"]
    print(" ".join(cflags if args.cflags else libs if args.libs else cflags + libs))
    return 0
