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


# The repositories of the newer families, as their owners name the files.
QWEN3_VL = [  # Qwen/Qwen3-VL-2B-Instruct-GGUF
    ".gitattributes",
    "README.md",
    "Qwen3VL-2B-Instruct-F16.gguf",
    "Qwen3VL-2B-Instruct-Q4_K_M.gguf",
    "Qwen3VL-2B-Instruct-Q8_0.gguf",
    "mmproj-Qwen3VL-2B-Instruct-F16.gguf",
    "mmproj-Qwen3VL-2B-Instruct-Q8_0.gguf",
]
GEMMA3 = [  # ggml-org/gemma-3-4b-it-GGUF: the mmproj's name says nothing of the model
    "README.md",
    "gemma-3-4b-it-Q4_K_M.gguf",
    "gemma-3-4b-it-Q8_0.gguf",
    "gemma-3-4b-it-f16.gguf",
    "mmproj-model-f16.gguf",
]
GEMMA3_QAT = ["gemma-3-4b-it-qat-Q4_0.gguf", "mmproj-model-f16-4B.gguf"]  # ggml-org/gemma-3-4b-it-qat-GGUF
GEMMA3_UNSLOTH = [  # unsloth/gemma-3-4b-it-GGUF: BF16 beside F16, a tag ending in another (Q4_K_XL)
    "gemma-3-4b-it-BF16.gguf",
    "gemma-3-4b-it-Q4_K_M.gguf",
    "gemma-3-4b-it-UD-Q4_K_XL.gguf",
    "mmproj-BF16.gguf",
    "mmproj-F16.gguf",
    "mmproj-F32.gguf",
]
GEMMA3_BARTOWSKI = [  # bartowski/google_gemma-3-4b-it-GGUF: Q6_K beside Q6_K_L, bf16 and no f16 model
    "google_gemma-3-4b-it-Q6_K.gguf",
    "google_gemma-3-4b-it-Q6_K_L.gguf",
    "google_gemma-3-4b-it-bf16.gguf",
    "mmproj-google_gemma-3-4b-it-f16.gguf",
    "mmproj-google_gemma-3-4b-it-f32.gguf",
]
QWEN3 = [  # Qwen/Qwen3-8B-GGUF: a text model, no mmproj
    "LICENSE",
    "Qwen3-8B-Q4_K_M.gguf",
    "Qwen3-8B-Q5_0.gguf",
    "Qwen3-8B-Q5_K_M.gguf",
    "Qwen3-8B-Q6_K.gguf",
    "Qwen3-8B-Q8_0.gguf",
]


@pytest.mark.parametrize(
    "files, quant, expected",
    [
        (QWEN3_VL, None, ("Qwen3VL-2B-Instruct-Q4_K_M.gguf", "mmproj-Qwen3VL-2B-Instruct-F16.gguf")),
        (QWEN3_VL, "q8_0", ("Qwen3VL-2B-Instruct-Q8_0.gguf", "mmproj-Qwen3VL-2B-Instruct-F16.gguf")),
        (QWEN3_VL, "F16", ("Qwen3VL-2B-Instruct-F16.gguf", "mmproj-Qwen3VL-2B-Instruct-F16.gguf")),
        (GEMMA3, None, ("gemma-3-4b-it-Q4_K_M.gguf", "mmproj-model-f16.gguf")),
        (GEMMA3, "f16", ("gemma-3-4b-it-f16.gguf", "mmproj-model-f16.gguf")),
        (GEMMA3_QAT, None, ("gemma-3-4b-it-qat-Q4_0.gguf", "mmproj-model-f16-4B.gguf")),
        (GEMMA3_UNSLOTH, None, ("gemma-3-4b-it-Q4_K_M.gguf", "mmproj-F16.gguf")),  # not mmproj-BF16
        (GEMMA3_UNSLOTH, "bf16", ("gemma-3-4b-it-BF16.gguf", "mmproj-F16.gguf")),
        (GEMMA3_UNSLOTH, "Q4_K_XL", ("gemma-3-4b-it-UD-Q4_K_XL.gguf", "mmproj-F16.gguf")),
        (GEMMA3_BARTOWSKI, "Q6_K", ("google_gemma-3-4b-it-Q6_K.gguf", "mmproj-google_gemma-3-4b-it-f16.gguf")),
        (GEMMA3_BARTOWSKI, "q6_k_l", ("google_gemma-3-4b-it-Q6_K_L.gguf", "mmproj-google_gemma-3-4b-it-f16.gguf")),
        # Some name the mmproj after the model.
        (
            ["Qwen2.5-VL-3B-Instruct-q8_0.gguf", "Qwen2.5-VL-3B-Instruct-mmproj-f16.gguf"],
            None,
            ("Qwen2.5-VL-3B-Instruct-q8_0.gguf", "Qwen2.5-VL-3B-Instruct-mmproj-f16.gguf"),
        ),
    ],
)
def test_pick_files_of_the_newer_families(files, quant, expected):
    assert pick_files(files, quant) == expected


