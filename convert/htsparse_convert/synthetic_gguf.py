"""Synthetic GGUF models of a real model's shape, for speed and memory
benchmarks where the real weights cannot be had (no model hub here, 64 MiB
to a GPU machine): the architecture keys, tensor names, shapes and types a
released Qwen2.5 (qwen2) or Qwen3 (qwen3) GGUF has, the tokenizer copied from any GGUF with one, and
weights made of a repeated pseudo-random block (their values do not change
speed or memory, and writing 7B parameters takes seconds, not minutes).
Answers are meaningless.

    write_synthetic_gguf("qwen2.5-7b-synthetic-Q8_0.gguf", "qwen2.5-7b", vocab_from="vocab.gguf")

    python -m htsparse_convert.synthetic_gguf qwen2.5-7b --vocab-from vocab.gguf -o model.gguf
    python -m htsparse_convert.synthetic_gguf vocab --vocab-from model.gguf -o vocab.gguf  # tokenizer only
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, Optional, Tuple, Union

import gguf
import numpy as np

from .atomic import write_gguf
from .text_gguf import GgufVocab

PathLike = Union[str, Path]


@dataclass(frozen=True)
class Shape:
    """A text decoder's hyper-parameters: qwen2 (q/k/v biases), qwen3 and
    qwen3vl (per-head q/k norms, no biases, head_dim given apart from
    n_embd / n_head; qwen3vl with M-RoPE sections and DeepStack) or gemma3
    (q/k norms, norms after attention and FFN, a sliding window)."""

    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: int
    n_ff: int
    n_ctx: int = 131072  # context_length: room for 128K-token benchmarks (YaRN-extended Qwen2.5)
    rope_freq_base: float = 1000000.0
    rms_eps: float = 1e-6
    tied_embeddings: bool = False
    arch: str = "qwen2"
    head_dim: Optional[int] = None  # default n_embd / n_head; written as key_length when set
    mrope_sections: Optional[Tuple[int, ...]] = None  # qwen3vl: rope pairs per t, h, w stream
    n_deepstack: int = 0  # qwen3vl: layers that take DeepStack rows from the mmproj
    sliding_window: int = 0  # gemma3: window of the local layers (llama.cpp's default 5:1 pattern)
    rope_linear_factor: Optional[float] = None  # gemma3 4B+: the global layers' linear rope scaling

    @property
    def n_embd_head(self) -> int:
        return self.head_dim or self.n_embd // self.n_head


SHAPES: Dict[str, Shape] = {
    "qwen2.5-7b": Shape(n_layer=28, n_embd=3584, n_head=28, n_head_kv=4, n_ff=18944),
    "qwen2.5-3b": Shape(n_layer=36, n_embd=2048, n_head=16, n_head_kv=2, n_ff=11008, tied_embeddings=True),
    "qwen2.5-0.5b": Shape(n_layer=24, n_embd=896, n_head=14, n_head_kv=2, n_ff=4864, tied_embeddings=True),
    "qwen3-4b": Shape(
        n_layer=36, n_embd=2560, n_head=32, n_head_kv=8, n_ff=9728, tied_embeddings=True, arch="qwen3", head_dim=128
    ),
    "qwen3-0.6b": Shape(
        n_layer=28, n_embd=1024, n_head=16, n_head_kv=8, n_ff=3072, tied_embeddings=True, arch="qwen3", head_dim=128
    ),
    # Qwen3-VL-2B-Instruct's text decoder (its config.json): interleaved M-RoPE, DeepStack after 3 layers.
    "qwen3-vl-2b": Shape(
        n_layer=28,
        n_embd=2048,
        n_head=16,
        n_head_kv=8,
        n_ff=6144,
        tied_embeddings=True,
        arch="qwen3vl",
        head_dim=128,
        rope_freq_base=5000000.0,
        mrope_sections=(24, 20, 20, 0),
        n_deepstack=3,
    ),
    # Gemma-3-4B-it's text decoder: 1024-token windows on 5 of every 6 layers, linear rope x8 globally.
    "gemma-3-4b": Shape(
        n_layer=34,
        n_embd=2560,
        n_head=8,
        n_head_kv=4,
        n_ff=10240,
        tied_embeddings=True,
        arch="gemma3",
        head_dim=256,
        sliding_window=1024,
        rope_linear_factor=8.0,
    ),
    "tiny": Shape(n_layer=2, n_embd=256, n_head=4, n_head_kv=2, n_ff=512, n_ctx=4096),  # for tests
    "tiny-qwen3": Shape(n_layer=2, n_embd=256, n_head=4, n_head_kv=2, n_ff=512, n_ctx=4096, arch="qwen3", head_dim=96),
    "tiny-qwen3vl": Shape(
        n_layer=3,
        n_embd=256,
        n_head=4,
        n_head_kv=2,
        n_ff=512,
        n_ctx=4096,
        arch="qwen3vl",
        head_dim=64,
        mrope_sections=(12, 10, 10, 0),
        n_deepstack=2,
    ),
    "tiny-gemma3": Shape(
        n_layer=7,
        n_embd=256,
        n_head=4,
        n_head_kv=2,
        n_ff=512,
        n_ctx=4096,
        arch="gemma3",
        head_dim=64,
        sliding_window=16,
        rope_linear_factor=8.0,
    ),  # layer 5 global, 6 a window layer again
}

Q8_0_BLOCK = 32  # weights per Q8_0 block: an f16 scale and 32 int8 values
_PATTERN_BLOCKS = 4099  # blocks in the repeated pattern: a prime, so rows do not repeat in step


def tensor_shapes(shape: Shape, n_vocab: int) -> Iterator[Tuple[str, Tuple[int, ...], bool]]:
    """(GGUF name, ggml shape [ne0, ne1], is a matrix) of every tensor, in llama.cpp's file order."""
    d, hd = shape.n_embd, shape.n_embd_head
    q, kv = shape.n_head * hd, shape.n_head_kv * hd
    bias = shape.arch == "qwen2"
    yield "token_embd.weight", (d, n_vocab), True
    for i in range(shape.n_layer):
        b = f"blk.{i}."
        yield b + "attn_norm.weight", (d,), False
        yield b + "attn_q.weight", (d, q), True
        if bias:
            yield b + "attn_q.bias", (q,), False
        yield b + "attn_k.weight", (d, kv), True
        if bias:
            yield b + "attn_k.bias", (kv,), False
        yield b + "attn_v.weight", (d, kv), True
        if bias:
            yield b + "attn_v.bias", (kv,), False
        if shape.arch in ("qwen3", "qwen3vl", "gemma3"):
            yield b + "attn_k_norm.weight", (hd,), False
            yield b + "attn_q_norm.weight", (hd,), False
        yield b + "attn_output.weight", (q, d), True
        if shape.arch == "gemma3":
            yield b + "post_attention_norm.weight", (d,), False
        yield b + "ffn_norm.weight", (d,), False
        yield b + "ffn_gate.weight", (d, shape.n_ff), True
        yield b + "ffn_up.weight", (d, shape.n_ff), True
        yield b + "ffn_down.weight", (shape.n_ff, d), True
        if shape.arch == "gemma3":
            yield b + "post_ffw_norm.weight", (d,), False
    yield "output_norm.weight", (d,), False
    if not shape.tied_embeddings:
        yield "output.weight", (d, n_vocab), True


