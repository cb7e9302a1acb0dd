"""Tiny synthetic checkpoints: our runtime's logits against transformers'
forward pass (the reference) and against llama.cpp on the same GGUF.

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
  attention.layer_norm_rms_epsilon (see llama_cpp_twin), so it is compared on
  a copy of the file whose epsilon is 0.
Arg-max: random weights make near-ties, so the arg-max must agree only where
transformers' top-2 margin is at least ARGMAX_MARGIN logits (about 3x the
largest logit difference measured, 0.035 with f16 weights); at least
MIN_DECIDED of the positions must qualify so the check cannot pass vacuously.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from htsparse_convert import read_gguf_header
from htsparse_convert.text_gguf import ARCHITECTURES, gguf_tensor_name, mrope_sections, text_hparams
from htsparse_llama import Model

from tiny_models import (  # noqa: F401  (fixtures)
    MROPE_SECTION,
    TinyModel,
    convert,
    qwen_vocab,
    smollm_vocab,
    tiny_dir,
    tiny_llama,
    tiny_llama_f16,
    tiny_qwen2,
    tiny_qwen2vl,
    tiny_qwen2vl_v1,
)

# Tests with tiny models need a real GGUF: the tokenizer is copied from it.
real_vocab = pytest.mark.real_model

REL_TOL_F32 = 5e-3
REL_TOL_F16 = 1e-2
REL_TOL_LLAMA_CPP = 1e-5
ARGMAX_MARGIN = 0.1
MIN_DECIDED = 0.6

N_CTX = 128
N_PROMPT = 64
ARCH_FIXTURES = ["tiny_qwen2", "tiny_llama", "tiny_qwen2vl"]


# -- helpers -------------------------------------------------------------------------------


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
        out.append(s.add_tokens(ids[start:start + size], all_logits=True, positions=pos))
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
    llama_cpp = pytest.importorskip("llama_cpp")
    llm = llama_cpp.Llama(str(path), n_ctx=N_CTX, n_threads=2, n_batch=512, logits_all=True,
                          flash_attn=True, verbose=False)
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
    print(f"\n{label}: rel L2 max {err.max():.2e} mean {err.mean():.2e}; max |diff| "
          f"{np.abs(got - ref).max():.2e}; logit std {ref.std():.2f}; arg-max agrees at {agree.sum()}/{len(agree)} "
          f"positions, decided {decided.sum()}")
    worst = int(err.argmax())
    assert err.max() < rel_tol, f"{label}: relative L2 error {err.max():.3e} at position {worst} >= {rel_tol:.0e}"
    assert decided.mean() >= MIN_DECIDED, f"{label}: only {decided.sum()}/{len(decided)} positions have a clear arg-max"
    bad = np.flatnonzero(decided & ~agree)
    assert bad.size == 0, f"{label}: arg-max differs at positions {bad.tolist()} (margins {margin[bad].tolist()})"


def rounded_to_f16(model: torch.nn.Module) -> torch.nn.Module:
    """A copy whose matrices went through f16, as the f16 GGUF stores them."""
    m = copy.deepcopy(model)
    with torch.no_grad():
        for p in m.parameters():
            if p.ndim >= 2:
                p.copy_(p.half().float())
    return m


# -- dense parity ----------------------------------------------------------------------------


@real_vocab
@pytest.mark.parametrize("arch_fixture", ARCH_FIXTURES + ["tiny_qwen2vl_v1"])
def test_logits_match_transformers(arch_fixture, request):
    m: TinyModel = request.getfixturevalue(arch_fixture)
    ids = prompt(m.n_vocab)
    check_close(f"{m.label} f32 vs transformers", ours(m.gguf_path, ids), reference(m.torch_model, ids), REL_TOL_F32)


def llama_cpp_twin(m: TinyModel, vocab, tiny_dir):
    """The GGUF to compare with llama.cpp. For qwen2vl, a copy with RMS-norm
    epsilon 0: llama.cpp 0.3.36's qwen2vl never reads
    attention.layer_norm_rms_epsilon (src/models/qwen2vl.cpp,
    llama_model_qwen2vl::load_arch_hparams reads only the rope sections; its
    "// fall through" comment is left from when the QWEN2VL case fell through
    to QWEN2's, which reads it), so it runs with epsilon 0 (its log prints
    f_norm_rms_eps = 0.0e+00) where transformers and our runtime use the file's."""
    if m.arch != "qwen2vl":
        return m.gguf_path
    cfg = m.config.to_dict()
    cfg["text_config"]["rms_norm_eps"] = 0.0
    return convert(m.torch_model, tiny_dir / "qwen2vl-eps0.gguf", vocab, config=cfg)