def test_a_tag_is_a_whole_part_of_the_name():
    """F16 is not BF16's tail, nor Q4_K the start of Q4_K_XL: a model asked
    for in a type the repository lacks is refused, not swapped for another."""
    with pytest.raises(InvalidArgumentError, match="no model GGUF tagged F16 .*google_gemma-3-4b-it-bf16.gguf"):
        pick_files(GEMMA3_BARTOWSKI, "F16")
    with pytest.raises(InvalidArgumentError, match="no model GGUF tagged Q4_K_S"):
        pick_files(GEMMA3_UNSLOTH, "Q4_K_S")


def test_a_text_model_repository():
    """Qwen3's repositories have no mmproj: the model alone for a text chat,
    and a video or image needs one (the error says what to do)."""
    assert pick_files(QWEN3, mmproj=False) == ("Qwen3-8B-Q4_K_M.gguf", None)
    assert pick_files(QWEN3, "Q5_K_M", mmproj=False) == ("Qwen3-8B-Q5_K_M.gguf", None)
    assert pick_files(QWEN3_VL, mmproj=False) == ("Qwen3VL-2B-Instruct-Q4_K_M.gguf", None)  # the mmproj unused
    with pytest.raises(InvalidArgumentError, match="no mmproj GGUF .*without --video/--image"):
        pick_files(QWEN3)


def offline_chat(tmp_path, *args):
    """`chat` with the hub offline (an empty HF_HOME): its exit code and non-empty stderr lines."""
    pytest.importorskip("huggingface_hub")
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path))
    r = subprocess.run(
        [sys.executable, "-m", "htsparse_llama", "chat", *args, "--prompt", "hi"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert "Traceback" not in r.stderr
    return r.returncode, [line for line in r.stderr.splitlines() if line.strip()]


def test_cli_text_chat_from_a_repository_without_network(tmp_path):
    """chat --hf-repo without --video/--image fetches the model alone (here
    offline: the one line that says so, not a refusal of the flags)."""
    rc, lines = offline_chat(tmp_path, "--hf-repo", "Qwen/Qwen3-8B-GGUF")
    assert rc != 0
    assert len(lines) == 1 and "could not get Qwen/Qwen3-8B-GGUF from Hugging Face" in lines[0], lines


def test_cli_without_network_is_one_clear_line(tmp_path):
    repo = "ggml-org/SmolVLM2-500M-Video-Instruct-GGUF"
    rc, lines = offline_chat(tmp_path, "--video", "packaged:clip", "--hf-repo", repo)
    assert rc != 0
    assert len(lines) == 1 and f"could not get {repo} from Hugging Face" in lines[0], lines


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
    r = subprocess.run(  # a text chat too
        [sys.executable, "-m", "htsparse_llama", "chat", "--hf-repo", "a/b", "-m", "x.gguf", "--prompt", "hi"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode != 0 and "either --hf-repo or -m/--mmproj" in r.stderr
