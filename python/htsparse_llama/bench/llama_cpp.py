"""llama.cpp itself, through llama-cpp-python, as the reference our runtime is
measured against (the benchmarks and the tests): libllama on a GGUF
(LlamaCppEngine) and libllama + libmtmd on a VLM (LlamaMtmd, and the ctypes
helpers over llama_cpp.mtmd_cpp: init_context, tokenize, encode_image_chunks).
Not used by the runtime, which calls libmtmd from C++ (runtime/src/vision.cpp).

    llm = load_llama("model.gguf", n_ctx=2048, n_threads=2)       # llama_cpp.Llama
    ctx = init_context("mmproj.gguf", llm.model, n_threads=2)
    chunks = tokenize(ctx, prompt_with_markers, [rgb])
    embd = encode_image_chunks(ctx, chunks, n_embd)   # chunk index -> (n_tokens, n_embd)
    ...
    mtmd.mtmd_input_chunks_free(chunks); mtmd.mtmd_free(ctx)
"""

from __future__ import annotations

import contextlib
import ctypes
import re
import sys
from typing import Dict, Iterator, Sequence

import numpy as np

from .._native_loader import native

N_BATCH = 512  # llama.cpp's default logical batch; ours uses the same micro-batch


def cpu_has_amx() -> bool:
    """The CPU has Intel AMX (Sapphire Rapids and later; Linux's cpuinfo flags)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return any(line.startswith("flags") and " amx_int8" in line for line in f)
    except OSError:
        return False


class _TensorBuftOverride(ctypes.Structure):
    """llama.h's llama_model_tensor_buft_override: a tensor-name pattern and a buffer type."""

    _fields_ = [("pattern", ctypes.c_char_p), ("buft", ctypes.c_void_p)]


def ours_placement_overrides(path: str, placement=None) -> "ctypes.Array[_TensorBuftOverride]":
    """For llama.cpp on `path`: every weight our runtime keeps in one of the
    CPU's extra buffer types (the repacked layouts), by exact name, to that
    type; a NULL pattern ends the list. The token embeddings stay out: llama.cpp
    names its tied output projection like them, and a row lookup on a
    repacked buffer is not what the loader would choose."""
    if placement is None:  # where ours puts each weight: load it here
        model = native.Model(path, "cpu", 1, False)
        placement = model.weight_placement()
        del model
    plain = {"CPU", "CPU_Mapped", ""}  # ggml's own CPU buffers, mapped from the file or not
    wanted = [
        (name, native.cpu_buffer_type_address(buft))
        for name, buft in placement
        if buft not in plain and name != "token_embd.weight"
    ]
    wanted = [(name, address) for name, address in wanted if address]
    items = (_TensorBuftOverride * (len(wanted) + 1))()
    for i, (name, address) in enumerate(wanted):
        items[i].pattern = f"^{re.escape(name)}$".encode()
        items[i].buft = address
    return items


@contextlib.contextmanager
def _placed_as_ours(path: str, placement=None) -> Iterator[None]:
    """Inside this block llama.cpp loads its weights into the buffer types our
    runtime chose for them and uses no other extra buffer type (AMX among
    them): llama_model_default_params as Llama reads it."""
    import llama_cpp.llama_cpp as lib

    default = lib.llama_model_default_params
    overrides = ours_placement_overrides(path, placement)

    def params():
        p = default()
        p.use_extra_bufts = False
        p.tensor_buft_overrides = ctypes.cast(overrides, ctypes.c_void_p).value
        return p

    lib.llama_model_default_params = params
    try:
        yield
    finally:
        lib.llama_model_default_params = default


def load_llama(path: str, placement=None, **kwargs):
    """llama_cpp.Llama(path, **kwargs), verbose off unless asked. On CPUs with
    AMX, llama.cpp's AMX matmul segfaults on the first token
    (llama.cpp#20824, still open; seen on this project's 2-core machines);
    our runtime skips that one buffer type (runtime/src/backend.cpp), so there
    llama.cpp gets every weight in the buffer type ours chose for it
    (ours_placement_overrides): the same repacked layouts and kernels, no AMX.
    placement: (weight, buffer type) pairs as Model.weight_placement gives
    them, when the caller has them (else our runtime loads the file to ask)."""
    import llama_cpp

    kwargs.setdefault("verbose", False)
    # Weights on a GPU only where llama.cpp has one (n_gpu_layers is ignored otherwise).
    on_gpu = kwargs.get("n_gpu_layers", 0) not in (0, None) and bool(llama_cpp.llama_supports_gpu_offload())
    guard = _placed_as_ours(str(path), placement) if cpu_has_amx() and not on_gpu else contextlib.nullcontext()
    with guard:
        return llama_cpp.Llama(str(path), **kwargs)


class LlamaCppEngine:
    """llama.cpp through llama-cpp-python: same GGUF, threads and batch, flash
    attention on (our graphs use ggml_flash_attn_ext), weights on the GPU
    exactly when ours are."""

    name = "llama_cpp"

    def __init__(self, path: str, n_ctx: int, threads: int, on_gpu: bool) -> None:
        self.llm = load_llama(
            path,
            n_ctx=n_ctx,
            n_threads=threads,
            n_threads_batch=threads,
            n_batch=N_BATCH,
            n_ubatch=N_BATCH,
            flash_attn=True,
            n_gpu_layers=-1 if on_gpu else 0,
        )
        self.n_vocab = self.llm.n_vocab()

    def prefill(self, ids: Sequence[int]) -> None:
        self.llm.reset()
        self.llm.eval(list(ids))

    def decode_step(self, token: int) -> np.ndarray:
        self.llm.eval([token])
        return self.logits()

    def logits(self) -> np.ndarray:
        """The last evaluated token's logits. Without logits_all, Llama.eval
        keeps no scores: read llama.cpp's own row."""
        return np.ctypeslib.as_array(self.llm._ctx.get_logits(), shape=(self.n_vocab,))


