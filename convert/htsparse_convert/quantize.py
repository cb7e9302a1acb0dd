"""K-quants of a text GGUF through the installed libllama's own quantizer.

    from htsparse_convert.quantize import quantize_gguf

    quantize_gguf("model-f16.gguf", "model-Q4_K_M.gguf", "Q4_K_M")

Q4_K_M and its kin are llama.cpp's mixes (which tensors get which type is
decided per tensor by llama.cpp), so they come from `llama_model_quantize`
rather than from a re-implementation: the file is what `llama-quantize`
would write. f32, f16, bf16 and q8_0 are written directly by the converter.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, Union

PathLike = Union[str, "os.PathLike[str]"]

# llama_ftype values (llama.h of the pinned llama.cpp).
K_QUANTS: Dict[str, int] = {"Q4_K_M": 15, "Q5_K_M": 17, "Q6_K": 18}


def quantize_gguf(src: PathLike, dst: PathLike, quant: str, n_threads: int = 0) -> Path:
    """Quantizes the text GGUF `src` (f32/f16/bf16) to `dst` with llama.cpp.
    `dst` appears only once complete. n_threads 0: all hardware threads."""
    import llama_cpp  # the libllama that llama-cpp-python built

    if quant not in K_QUANTS:
        raise ValueError(f"unknown k-quant {quant!r}; known: {', '.join(K_QUANTS)}")
    dst = Path(dst)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = K_QUANTS[quant]
    params.nthread = int(n_threads)
    try:
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), params)
        if rc != 0:
            raise RuntimeError(f"llama.cpp could not quantize {src} to {quant} (status {rc}; run with --verbose "
                               "to see its log)")
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, dst)
    return dst
