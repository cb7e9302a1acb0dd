"""HF checkpoint -> llama.cpp GGUF conversion (DESIGN.md section 1, convert/).

For now: the text decoder of qwen2, llama and qwen2vl checkpoints, f32/f16,
with the tokenizer copied from an existing GGUF. mmproj, quantisation and a
CLI come next.
"""

from .text_gguf import (
    ARCHITECTURES,
    ArchSpec,
    GgufVocab,
    TextHParams,
    VocabSource,
    gguf_tensor_name,
    read_gguf_header,
    read_gguf_metadata,
    permute_for_normal_rope,
    text_hparams,
    write_text_gguf,
)

__all__ = [
    "ARCHITECTURES",
    "ArchSpec",
    "GgufVocab",
    "TextHParams",
    "VocabSource",
    "gguf_tensor_name",
    "read_gguf_header",
    "read_gguf_metadata",
    "permute_for_normal_rope",
    "text_hparams",
    "write_text_gguf",
]
