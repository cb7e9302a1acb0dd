"""llama.cpp's libmtmd through llama-cpp-python's ctypes bindings
(llama_cpp.mtmd_cpp): the reference our vision path is measured against, in
`bench --video` and the tests. Not used by the runtime itself, which calls
libmtmd from C++ (runtime/src/vision.cpp).

    ctx = init_context("mmproj.gguf", llm.model, n_threads=2)
    chunks = tokenize(ctx, prompt_with_markers, [rgb])
    embd = encode_image_chunks(ctx, chunks, n_embd)   # chunk index -> (n_tokens, n_embd)
    ...
    mtmd.mtmd_input_chunks_free(chunks); mtmd.mtmd_free(ctx)
"""

from __future__ import annotations

import ctypes
from typing import Dict, Sequence

import numpy as np


def _mtmd():
    import llama_cpp.mtmd_cpp as mtmd

    return mtmd


def init_context(mmproj_path: str, llama_model, n_threads: int, use_gpu: bool = False):
    """An mtmd context for the mmproj on a loaded libllama model (no warm-up, no timing log)."""
    mtmd = _mtmd()
    params = mtmd.mtmd_context_params_default()
    params.use_gpu, params.n_threads, params.warmup, params.print_timings = use_gpu, n_threads, False, False
    ctx = mtmd.mtmd_init_from_file(str(mmproj_path).encode(), llama_model, params)
    if not ctx:
        raise RuntimeError(f"libmtmd could not load {mmproj_path}")
    return ctx


def tokenize(ctx, prompt: str, images: Sequence[np.ndarray], add_special: bool = False, mergeable: bool = False):
    """mtmd_tokenize of a prompt holding one marker per (H, W, 3) uint8 RGB
    image; mergeable marks them as video frames (Qwen-VL pairs). Returns the
    chunks; free them with mtmd_input_chunks_free."""
    mtmd = _mtmd()
    bitmaps = []
    chunks = mtmd.mtmd_input_chunks_init()
    try:
        for rgb in images:
            h, w, _ = rgb.shape
            data = (ctypes.c_uint8 * rgb.size).from_buffer_copy(np.ascontiguousarray(rgb).tobytes())
            bitmaps.append(mtmd.mtmd_bitmap_init(w, h, data))
            mtmd.mtmd_bitmap_set_mergeable(bitmaps[-1], mergeable)
        raw = prompt.encode()
        text = mtmd.mtmd_input_text(text=raw, text_len=len(raw), add_special=add_special, parse_special=True)
        array = (mtmd.mtmd_bitmap_p_ctypes * len(bitmaps))(*bitmaps)
        if mtmd.mtmd_tokenize(ctx, chunks, ctypes.byref(text), array, len(bitmaps)) != 0:
            raise RuntimeError("mtmd_tokenize failed")
    except BaseException:
        mtmd.mtmd_input_chunks_free(chunks)
        raise
    finally:
        for b in bitmaps:  # the chunks hold their own preprocessed copies
            mtmd.mtmd_bitmap_free(b)
    return chunks


def encode_image_chunks(ctx, chunks, n_embd: int) -> Dict[int, np.ndarray]:
    """mtmd_encode_chunk of every image chunk: chunk index -> its output
    embeddings, (n_tokens, n_embd) float32."""
    mtmd = _mtmd()
    out: Dict[int, np.ndarray] = {}
    for i in range(mtmd.mtmd_input_chunks_size(chunks)):
        chunk = mtmd.mtmd_input_chunks_get(chunks, i)
        if mtmd.mtmd_input_chunk_get_type(chunk) != mtmd.MTMD_INPUT_CHUNK_TYPE_IMAGE:
            continue
        if mtmd.mtmd_encode_chunk(ctx, chunk) != 0:
            raise RuntimeError(f"mtmd_encode_chunk failed on chunk {i}")
        n = mtmd.mtmd_input_chunk_get_n_tokens(chunk)
        out[i] = np.ctypeslib.as_array(mtmd.mtmd_get_output_embd(ctx), shape=(n * n_embd,)).reshape(n, n_embd).copy()
    return out
