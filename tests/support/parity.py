"""Logit parity on the tiny text models: our runtime's logits, transformers'
(the reference) and llama.cpp's for the same prompt, the comparison
check_close makes of them, the bars it holds them to, and the Qwen-VL
image-position layout the M-RoPE tests feed. Used by test_tiny_models (where
the bars were measured), test_embeddings, test_convert_checkpoint and
test_backend_ops.

Tolerances (relative L2 error of each position's logit vector):
- vs transformers, f32 GGUF: REL_TOL_F32. The weights are exact, but K and V
  are cached in F16 and ggml's CPU flash attention rounds Q to F16 for Q.K^T
  (and its per-row path accumulates softmax.V in F16): each layer adds F16
  rounding, ~5e-4 relative. Measured 0.9e-3..2.0e-3 over the three layers,
  M-RoPE included; the bound is 2.5x the worst.
- vs transformers, f16 GGUF: REL_TOL_F16, against the same checkpoint with its
  matrices rounded to f16 (so weight rounding is not counted as error); ggml
  also rounds the activations to F16 before each F16 mat-mul. Measured 2.1e-3.
- vs llama.cpp: REL_TOL_LLAMA_CPP. Same ggml kernels, same graph: the logits
  are bit-identical (measured 0); a tiny bound allows a different reduction
  order should a backend pick another kernel. llama.cpp's qwen2vl ignores
  attention.layer_norm_rms_epsilon (see test_tiny_models.llama_cpp_twin), so
  it is compared on a copy of the file whose epsilon is 0.
Arg-max: random weights make near-ties, so the arg-max must agree only where
transformers' top-2 margin is at least ARGMAX_MARGIN logits (about 3x the
largest logit difference measured, 0.035 with f16 weights); at least
MIN_DECIDED of the positions must qualify so the check cannot pass vacuously.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from htsparse_llama import Model
from htsparse_llama.bench.llama_cpp import load_llama

REL_TOL_F32 = 5e-3
REL_TOL_F16 = 1e-2
REL_TOL_LLAMA_CPP = 1e-5
ARGMAX_MARGIN = 0.1
MIN_DECIDED = 0.6

N_CTX = 128
N_PROMPT = 64


def prompt(n_vocab: int, n: int = N_PROMPT, seed: int = 7) -> list:
    return [int(t) for t in np.random.default_rng(seed).integers(0, n_vocab, size=n)]


def ours(path, ids, positions=None, chunks=None) -> np.ndarray:
    """Our runtime's logits for every position: [n, n_vocab]. `chunks` splits
    the prompt into several add_tokens calls (positions given per chunk, or None)."""
    s = Model(path, n_ctx=N_CTX, n_threads=2, device="cpu").session()
    if chunks is None:
        return s.add_tokens(ids, all_logits=True, positions=positions)
    out, start = [], 0
    for size, pos in chunks:
        out.append(s.add_tokens(ids[start : start + size], all_logits=True, positions=pos))
        start += size
    return np.concatenate(out)


def reference(model: torch.nn.Module, ids, position_ids=None) -> np.ndarray:
    """transformers' logits in float32: [n, n_vocab]."""
    kwargs = {"use_cache": False}
    if position_ids is not None:
        kwargs["position_ids"] = torch.as_tensor(position_ids, dtype=torch.long)[:, None, :]  # (3, batch 1, n)
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids]), **kwargs).logits[0].float().numpy()


def llama_cpp_logits(path, ids) -> np.ndarray:
    """llama.cpp's own logits (through llama-cpp-python) for every position."""
    pytest.importorskip("llama_cpp")
    llm = load_llama(str(path), n_ctx=N_CTX, n_threads=2, n_batch=512, logits_all=True, flash_attn=True, verbose=False)
    try:
        llm.eval(ids)
        return np.array(llm.scores[: len(ids)], dtype=np.float32)
    finally:
        llm.close()


def rel_l2(a: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Relative L2 error of each row of `a` against `ref`."""
    return np.linalg.norm(a - ref, axis=-1) / np.linalg.norm(ref, axis=-1)


def check_close(label: str, got: np.ndarray, ref: np.ndarray, rel_tol: float) -> None:
    assert got.shape == ref.shape, f"{label}: shape {got.shape} != {ref.shape}"
    assert np.isfinite(got).all(), f"{label}: non-finite logits"
    err = rel_l2(got, ref)
    top2 = np.sort(ref, axis=-1)[:, -2:]
    margin = top2[:, 1] - top2[:, 0]
    decided = margin >= ARGMAX_MARGIN
    agree = got.argmax(-1) == ref.argmax(-1)
    print(
        f"\n{label}: rel L2 max {err.max():.2e} mean {err.mean():.2e}; max |diff| "
        f"{np.abs(got - ref).max():.2e}; logit std {ref.std():.2f}; arg-max agrees at {agree.sum()}/{len(agree)} "
        f"positions, decided {decided.sum()}"
    )
    worst = int(err.argmax())
    assert err.max() < rel_tol, f"{label}: relative L2 error {err.max():.3e} at position {worst} >= {rel_tol:.0e}"
    assert decided.mean() >= MIN_DECIDED, f"{label}: only {decided.sum()}/{len(decided)} positions have a clear arg-max"
    bad = np.flatnonzero(decided & ~agree)
    assert bad.size == 0, f"{label}: arg-max differs at positions {bad.tolist()} (margins {margin[bad].tolist()})"


def image_layout(n_text_before: int = 10, grid=(2, 3, 4), n_text_after: int = 20):
    """Qwen-VL positions of text, then a video-like grid (frames x rows x
    cols, t advancing per frame, h and w over the grid), then text resuming
    one past the grid's largest position. Returns (positions [3, n], chunks)
    where chunks gives the add_tokens calls: text with default positions,
    the grid with explicit ones, text with default ones again."""
    frames, rows, cols = grid
    start = n_text_before
    t, h, w = np.meshgrid(np.arange(frames), np.arange(rows), np.arange(cols), indexing="ij")
    grid_pos = np.stack([t.ravel(), h.ravel(), w.ravel()]) + start
    before = np.tile(np.arange(n_text_before), (3, 1))
    resume = grid_pos.max() + 1
    after = np.tile(np.arange(resume, resume + n_text_after), (3, 1))
    positions = np.concatenate([before, grid_pos, after], axis=1).astype(np.int32)
    chunks = [(n_text_before, None), (grid_pos.shape[1], grid_pos.astype(np.int32)), (n_text_after, None)]
    return positions, chunks
