"""K-quants of a text GGUF through the installed libllama's own quantizer.

    from htsparse_convert.quantize import quantize_gguf

    quantize_gguf("model-f16.gguf", "model-Q4_K_M.gguf", "Q4_K_M")

Q4_K_M and its kin are llama.cpp's mixes (which tensors get which type is
decided per tensor by llama.cpp), so they come from `llama_model_quantize`
rather than from a re-implementation: the file is what `llama-quantize`
would write. f32, f16, bf16 and q8_0 are written directly by the converter.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
from pathlib import Path
from typing import Dict, Iterator, List, Union

from .atomic import atomic_path

PathLike = Union[str, "os.PathLike[str]"]

# llama_ftype values (llama.h of the pinned llama.cpp).
K_QUANTS: Dict[str, int] = {"Q4_K_M": 15, "Q5_K_M": 17, "Q6_K": 18}


@contextlib.contextmanager
def _llama_log(llama_cpp, verbose: bool) -> Iterator[List[str]]:
    """libllama's log (a line per tensor, one per fallback type) collected
    instead of printed, unless verbose; the previous callback (llama-cpp-python's)
    comes back afterwards. Its own callback cannot be used to filter: it maps
    ggml's log levels of an older ggml (WARN reads as ERROR, ERROR as DEBUG)."""
    pieces: List[str] = []

    @llama_cpp.llama_log_callback
    def collect(_level: int, text: bytes, _user_data: ctypes.c_void_p) -> None:
        piece = text.decode("utf-8", "replace")
        pieces.append(piece)
        if verbose:
            sys.stderr.write(piece)
            sys.stderr.flush()

    previous, user_data = llama_cpp.llama_log_callback(), ctypes.c_void_p()
    llama_cpp.llama_log_get(ctypes.byref(previous), ctypes.byref(user_data))
    llama_cpp.llama_log_set(collect, None)
    try:
        yield pieces
    finally:
        llama_cpp.llama_log_set(previous, user_data)


def _reason(log: List[str]) -> str:
    """The last line of a failed quantization's log, from its "failed to
    quantize:" on (a partial line about the tensor at hand may precede it)."""
    last = next((line for line in reversed("".join(log).splitlines()) if line.strip()), "no log")
    at = last.find("failed to quantize:")
    return (last[at:] if at >= 0 else last).strip()


def quantize_gguf(src: PathLike, dst: PathLike, quant: str, n_threads: int = 0, verbose: bool = False) -> Path:
    """Quantizes the text GGUF `src` (f32/f16/bf16) to `dst` with llama.cpp.
    `dst` appears only once complete. n_threads 0: all hardware threads.
    verbose: show libllama's log (which type each tensor got, and fallbacks)."""
    import llama_cpp  # the libllama that llama-cpp-python built

    if quant not in K_QUANTS:
        raise ValueError(f"unknown k-quant {quant!r}; known: {', '.join(K_QUANTS)}")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = K_QUANTS[quant]
    params.nthread = int(n_threads)
    with atomic_path(dst) as tmp:
        with _llama_log(llama_cpp, verbose) as log:
            rc = llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), params)
        if rc != 0:
            raise RuntimeError(f"llama.cpp could not quantize {src} to {quant} (status {rc}): {_reason(log)}")
    return Path(dst)