@real_vocab
@pytest.mark.parametrize("arch_fixture", ARCH_FIXTURES)
def test_logits_match_llama_cpp(arch_fixture, request, qwen_vocab, tiny_dir):
    m: TinyModel = request.getfixturevalue(arch_fixture)
    path = llama_cpp_twin(m, qwen_vocab, tiny_dir)
    ids = prompt(m.n_vocab, seed=11)
    check_close(f"{m.label} f32 vs llama.cpp", ours(path, ids), llama_cpp_logits(path, ids), REL_TOL_LLAMA_CPP)


@real_vocab
def test_f16_logits_match_transformers_and_llama_cpp(tiny_llama_f16):
    m = tiny_llama_f16
    ids = prompt(m.n_vocab, seed=13)
    got = ours(m.gguf_path, ids)
    check_close("llama f16 vs transformers (f16-rounded weights)", got, reference(rounded_to_f16(m.torch_model), ids),
                REL_TOL_F16)
    check_close("llama f16 vs llama.cpp", got, llama_cpp_logits(m.gguf_path, ids), REL_TOL_LLAMA_CPP)


@real_vocab
def test_gguf_metadata(tiny_qwen2, tiny_llama, tiny_llama_f16, tiny_qwen2vl):
    """The keys and tensors upstream llama.cpp expects, per architecture."""
    from gguf import GGMLQuantizationType as T

    def read(path):
        fields, tensors = read_gguf_header(path)
        return {f.key: f.value for f in fields}, {t.name: t for t in tensors}

    kv, tensors = read(tiny_qwen2.gguf_path)
    assert kv["general.architecture"] == "qwen2" and kv["qwen2.block_count"] == 3
    assert kv["qwen2.attention.head_count_kv"] == 2 and "qwen2.rope.dimension_count" not in kv
    assert "output.weight" not in tensors and "blk.0.attn_q.bias" in tensors  # tied embeddings, qkv biases
    assert tensors["token_embd.weight"].shape == (64, tiny_qwen2.config.vocab_size)

    kv, tensors = read(tiny_llama.gguf_path)
    assert kv["llama.rope.dimension_count"] == 16 and kv["llama.vocab_size"] == tiny_llama.config.vocab_size
    assert "output.weight" in tensors and "blk.0.attn_q.bias" not in tensors
    assert len(kv["tokenizer.ggml.tokens"]) == tiny_llama.config.vocab_size

    kv, tensors = read(tiny_llama_f16.gguf_path)
    assert kv["general.file_type"] == 1
    assert tensors["blk.0.attn_q.weight"].type == T.F16 and tensors["token_embd.weight"].type == T.F16
    assert tensors["blk.0.attn_norm.weight"].type == T.F32

    kv, tensors = read(tiny_qwen2vl.gguf_path)
    assert kv["general.architecture"] == "qwen2vl"
    assert kv["qwen2vl.rope.dimension_sections"] == MROPE_SECTION + [0]
    assert kv["qwen2vl.rope.freq_base"] == 1000000.0
    assert "output.weight" in tensors and len(tensors) == 3 + 12 * 3  # no vision tensors


# -- M-RoPE ----------------------------------------------------------------------------------


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


