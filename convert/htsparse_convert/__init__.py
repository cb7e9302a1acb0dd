"""HF checkpoint -> llama.cpp GGUF conversion (docs/architecture.md#converter).
It imports nothing of the runtime package: convert -> GGUF files -> runtime.

- convert_checkpoint: an HF checkpoint directory -> text GGUF + mmproj, any
  output type (`python -m htsparse_llama convert`).
- write_text_gguf / write_mmproj_gguf: the two writers, on in-memory tensors.
- HfVocab (tokenizer.json -> tokenizer.* keys), SpmVocab (Gemma 3's
  tokenizer.model) or GgufVocab (copied from a GGUF).
- quantize_gguf: llama.cpp's k-quant mixes through the installed libllama.
- write_gguf_with_metadata: a GGUF copied with new metadata (calibration's htsparse.* keys).
"""

from .checkpoint import CheckpointError, open_checkpoint
from .convert_checkpoint import ConvertResult, convert_checkpoint, supported_model_types
from .gguf_metadata import write_gguf_with_metadata
from .hf_vocab import HfVocab
from .mmproj_gguf import VISION_ARCHITECTURES, write_mmproj_gguf
from .quantize import K_QUANTS, quantize_gguf
from .spm_vocab import SpmVocab
from .text_gguf import (
    ARCHITECTURES,
    ArchSpec,
    GgufVocab,
    TextHParams,
    VocabSource,
    gguf_tensor_name,
    permute_for_normal_rope,
    read_gguf_header,
    read_gguf_metadata,
    text_hparams,
    write_text_gguf,
)

__all__ = [
    "ARCHITECTURES",
    "CheckpointError",
    "ConvertResult",
    "HfVocab",
    "SpmVocab",
    "K_QUANTS",
    "VISION_ARCHITECTURES",
    "convert_checkpoint",
    "open_checkpoint",
    "quantize_gguf",
    "supported_model_types",
    "write_mmproj_gguf",
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
    "write_gguf_with_metadata",
]