# -- libmtmd -------------------------------------------------------------------------------------


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


@ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)
def _mtmd_log(level: int, text: bytes, _user_data) -> None:
    if level == 4 and text:  # GGML_LOG_LEVEL_ERROR; the rest (per-chunk progress) is noise here
        sys.stderr.write(text.decode("utf-8", errors="replace"))


class LlamaMtmd:
    """llama.cpp's dense multimodal path on one prompt with images."""

    def __init__(self, text_path: str, mmproj_path: str, n_ctx: int, threads: int, on_gpu: bool) -> None:
        import llama_cpp
        import llama_cpp.mtmd_cpp as mtmd

        self.lib, self.mtmd, self.n_batch = llama_cpp, mtmd, N_BATCH
        # libmtmd is one library in the process: this quiets its per-chunk log for our Vision too
        # (errors still reach stderr).
        mtmd.mtmd_helper_log_set(_mtmd_log, None)
        self.text = LlamaCppEngine(text_path, n_ctx, threads, on_gpu)
        self.ctx = init_context(mmproj_path, self.text.llm.model, threads, use_gpu=on_gpu)
        self.lctx = self.text.llm._ctx.ctx
        self.n_embd = llama_cpp.llama_model_n_embd_inp(self.text.llm.model)
        self.marker = mtmd.mtmd_default_marker().decode()
        self.batch = llama_cpp.llama_batch_init(1, 0, 1)
        self.chunks = None
        self.embd: Dict[int, np.ndarray] = {}
        self.n_past = 0

    def encode(self, prompt: str, frames: Sequence[np.ndarray]) -> None:
        """mtmd_tokenize (with the images' preprocessing) and mtmd_encode_chunk
        of every image chunk; keeps the embeddings for prefill()."""
        self._free_chunks()
        self.chunks = tokenize(self.ctx, prompt, frames, add_special=True, mergeable=True)
        self.embd = encode_image_chunks(self.ctx, self.chunks, self.n_embd)

    def counts(self) -> Dict[str, int]:
        mtmd = self.mtmd
        n_visual = sum(
            mtmd.mtmd_input_chunk_get_n_tokens(mtmd.mtmd_input_chunks_get(self.chunks, i)) for i in self.embd
        )
        return {"prompt_tokens": int(mtmd.mtmd_helper_get_n_tokens(self.chunks)), "visual_tokens": int(n_visual)}

    def prefill(self) -> np.ndarray:
        """The encoded prompt into a cleared KV cache; the last logits."""
        lib, mtmd = self.lib, self.mtmd
        lib.llama_memory_clear(lib.llama_get_memory(self.lctx), True)
        n = mtmd.mtmd_input_chunks_size(self.chunks)
        n_past = 0
        for i in range(n):
            chunk = mtmd.mtmd_input_chunks_get(self.chunks, i)
            new_n_past = lib.llama_pos(n_past)  # set from n_past: this build's text helper adds to it
            if i in self.embd:
                rc = mtmd.mtmd_helper_decode_image_chunk(
                    self.ctx,
                    self.lctx,
                    chunk,
                    self.embd[i].ctypes.data_as(ctypes.POINTER(ctypes.c_float)),
                    n_past,
                    0,
                    self.n_batch,
                    ctypes.byref(new_n_past),
                    mtmd.mtmd_helper_post_decode_callback(),
                    None,
                )
            else:
                rc = mtmd.mtmd_helper_eval_chunk_single(
                    self.ctx, self.lctx, chunk, n_past, 0, self.n_batch, i == n - 1, ctypes.byref(new_n_past)
                )
            if rc != 0:
                raise RuntimeError(f"llama.cpp could not evaluate prompt chunk {i} ({rc})")
            n_past = new_n_past.value
        self.n_past = n_past  # the next position (M-RoPE: past the images' extent)
        return self.text.logits()

    def step(self, token: int) -> np.ndarray:
        b = self.batch
        b.n_tokens, b.token[0], b.pos[0], b.n_seq_id[0], b.logits[0] = 1, token, self.n_past, 1, 1
        b.seq_id[0][0] = 0
        if self.lib.llama_decode(self.lctx, b) != 0:
            raise RuntimeError("llama_decode failed")
        self.n_past += 1
        return self.text.logits()

    def kv(self, hp: Dict[str, int], n_cells: int) -> Dict[str, int]:
        per_cell = 2 * hp["n_layer"] * hp["n_embd_head"] * hp["n_head_kv"] * 2  # F16 K and V
        return {
            "kv_bytes": per_cell * n_cells,
            "kv_alloc_bytes": per_cell * int(self.text.llm.n_ctx()),
            "kv_state_bytes": int(self.lib.llama_state_seq_get_size(self.lctx, 0)),
        }

    def _free_chunks(self) -> None:
        if self.chunks is not None:
            self.mtmd.mtmd_input_chunks_free(self.chunks)
            self.chunks = None

    def close(self) -> None:
        self._free_chunks()
        self.mtmd.mtmd_free(self.ctx)
        self.lib.llama_batch_free(self.batch)
        self.text.llm.close()