@real_vocab
def test_qwen2vl_mrope_positions_match_transformers(tiny_qwen2vl):
    m = tiny_qwen2vl
    positions, chunks = image_layout()
    ids = prompt(m.n_vocab, n=positions.shape[1], seed=17)
    ref = reference(m.torch_model, ids, positions)
    # Sanity: the layout really differs from plain text positions.
    assert rel_l2(reference(m.torch_model, ids), ref).max() > 10 * REL_TOL_F32
    check_close("qwen2vl M-RoPE, one call", ours(m.gguf_path, ids, positions=positions), ref, REL_TOL_F32)
    check_close("qwen2vl M-RoPE, text/grid/text calls", ours(m.gguf_path, ids, chunks=chunks), ref, REL_TOL_F32)


@real_vocab
def test_qwen2vl_wrong_sections_change_logits(tiny_qwen2vl, qwen_vocab, tiny_dir):
    """A GGUF whose dimension_sections differ from the checkpoint's must not
    match transformers on image positions, so the test above can fail."""
    m = tiny_qwen2vl
    cfg = m.config.to_dict()
    cfg["text_config"]["rope_parameters"]["mrope_section"] = [3, 3, 2]  # same total, other split
    wrong = convert(m.torch_model, tiny_dir / "qwen2vl-wrong-sections.gguf", qwen_vocab, config=cfg)
    positions, _ = image_layout()
    ids = prompt(m.n_vocab, n=positions.shape[1], seed=17)
    err = rel_l2(ours(wrong, ids, positions=positions), reference(m.torch_model, ids, positions))
    print(f"\nqwen2vl with sections [3,3,2,0] vs transformers [2,3,3]: rel L2 max {err.max():.2e}")
    assert err.max() > 5 * REL_TOL_F32


# -- converter details without a model ---------------------------------------------------------


def test_tensor_names_of_both_checkpoint_layouts():
    """transformers 5 nests a VLM's decoder under model.language_model.;
    checkpoints saved by transformers 4 use model. and a top-level visual."""
    vl = ARCHITECTURES["Qwen2_5_VLForConditionalGeneration"]
    assert gguf_tensor_name(vl, "model.language_model.layers.3.self_attn.k_proj.bias") == "blk.3.attn_k.bias"
    assert gguf_tensor_name(vl, "model.layers.3.mlp.down_proj.weight") == "blk.3.ffn_down.weight"
    assert gguf_tensor_name(vl, "model.language_model.embed_tokens.weight") == "token_embd.weight"
    assert gguf_tensor_name(vl, "model.norm.weight") == "output_norm.weight"
    assert gguf_tensor_name(vl, "lm_head.weight") == "output.weight"
    assert gguf_tensor_name(vl, "visual.blocks.0.attn.qkv.weight") is None
    assert gguf_tensor_name(vl, "model.visual.merger.mlp.0.weight") is None
    with pytest.raises(ValueError, match="cannot map"):
        gguf_tensor_name(vl, "model.layers.0.self_attn.q_norm.weight")


def test_hparams_of_a_transformers4_config():
    """A flat Qwen2.5-VL-3B config.json as transformers 4 saved it."""
    cfg = {
        "architectures": ["Qwen2_5_VLForConditionalGeneration"], "model_type": "qwen2_5_vl",
        "hidden_size": 2048, "intermediate_size": 11008, "num_hidden_layers": 36, "num_attention_heads": 16,
        "num_key_value_heads": 2, "max_position_embeddings": 128000, "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0, "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
        "tie_word_embeddings": True, "vision_config": {"depth": 32, "hidden_size": 1280},
    }
    hp = text_hparams(cfg)
    assert (hp.n_layer, hp.n_embd, hp.n_head, hp.n_head_kv, hp.head_dim) == (36, 2048, 16, 2, 128)
    assert hp.rope_theta == 1000000.0 and hp.tie_word_embeddings and not hp.head_dim_explicit
    assert mrope_sections(hp) == [16, 24, 24, 0]
    with pytest.raises(NotImplementedError, match="yarn"):
        text_hparams(dict(cfg, rope_scaling={"type": "yarn", "factor": 4.0}))
