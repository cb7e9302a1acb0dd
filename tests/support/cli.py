"""The CLI run as a person runs it (`python -m htsparse_llama ...`, no
terminal on stdin) and the demo model it falls back to without -m, made
once per test module (test_video_chat, test_explain, test_server)."""

import subprocess
import sys

import pytest


def cli(*args, timeout=600):
    return subprocess.run(
        [sys.executable, "-m", "htsparse_llama", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


@pytest.fixture(scope="module")
def demo_model(qwen_gguf):
    """Makes the demo model once (the CLI would on first use): (text GGUF, mmproj)."""
    from htsparse_llama.fetch.demo_model import default_model_paths

    return default_model_paths()
