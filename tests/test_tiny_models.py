"""Tiny synthetic checkpoints: our runtime's logits against transformers'
forward pass (the reference) and against llama.cpp on the same GGUF.

The tolerances (REL_TOL_F32, REL_TOL_F16, REL_TOL_LLAMA_CPP) and the arg-max
rule of check_close are explained, with what was measured here, in
support/parity.py, which holds the helpers these tests share with others.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from htsparse_convert import read_gguf_header
from htsparse_convert.text_gguf import ARCHITECTURES, gguf_tensor_name, mrope_sections, text_hparams
from support.parity import (
    REL_TOL_F16,
    REL_TOL_F32,
    REL_TOL_LLAMA_CPP,
    check_close,
    image_layout,
    llama_cpp_logits,
    ours,
    prompt,
    reference,
    rel_l2,
)
from support.tiny_models import MROPE_SECTION, TinyModel, convert

# Tests with tiny models need a real GGUF: the tokenizer is copied from it.
real_vocab = pytest.mark.real_model

ARCH_FIXTURES = ["tiny_qwen2", "tiny_qwen3", "tiny_llama", "tiny_qwen2vl", "tiny_qwen3vl", "tiny_gemma3"]


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
    check_close(
        "llama f16 vs transformers (f16-rounded weights)",
        got,
        reference(rounded_to_f16(m.torch_model), ids),
        REL_TOL_F16,
    )
    check_close("llama f16 vs llama.cpp", got, llama_cpp_logits(m.gguf_path, ids), REL_TOL_LLAMA_CPP)


@real_vocab
def test_gguf_metadata(tiny_qwen2, tiny_qwen3, tiny_llama, tiny_llama_f16, tiny_qwen2vl):
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

    kv, tensors = read(tiny_qwen3.gguf_path)
    assert kv["general.architecture"] == "qwen3" and kv["qwen3.attention.key_length"] == 32
    assert "blk.0.attn_q.bias" not in tensors and tensors["blk.0.attn_q_norm.weight"].shape == (32,)
    assert tensors["blk.0.attn_q.weight"].shape == (64, 4 * 32) and tensors["blk.2.attn_k_norm.weight"].type == T.F32
    assert "output.weight" not in tensors and len(tensors) == 2 + 11 * 3

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


@real_vocab
def test_gemma3_gguf_metadata(tiny_gemma3):
    """Gemma 3 as upstream's Gemma3Model writes it: norms stored as 1 + w,
    the post-attention and FFN norms under llama.cpp's names, key/value
    length, the window; and, as the layer kinds are not the 5:1 default,
    the per-layer pattern newer converters write."""
    import gguf

    reader = gguf.GGUFReader(tiny_gemma3.gguf_path)
    kv = {k: f.contents() for k, f in reader.fields.items() if k.startswith("gemma3.")}
    assert kv["gemma3.attention.sliding_window"] == 16 and kv["gemma3.attention.key_length"] == 16
    assert kv["gemma3.attention.sliding_window_pattern"] == [False, True, True, False, True]
    assert kv["gemma3.rope.freq_base"] == 1000000.0  # the global layers' base
    tensors = {t.name: t for t in reader.tensors}
    for il in range(5):
        assert {f"blk.{il}.post_attention_norm.weight", f"blk.{il}.post_ffw_norm.weight"} <= set(tensors)
    layer = tiny_gemma3.torch_model.model.layers[1]
    for name, module in (
        ("blk.1.ffn_norm.weight", layer.pre_feedforward_layernorm),
        ("blk.1.post_attention_norm.weight", layer.post_attention_layernorm),
        ("blk.1.attn_q_norm.weight", layer.self_attn.q_norm),
    ):
        assert np.array_equal(np.asarray(tensors[name].data), module.weight.detach().numpy() + 1)
    assert "output.weight" not in tensors  # tied


# -- M-RoPE ----------------------------------------------------------------------------------


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
def test_qwen3vl_interleaved_mrope_positions_match_transformers(tiny_qwen3vl):
    """Qwen3-VL interleaves the t/h/w sections over the rotary pairs: a grid's
    positions (streams that differ) match transformers only if the runtime
    rotates each pair by the stream transformers does. The DeepStack depth
    (the tower's two taps) is in the file."""
    m = tiny_qwen3vl
    positions, chunks = image_layout()
    ids = prompt(m.n_vocab, n=positions.shape[1], seed=19)
    ref = reference(m.torch_model, ids, positions)
    assert rel_l2(reference(m.torch_model, ids), ref).max() > 10 * REL_TOL_F32
    check_close("qwen3vl M-RoPE, one call", ours(m.gguf_path, ids, positions=positions), ref, REL_TOL_F32)
    check_close("qwen3vl M-RoPE, text/grid/text calls", ours(m.gguf_path, ids, chunks=chunks), ref, REL_TOL_F32)
    fields, _ = read_gguf_header(m.gguf_path)
    kv = {f.key: f.value for f in fields}
    assert kv["qwen3vl.n_deepstack_layers"] == 2 and kv["qwen3vl.rope.dimension_sections"] == [4, 6, 6, 0]


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
    qwen3 = ARCHITECTURES["Qwen3ForCausalLM"]
    assert gguf_tensor_name(qwen3, "model.layers.0.self_attn.q_norm.weight") == "blk.0.attn_q_norm.weight"
    assert gguf_tensor_name(qwen3, "model.layers.1.self_attn.k_norm.weight") == "blk.1.attn_k_norm.weight"


def test_hparams_of_a_transformers4_config():
    """A flat Qwen2.5-VL-3B config.json as transformers 4 saved it."""
    cfg = {
        "architectures": ["Qwen2_5_VLForConditionalGeneration"],
        "model_type": "qwen2_5_vl",
        "hidden_size": 2048,
        "intermediate_size": 11008,
        "num_hidden_layers": 36,
        "num_attention_heads": 16,
        "num_key_value_heads": 2,
        "max_position_embeddings": 128000,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
        "tie_word_embeddings": True,
        "vision_config": {"depth": 32, "hidden_size": 1280},
    }
    hp = text_hparams(cfg)
    assert (hp.n_layer, hp.n_embd, hp.n_head, hp.n_head_kv, hp.head_dim) == (36, 2048, 16, 2, 128)
    assert hp.rope_theta == 1000000.0 and hp.tie_word_embeddings and not hp.head_dim_explicit
    assert mrope_sections(hp) == [16, 24, 24, 0]
    with pytest.raises(NotImplementedError, match="yarn"):
        text_hparams(dict(cfg, rope_scaling={"type": "yarn", "factor": 4.0}))
