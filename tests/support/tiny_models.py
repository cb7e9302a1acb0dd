"""Tiny synthetic checkpoints (docs/architecture.md#testing): random-weight
transformers models with tiny configs, converted to GGUF by htsparse_convert.
The reference output of each is the transformers forward pass itself.

The vocabulary is the size of a real GGUF's tokenizer, copied into the tiny
file, so llama.cpp loads it like any other model; only the embedding and
output rows are that large, the decoder is 64 wide.

The fixtures at the end are session-scoped; conftest.py makes them
available to every test module.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Sequence

import numpy as np
import pytest
import torch
from transformers import (
    Gemma3Config,
    Gemma3ForCausalLM,
    Gemma3ForConditionalGeneration,
    Gemma3TextConfig,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen3Config,
    Qwen3ForCausalLM,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
    SmolVLMConfig,
    SmolVLMForConditionalGeneration,
)

from htsparse_convert import GgufVocab, write_text_gguf

# A small decoder that still has what the runtime must get right: GQA (4 query
# heads on 2 KV heads), several layers, head_dim 16 so M-RoPE has 8 pairs.
DECODER = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=1024,
    rms_norm_eps=1e-2,  # large enough that a misread epsilon shows in the logits
)
MROPE_SECTION = [2, 3, 3]  # t, h, w pairs: sums to head_dim / 2
# Vision towers the decoder fixtures build (the HF classes need one), never converted.
VISION_2_5 = dict(
    depth=1, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64, fullatt_block_indexes=[0]
)
VISION_2 = dict(depth=1, embed_dim=32, hidden_size=64, num_heads=2, mlp_ratio=2)
# Vision towers that convert to an mmproj: upstream's converter maps the
# merger's mlp.{0,2} through its per-block table, so depth >= 3; layer 1 is
# the full-attention one of 2.5-VL's window pattern (n_wa_pattern 2), so both
# kinds run; the MLP is wider than the tower (clip.cpp reads a square one
# swapped). Qwen2-VL's 4x MLP (128) differs from its output width (64), which
# upstream writes as feed_forward_length.
VISION_2_5_MMPROJ = dict(VISION_2_5, depth=3, fullatt_block_indexes=[1])
VISION_2_MMPROJ = dict(VISION_2, depth=3, mlp_ratio=4)
# SmolVLM2's SigLIP tower: 64x64 tiles of 8x8 patches, pixel-shuffled 2x2
# (scale_factor) into 16 tokens of 4 * 32 features for the connector.
SMOLVLM_VISION = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2, image_size=64, patch_size=8
)


@dataclass
class TinyModel:
    arch: str  # GGUF architecture
    gguf_path: Path
    torch_model: torch.nn.Module
    config: Any

    @property
    def label(self) -> str:
        return f"{self.arch} ({type(self.torch_model).__name__})"

    @property
    def n_vocab(self) -> int:
        return self.config.get_text_config().vocab_size


def randomize_(model: torch.nn.Module, seed: int) -> None:
    """Re-draws every parameter so the forward pass is far from degenerate.

    transformers' init (std 0.02, norms 1, biases 0) gives near-uniform
    attention and logits within ~0.1 of each other, where any rounding flips
    the arg-max. Here linear maps keep unit scale (std 1/sqrt(fan_in)), Q and K
    are 1.5x so attention scores spread over a few units, norms and biases are
    non-trivial, and the output rows give logits of std ~3.
    """
    gen = torch.Generator().manual_seed(seed)

    def normal(shape: Sequence[int], std: float, mean: float = 0.0) -> torch.Tensor:
        return torch.randn(*shape, generator=gen) * std + mean

    with torch.no_grad():
        for name, p in model.named_parameters():  # a tied lm_head is listed once
            if name.endswith("norm.weight") or name.endswith("norm1.weight") or name.endswith("norm2.weight"):
                p.copy_(normal(p.shape, 0.1, 1.0))
            elif name.endswith(".bias"):
                p.copy_(normal(p.shape, 0.3))
            elif "embed_tokens" in name or "lm_head" in name:
                p.copy_(normal(p.shape, 3.0 / np.sqrt(p.shape[-1])))
            elif p.ndim >= 2:
                gain = 1.5 if ("q_proj" in name or "k_proj" in name) else 1.0
                fan_in = int(np.prod(p.shape[1:]))
                p.copy_(normal(p.shape, gain / np.sqrt(fan_in)))
            else:
                p.copy_(normal(p.shape, 0.1))
    model.eval()


def qwen2_model(n_vocab: int, seed: int = 0) -> torch.nn.Module:
    """Qwen2ForCausalLM: q/k/v biases, tied embeddings, NEOX rope."""
    config = Qwen2Config(vocab_size=n_vocab, tie_word_embeddings=True, rope_theta=10000.0, **DECODER)
    model = Qwen2ForCausalLM(config)
    assert model.lm_head.weight is model.model.embed_tokens.weight, "expected tied embeddings"
    randomize_(model, seed)
    return model


def qwen3_model(n_vocab: int, seed: int = 5) -> torch.nn.Module:
    """Qwen3ForCausalLM: per-head q/k RMS norms before rope, no biases, tied
    embeddings, NEOX rope, and a head_dim that is not hidden_size / heads (as
    in the released sizes: 128 at hidden 1024 with 16 heads), so a runtime
    that derives it fails here."""
    config = Qwen3Config(vocab_size=n_vocab, tie_word_embeddings=True, head_dim=32, rope_theta=1000000.0, **DECODER)
    model = Qwen3ForCausalLM(config)
    assert model.lm_head.weight is model.model.embed_tokens.weight, "expected tied embeddings"
    randomize_(model, seed)
    return model


# Gemma 3's layer kinds: global layers at 0 and 3 (so HT-Sparse can select at
# layer 0 and at 3), window layers around them; not the 5:1 default pattern,
# so the converter writes the per-layer flags. A 16-token window, so short
# prompts already run past it.
GEMMA3_LAYERS = ["full_attention", "sliding_attention", "sliding_attention", "full_attention", "sliding_attention"]
GEMMA3_WINDOW = 16


def gemma3_text_config(n_vocab: int) -> Gemma3TextConfig:
    return Gemma3TextConfig(
        vocab_size=n_vocab,
        head_dim=16,
        query_pre_attn_scalar=16,
        sliding_window=GEMMA3_WINDOW,
        layer_types=GEMMA3_LAYERS,
        tie_word_embeddings=True,
        **dict(DECODER, num_hidden_layers=len(GEMMA3_LAYERS)),
    )


def gemma3_model(n_vocab: int, seed: int = 9) -> torch.nn.Module:
    """Gemma3ForCausalLM: embeddings scaled by sqrt(hidden), 1 + w norms
    before and after attention and FFN, q/k norms, GELU-tanh gated FFN, window
    layers with their own rope base, q scaled by 1/sqrt(head_dim)
    (query_pre_attn_scalar = head_dim, as llama.cpp assumes below 62 layers)."""
    model = Gemma3ForCausalLM(gemma3_text_config(n_vocab))
    randomize_(model, seed)
    return model


# Gemma 3's vision side: SmolVLM's SigLIP tower (8x8 patches of a 64x64
# image), pooled 2x2 to 16 tokens per image (clip.cpp's default pools 4x4, so
# the mmproj says the factor). Gemma 3's image tokens: <start_of_image> and
# <end_of_image> of its tokenizer around the image; the placeholder id HF
# swaps for the image rows is one past the 262144-token vocabulary, as
# <image_soft_token> is in the released models.
GEMMA3_MM_TOKENS = 16
GEMMA3_BOI, GEMMA3_EOI = 255999, 256000


def gemma3_vlm_model(n_vocab: int, seed: int = 15) -> torch.nn.Module:
    """Gemma3ForConditionalGeneration: gemma3_model's decoder (layers, window)
    and a SigLIP tower with Gemma 3's pooling projector."""
    config = Gemma3Config(
        text_config=gemma3_text_config(n_vocab).to_dict(),
        vision_config=dict(SMOLVLM_VISION, layer_norm_eps=1e-6, vision_use_head=False),
        mm_tokens_per_image=GEMMA3_MM_TOKENS,
        boi_token_index=GEMMA3_BOI,
        eoi_token_index=GEMMA3_EOI,
        image_token_index=n_vocab,
    )
    model = Gemma3ForConditionalGeneration(config)
    randomize_(model, seed)
    return model


