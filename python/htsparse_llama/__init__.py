"""htsparse-llama: long-video question answering on llama.cpp GGUF files.

>>> from htsparse_llama import Model
>>> model = Model("qwen2.5-0.5b-instruct.gguf", n_ctx=4096)
>>> s = model.session()
>>> s.add_message("user", "Name three colours.")
>>> print("".join(s.generate(max_tokens=32, temperature=0)))
"""

from .errors import (
    AbortedError,
    BackendError,
    ContextOverflowError,
    HtsError,
    InvalidArgumentError,
    InvalidModelFileError,
    ModelNotFoundError,
    UnsupportedModelError,
)
from .model import Model, Session, supported_architectures
from .sampling import Sampling
from .sparse_config import SparseConfig
from .vision import Chunks, Vision

__version__ = "0.1.0"

__all__ = [
    "Model",
    "Session",
    "Sampling",
    "SparseConfig",
    "Vision",
    "Chunks",
    "supported_architectures",
    "HtsError",
    "InvalidArgumentError",
    "ModelNotFoundError",
    "InvalidModelFileError",
    "UnsupportedModelError",
    "ContextOverflowError",
    "BackendError",
    "AbortedError",
]
