"""Where the installed C API lies (runtime/include/htsparse.h and libhtsparse,
installed inside this package by `pip install .`), for `c-flags` and for
apps and tests that build against it."""

from __future__ import annotations

from pathlib import Path

PACKAGE = Path(__file__).absolute().parent  # the installed htsparse_llama folder
LIBRARY_NAMES = ("libhtsparse.so", "libhtsparse.dylib", "htsparse.dll")


def c_api_paths():
    """(include folder, library folder) of the installed C API; None when this
    copy of the package has none (a build without the install step)."""
    include, lib = PACKAGE / "include", PACKAGE / "lib"
    if not (include / "htsparse.h").is_file() or not any((lib / n).is_file() for n in LIBRARY_NAMES):
        return None
    return include, lib