# Qwen3-VL's tower, built for the HF class: DeepStack taps after blocks 0 and
# 1, so the text GGUF says 2 deepstack layers.
VISION_3 = dict(
    depth=3,
    hidden_size=32,
    intermediate_size=64,
    num_heads=2,
    out_hidden_size=64,
    patch_size=8,
    num_position_embeddings=16,
    deepstack_visual_indexes=[0, 1],
)
# The tower test_convert_mmproj converts: taps after blocks 1 and 2, so the
# i-th merger is not at layer i (the mmproj numbers it by the layer, as the
# released [8, 16, 24]) and one taps the last block, whose output the merger
# also reads.
VISION_3_MMPROJ = dict(VISION_3, deepstack_visual_indexes=[1, 2])


def qwen3vl_model(n_vocab: int, seed: int = 6, vision: Dict[str, Any] = VISION_3) -> torch.nn.Module:
    """Qwen3VLForConditionalGeneration: Qwen3 layers (q/k norms, head_dim 32
    apart from hidden / heads) with interleaved M-RoPE, sections [4, 6, 6] of 16 pairs."""
    rope = {"rope_type": "default", "rope_theta": 5000000.0, "mrope_section": [4, 6, 6], "mrope_interleaved": True}
    text = dict(DECODER, vocab_size=n_vocab, head_dim=32, rope_parameters=rope)
    config = Qwen3VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=False)
    model = Qwen3VLForConditionalGeneration(config)
    randomize_(model, seed)
    return model