def q8_0_matrix(ne0: int, ne1: int, rng: np.random.Generator) -> np.ndarray:
    """Q8_0 bytes of an ne0 x ne1 matrix, rows of roughly N(0, 1/ne0) weights:
    a pseudo-random pattern of blocks, repeated (a broadcast view: no copy)."""
    if ne0 % Q8_0_BLOCK:
        raise ValueError(f"Q8_0 rows must be a multiple of {Q8_0_BLOCK} long, got {ne0}")
    n_blocks = ne0 // Q8_0_BLOCK * ne1
    quants = rng.integers(-127, 128, size=(_PATTERN_BLOCKS, Q8_0_BLOCK), dtype=np.int8)
    # Uniform int8 values have a standard deviation of about 73.
    scale = np.full((_PATTERN_BLOCKS, 1), 1.0 / (73.0 * np.sqrt(ne0)), dtype=np.float16)
    pattern = np.concatenate([scale.view(np.uint8), quants.view(np.uint8)], axis=1)  # 34 bytes a block
    reps = -(-n_blocks // _PATTERN_BLOCKS)
    blocks = np.broadcast_to(pattern, (reps, _PATTERN_BLOCKS, 34)).reshape(-1, 34)[:n_blocks]
    return blocks.reshape(ne1, ne0 // Q8_0_BLOCK * 34)


def write_synthetic_gguf(
    path: PathLike, shape: Union[str, Shape], vocab_from: PathLike, seed: int = 0, name: str = ""
) -> Path:
    """Writes a Q8_0 GGUF of `shape` (a SHAPES name or a Shape; its arch) with the
    tokenizer of the GGUF `vocab_from`; norms and biases in f32."""
    label = shape if isinstance(shape, str) else "custom"
    if isinstance(shape, str):
        if shape not in SHAPES:
            raise ValueError(f"unknown shape {shape!r}; known: {', '.join(SHAPES)}")
        shape = SHAPES[shape]
    vocab = GgufVocab(vocab_from)
    n_vocab = vocab.n_tokens
    rng = np.random.default_rng(seed)

    def fill(writer: "gguf.GGUFWriter") -> None:
        writer.add_name(name or f"synthetic {label} (random weights)")
        writer.add_type("model")
        writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0)
        writer.add_context_length(shape.n_ctx)
        writer.add_embedding_length(shape.n_embd)
        writer.add_block_count(shape.n_layer)
        writer.add_feed_forward_length(shape.n_ff)
        writer.add_head_count(shape.n_head)
        writer.add_head_count_kv(shape.n_head_kv)
        writer.add_rope_freq_base(shape.rope_freq_base)
        writer.add_layer_norm_rms_eps(shape.rms_eps)
        if shape.head_dim is not None:
            writer.add_key_length(shape.head_dim)
            writer.add_value_length(shape.head_dim)
        if shape.mrope_sections is not None:
            writer.add_rope_dimension_sections(list(shape.mrope_sections))
            writer.add_num_deepstack_layers(shape.n_deepstack)
        if shape.sliding_window:
            writer.add_sliding_window(shape.sliding_window)
        if shape.rope_linear_factor is not None:
            writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
            writer.add_rope_scaling_factor(shape.rope_linear_factor)
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        vocab.add_to(writer)
        for tensor, ne, is_matrix in tensor_shapes(shape, n_vocab):
            if is_matrix:
                data = q8_0_matrix(ne[0], ne[1], rng)
                writer.add_tensor(tensor, data, raw_shape=data.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
            else:
                values = (
                    np.ones(ne, np.float32)
                    if tensor.endswith("norm.weight")
                    else (0.02 * rng.standard_normal(ne)).astype(np.float32)
                )
                writer.add_tensor(tensor, values)

    return write_gguf(Path(path), shape.arch, fill)


def write_vocab_gguf(path: PathLike, vocab_from: PathLike) -> Path:
    """A GGUF holding only the tokenizer of `vocab_from` (a few MiB where the
    model is hundreds): what write_synthetic_gguf needs, small enough to
    travel to a machine without network."""
    vocab = GgufVocab(vocab_from)
    return write_gguf(Path(path), "qwen2", vocab.add_to)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Write a synthetic (random-weight) Q8_0 GGUF of a real model's shape.")
    p.add_argument("shape", choices=sorted(SHAPES) + ["vocab"], help="a model shape, or vocab: the tokenizer alone")
    p.add_argument("--vocab-from", required=True, help="a GGUF whose tokenizer.* keys are copied (any size)")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.shape == "vocab":
        out = write_vocab_gguf(args.output, args.vocab_from)
    else:
        out = write_synthetic_gguf(args.output, args.shape, args.vocab_from, seed=args.seed)
    print(f"{out}: {out.stat().st_size / 2**30:.2f} GiB", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
