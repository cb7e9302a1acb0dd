"""gemma3 on the real gemma-3-270m (Q4_K_M, made by llama.cpp): what the
runtime reads from the file and what it refuses. Its logits against
llama.cpp are in test_parity_llamacpp.py (past the 512-token window).

The window is read: a copy of the file whose pattern marks every layer
global runs as the same file without a window, and differs from the
original; the pattern as a per-layer bool array (the form
newer converters write) runs as the number form. A window larger than the
trained context is refused at load; a sparse session selects at a global
layer, and `chat` answers."""

import subprocess
import sys

import numpy as np
import pytest

import htsparse_llama as hts
from htsparse_convert import write_gguf_with_metadata
from htsparse_llama import Model, SparseConfig
from htsparse_llama.tasks.text import passkey

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


def test_a_sparse_session_selects_at_a_global_layer(gemma_gguf):
    """HT-Sparse on the real model (tests/test_gemma3_sparse.py has the exact
    checks): the default select layer, round(18 / 6) = 3, is a window layer,
    so selection moves to the first global one, 5; window layers are neither
    scored nor routed, and the cache after the answer holds less than dense."""
    model = Model(gemma_gguf, n_ctx=2048, n_threads=2)
    p = passkey(model, seed=4, n_lines=60)
    s = model.session(sparse=SparseConfig(keep_ratio=0.2))
    s.add_tokens(p.prefix)
    s.add_tokens(p.span, sparse=True)
    s.add_tokens(p.suffix)
    assert s.generate(max_tokens=4, temperature=0, stream=False) is not None
    st = s.stats()
    assert 0.2 * len(p.span) <= st.n_kept < 0.4 * len(p.span)
    assert st.full_heads == []  # layers [0, 5) are all window layers: nothing to route
    assert all(not any(s.selection["kv_head_score"][il]) for il in range(18) if il % 6 < 5)
    dense = model.session()
    dense.add_tokens(p.prefix + p.span + p.suffix)
    dense.generate(max_tokens=4, temperature=0, stream=False)
    # Only the 3 global layers shrink: at 820 tokens the 15 window rings (768 rows) hold about everything.
    assert st.kv_bytes < dense.stats().kv_bytes


def test_chat_answers(gemma_gguf):
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
    assert "does not run" not in proc.stderr
    assert proc.stdout.strip()
