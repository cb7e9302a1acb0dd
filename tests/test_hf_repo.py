"""--hf-repo: picking a VLM's GGUF and mmproj among a repository's files (no
network needed), and the one-line error when the hub cannot be reached."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from htsparse_llama.errors import InvalidArgumentError
from htsparse_llama.fetch.hf_repo import parse_spec, pick_files

# The file list of a typical ggml-org VLM repository.
FILES = [
    ".gitattributes",
    "README.md",
    "SmolVLM2-500M-Video-Instruct-f16.gguf",
    "SmolVLM2-500M-Video-Instruct-Q8_0.gguf",
    "SmolVLM2-500M-Video-Instruct-Q4_K_M.gguf",
    "mmproj-SmolVLM2-500M-Video-Instruct-Q8_0.gguf",
    "mmproj-SmolVLM2-500M-Video-Instruct-f16.gguf",
]


def test_parse_spec():
    assert parse_spec("ggml-org/SmolVLM2-500M-Video-Instruct-GGUF") == (
        "ggml-org/SmolVLM2-500M-Video-Instruct-GGUF",
        None,
    )
    assert parse_spec("a/b:q8_0") == ("a/b", "q8_0")


@pytest.mark.parametrize("bad", ["noslash", "a/b/c", "/b", "a/"])
def test_parse_spec_refuses(bad):
    with pytest.raises(InvalidArgumentError, match="OWNER/NAME"):
        parse_spec(bad)


def test_pick_files():
    assert pick_files(FILES) == (
        "SmolVLM2-500M-Video-Instruct-Q4_K_M.gguf",
        "mmproj-SmolVLM2-500M-Video-Instruct-f16.gguf",
    )
    assert pick_files(FILES, "q8_0")[0] == "SmolVLM2-500M-Video-Instruct-Q8_0.gguf"
    assert pick_files(FILES, "F16")[0] == "SmolVLM2-500M-Video-Instruct-f16.gguf"
    only_q8 = [f for f in FILES if "Q4_K_M" not in f and "f16" not in f]
    assert pick_files(only_q8) == (
        "SmolVLM2-500M-Video-Instruct-Q8_0.gguf",
        "mmproj-SmolVLM2-500M-Video-Instruct-Q8_0.gguf",
    )
    with pytest.raises(InvalidArgumentError, match="no model GGUF tagged Q5_K_S.*Q4_K_M.gguf"):
        pick_files(FILES, "Q5_K_S")
    with pytest.raises(InvalidArgumentError, match="no mmproj"):
        pick_files([f for f in FILES if "mmproj" not in f])
    with pytest.raises(InvalidArgumentError, match="no model GGUF"):
        pick_files(["README.md", "mmproj-x-f16.gguf"])


def test_cli_without_network_is_one_clear_line(tmp_path):
    pytest.importorskip("huggingface_hub")
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path))
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "htsparse_llama",
            "chat",
            "--video",
            "packaged:clip",
            "--hf-repo",
            "ggml-org/SmolVLM2-500M-Video-Instruct-GGUF",
            "--prompt",
            "hi",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert r.returncode != 0
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "could not get ggml-org/SmolVLM2-500M-Video-Instruct-GGUF from Hugging Face" in lines[0]
    assert "Traceback" not in r.stderr


def test_cli_hf_repo_and_model_conflict():
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "htsparse_llama",
            "chat",
            "--video",
            "packaged:clip",
            "--hf-repo",
            "a/b",
            "-m",
            "x.gguf",
            "--mmproj",
            "y.gguf",
            "--prompt",
            "hi",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode != 0 and "either --hf-repo or -m/--mmproj" in r.stderr
