"""Shared fixtures: real small GGUF models from the package index (fetched once
into the cache; tests that need them skip only when the index is unreachable),
and, imported from tests/support/ once for every test module, the fixtures
built on them (tiny models, tiny VLMs, the demo model, checkpoints, the
upstream converter, the CMake build). Module-scoped ones are still made once
per test module that asks for them."""

import pytest

from htsparse_llama.fetch.packaged import ModelUnavailable, fetch_packaged_model
from support.cli import demo_model  # noqa: F401  (fixtures for every test)
from support.cmake_build import cmake_build  # noqa: F401  (one CMake build for the C and C++ tests)
from support.hf_checkpoints import rebuilt_dirs  # noqa: F401
from support.sparse_helpers import tiny  # noqa: F401
from support.tiny_models import (  # noqa: F401
    gemma_vocab,
    qwen_vocab,
    smollm_vocab,
    tiny_dir,
    tiny_gemma3,
    tiny_llama,
    tiny_llama_f16,
    tiny_qwen2,
    tiny_qwen2vl,
    tiny_qwen2vl_v1,
    tiny_qwen3,
    tiny_qwen3vl,
)
from support.tiny_vlms import gemma3_vlm, qwen_vl, smolvlm  # noqa: F401
from support.upstream_converter import upstream_converter  # noqa: F401


def _packaged(name):
    try:
        return str(fetch_packaged_model(name))
    except ModelUnavailable as exc:
        pytest.skip(f"no network to fetch {name}: {exc}")


@pytest.fixture(scope="session")
def qwen_gguf():
    """Qwen2.5-Coder-0.5B-Instruct (qwen2), Q4/Q5/Q6 mixed, 491 MB."""
    return _packaged("qwen2.5-coder-0.5b")


@pytest.fixture(scope="session")
def gemma_gguf():
    """gemma-3-270m (gemma3), Q4_K_M from llama.cpp, 241 MB: four packages concatenated."""
    return _packaged("gemma-3-270m")


@pytest.fixture(scope="session")
def smollm_gguf():
    """SmolLM2-135M-Instruct (llama), Q4_1."""
    return _packaged("smollm2-135m")
