"""gemma3 on the real gemma-3-270m (Q4_K_M, made by llama.cpp): what the
runtime reads from the file and what it refuses. Its logits against
llama.cpp are in test_parity_llamacpp.py (past the 512-token window).

The window is read: a copy of the file whose pattern marks every layer
global runs as the same file without a window, and differs from the
original; the pattern as a per-layer bool array (the form
newer converters write) runs as the number form. A window larger than the
trained context is refused at load; a sparse session is refused in one
line (HT-Sparse does not know windows yet), and `chat` says so and runs
dense."""

import subprocess
import sys

import numpy as np
import pytest

import htsparse_llama as hts
from htsparse_convert import write_gguf_with_metadata
from htsparse_llama import Model, SparseConfig

pytestmark = pytest.mark.real_model

N_LAYER, N_PROMPT = 18, 640  # past the 512-token window
WINDOW_KEYS = "gemma3.attention.sliding_window"  # prefix of the window and its pattern


@pytest.fixture(scope="module")
def prompt(gemma_gguf):
    model = Model(gemma_gguf, n_ctx=1024, n_threads=2)
    return model.tokenize("Each line of this log names a service and its state. " * 80)[:N_PROMPT]


def variant(src, tmp_path, name, **keys):
    """A copy of `src` with the window keys replaced by `keys` (none: no window)."""
    metadata = {f"{WINDOW_KEYS}{k}": v for k, v in keys.items()}
    write_gguf_with_metadata(src, tmp_path / name, metadata, replace_prefix=WINDOW_KEYS)
    return str(tmp_path / name)


def logits(path, ids):
    return Model(path, n_ctx=1024, n_threads=2).session().add_tokens(ids, all_logits=True)


def test_the_window_and_its_pattern_are_read(gemma_gguf, prompt, tmp_path):
    original = logits(gemma_gguf, prompt)
    as_flags = variant(gemma_gguf, tmp_path, "flags.gguf", **{"": 512, "_pattern": [il % 6 < 5 for il in range(18)]})
    assert Model(as_flags).info["n_swa_layers"] == 15
    assert np.array_equal(logits(as_flags, prompt), original)

    all_global = variant(gemma_gguf, tmp_path, "global.gguf", **{"": 512, "_pattern": [False] * N_LAYER})
    no_window = variant(gemma_gguf, tmp_path, "none.gguf")
    assert Model(no_window).info["n_swa"] == 0 and Model(all_global).info["n_swa_layers"] == 0
    dense = logits(no_window, prompt)
    assert np.array_equal(logits(all_global, prompt), dense)
    # Window layers also have their own rope base (10000 against 1e6), so they differ from the start.
    assert not np.allclose(dense, original, atol=1e-3)


def test_a_window_larger_than_the_context_is_refused_at_load(gemma_gguf, tmp_path):
    bad = variant(gemma_gguf, tmp_path, "wide.gguf", **{"": 65536})
    with pytest.raises(hts.InvalidModelFileError, match="sliding window 65536 is larger than the trained context"):
        Model(bad)


def test_a_sparse_session_is_refused_in_one_line(gemma_gguf):
    model = Model(gemma_gguf, n_ctx=1024, n_threads=2)
    with pytest.raises(hts.UnsupportedModelError, match="sliding-window layers"):
        model.session(sparse=SparseConfig(keep_ratio=0.2))
    dense = model.session()
    dense.add_text("Hi")
    assert dense.generate(max_tokens=2, temperature=0, stream=False) is not None  # a dense one runs


def test_chat_says_it_runs_dense_and_answers(gemma_gguf):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "htsparse_llama",
            "chat",
            "-m",
            gemma_gguf,
            "-t",
            "2",
            "--prompt",
            "Say hi.",
            "--max-tokens",
            "4",
            "--temp",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "HT-Sparse does not run on gemma3's sliding-window layers yet; this chat is dense" in proc.stderr
    assert proc.stdout.strip()