def llama_model(n_vocab: int, seed: int = 1) -> torch.nn.Module:
    """LlamaForCausalLM: no biases, separate output matrix, NORMAL rope in GGUF."""
    config = LlamaConfig(vocab_size=n_vocab, tie_word_embeddings=False, rope_theta=100000.0, **DECODER)
    model = LlamaForCausalLM(config)
    randomize_(model, seed)
    return model


def _vl_text_config(n_vocab: int, mrope_section: Sequence[int]) -> Dict[str, Any]:
    rope = {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": list(mrope_section)}
    return dict(DECODER, vocab_size=n_vocab, rope_parameters=rope)


def qwen2vl_model(
    n_vocab: int, seed: int = 2, mrope_section: Sequence[int] = MROPE_SECTION, vision: Dict[str, Any] = VISION_2_5
) -> torch.nn.Module:
    """Qwen2_5_VLForConditionalGeneration with a tiny vision tower; its text
    decoder is what becomes the qwen2vl GGUF."""
    config = Qwen2_5_VLConfig(
        text_config=_vl_text_config(n_vocab, mrope_section), vision_config=vision, tie_word_embeddings=False
    )
    model = Qwen2_5_VLForConditionalGeneration(config)
    randomize_(model, seed)
    return model


def qwen2vl_v1_model(n_vocab: int, seed: int = 3, vision: Dict[str, Any] = VISION_2) -> torch.nn.Module:
    """Qwen2VLForConditionalGeneration (Qwen2-VL): same decoder layout, the other HF class."""
    config = Qwen2VLConfig(
        text_config=_vl_text_config(n_vocab, MROPE_SECTION), vision_config=vision, tie_word_embeddings=False
    )
    model = Qwen2VLForConditionalGeneration(config)
    randomize_(model, seed)
    return model


def smolvlm_model(n_vocab: int, seed: int = 4) -> torch.nn.Module:
    """SmolVLMForConditionalGeneration (SmolVLM2): a llama decoder at
    model.text_model., a SigLIP tower and a linear connector."""
    config = SmolVLMConfig(
        text_config=dict(DECODER, vocab_size=n_vocab, tie_word_embeddings=False),
        vision_config=SMOLVLM_VISION,
        scale_factor=2,
        tie_word_embeddings=False,
    )
    model = SmolVLMForConditionalGeneration(config)
    randomize_(model, seed)
    return model


def attention_eager(model: torch.nn.Module) -> torch.nn.Module:
    """Plain matmul-softmax attention in the reference (no fused kernels)."""
    model.set_attn_implementation("eager")
    return model


def convert(model: torch.nn.Module, path: Path, vocab: GgufVocab, out_type: str = "f32", config: Any = None) -> Path:
    """Writes `model` (its config, or `config` to override it) as a GGUF."""
    tensors = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
    return write_text_gguf(
        path, tensors, config if config is not None else model.config, vocab_from=vocab, out_type=out_type
    )


# -- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def qwen_vocab(qwen_gguf) -> GgufVocab:
    """The Qwen2.5 tokenizer (151936 tokens), read once."""
    return GgufVocab(qwen_gguf)


@pytest.fixture(scope="session")
def smollm_vocab(smollm_gguf) -> GgufVocab:
    """The SmolLM2 tokenizer (49152 tokens), read once."""
    return GgufVocab(smollm_gguf)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("tiny_models")


def _tiny(arch: str, model: torch.nn.Module, path: Path, vocab: GgufVocab) -> TinyModel:
    """An eager-attention reference model and its f32 GGUF."""
    model = attention_eager(model)
    return TinyModel(arch, convert(model, path, vocab), model, model.config)


@pytest.fixture(scope="session")
def tiny_qwen2(qwen_vocab, tiny_dir) -> TinyModel:
    return _tiny("qwen2", qwen2_model(qwen_vocab.n_tokens), tiny_dir / "qwen2-f32.gguf", qwen_vocab)


@pytest.fixture(scope="session")
def tiny_qwen3(qwen_vocab, tiny_dir) -> TinyModel:
    return _tiny("qwen3", qwen3_model(qwen_vocab.n_tokens), tiny_dir / "qwen3-f32.gguf", qwen_vocab)


@pytest.fixture(scope="session")
def tiny_qwen3vl(qwen_vocab, tiny_dir) -> TinyModel:
    return _tiny("qwen3vl", qwen3vl_model(qwen_vocab.n_tokens), tiny_dir / "qwen3vl-f32.gguf", qwen_vocab)


@pytest.fixture(scope="session")
def gemma_vocab(gemma_gguf) -> GgufVocab:
    """The Gemma 3 tokenizer (262144 tokens), read once."""
    return GgufVocab(gemma_gguf)


@pytest.fixture(scope="session")
def tiny_gemma3(gemma_vocab, tiny_dir) -> TinyModel:
    return _tiny("gemma3", gemma3_model(gemma_vocab.n_tokens), tiny_dir / "gemma3-f32.gguf", gemma_vocab)


@pytest.fixture(scope="session")
def tiny_llama(smollm_vocab, tiny_dir) -> TinyModel:
    return _tiny("llama", llama_model(smollm_vocab.n_tokens), tiny_dir / "llama-f32.gguf", smollm_vocab)


@pytest.fixture(scope="session")
def tiny_llama_f16(tiny_llama, smollm_vocab, tiny_dir) -> TinyModel:
    """The same llama checkpoint written with f16 matrices."""
    m = tiny_llama
    path = convert(m.torch_model, tiny_dir / "llama-f16.gguf", smollm_vocab, out_type="f16")
    return TinyModel("llama", path, m.torch_model, m.config)


@pytest.fixture(scope="session")
def tiny_qwen2vl(qwen_vocab, tiny_dir) -> TinyModel:
    return _tiny("qwen2vl", qwen2vl_model(qwen_vocab.n_tokens), tiny_dir / "qwen2vl-f32.gguf", qwen_vocab)


@pytest.fixture(scope="session")
def tiny_qwen2vl_v1(qwen_vocab, tiny_dir) -> TinyModel:
    return _tiny("qwen2vl", qwen2vl_v1_model(qwen_vocab.n_tokens), tiny_dir / "qwen2vl-v1-f32.gguf", qwen_vocab)
