"""HT-Sparse as a user meets it: a session made with a SparseConfig, a long
document marked sparse in a chat turn, the answer, follow-ups, stats(), the
CLI's --context-file; and clear refusals."""

import subprocess
import sys

import numpy as np
import pytest

import htsparse_llama as hts
from htsparse_llama import Model, SparseConfig
from support.haystack import QUESTION, haystack


@pytest.fixture(scope="module")
def qwen(qwen_gguf):
    return Model(qwen_gguf, n_ctx=2048, n_threads=2)


def ask(session, doc, question=QUESTION):
    session.add_message("user", [{"text": doc, "sparse": True}, {"text": "\n" + question}])
    return session.generate(max_tokens=8, temperature=0, stream=False)


def test_sparse_session_answers_like_dense_with_less_kv(qwen):
    doc = haystack()
    dense = qwen.session()
    assert ask(dense, doc).strip() == "42817"
    s = qwen.session(sparse=SparseConfig(keep_ratio=0.1, select_layer=4, full_head_ratio=0.25))
    assert ask(s, doc).strip() == "42817"
    st = s.stats()
    assert st.n_sparse > 900 and 0.1 * st.n_sparse <= st.n_kept < 0.15 * st.n_sparse
    # Default prune layer = select layer: full heads are a quarter of the KV heads of layers [0, 4).
    assert (st.select_layer, st.prune_layer) == (4, 4)
    assert len(st.full_heads) == round(0.25 * 4 * qwen.info["n_head_kv"]) and all(il < 4 for il, _ in st.full_heads)
    dense_st = dense.stats()
    assert st.kv_bytes < dense_st.kv_bytes <= st.kv_bytes_dense and st.kv_bytes_peak < dense_st.kv_bytes_peak
    assert (
        set(st.prefill_ms) >= {"prompt", "question", "select", "pruned_zone"} and st.ttft_ms > 0 and st.decode_tok_s > 0
    )
    assert "kept" in st.line() and "less than dense" in st.line()
    # A follow-up reuses the routing and the compacted cache.
    s.add_message("user", "Say it again.")
    assert "42817" in s.generate(max_tokens=16, temperature=0, stream=False)
    # reset() starts over with an empty cache and a fresh selection.
    s.reset()
    assert s.kv_bytes == 0
    assert ask(s, doc).strip() == "42817"


def test_dense_session_treats_sparse_text_as_text(smollm_gguf):
    model = Model(smollm_gguf, n_ctx=512, n_threads=2)
    a, b = model.session(), model.session()
    a.add_text("some long document\n", sparse=True)
    b.add_text("some long document\n")
    assert np.array_equal(a.logits(), b.logits()) and a.stats().n_sparse == 0


def test_refusals(smollm_gguf):
    model = Model(smollm_gguf, n_ctx=512, n_threads=2)
    with pytest.raises(hts.InvalidArgumentError, match="keep_ratio"):
        model.session(sparse=SparseConfig(keep_ratio=3.0))
    with pytest.raises(hts.InvalidArgumentError, match="SparseConfig"):
        model.session(sparse={"keep_ratio": 0.2})
    s = model.session(sparse=SparseConfig())
    s.add_text("line one\nline two\n", sparse=True)
    with pytest.raises(hts.InvalidArgumentError, match="all_logits"):
        s.add_tokens([10, 11], all_logits=True)
    s.add_text("What is on line two?")
    s.generate(max_tokens=1, temperature=0, stream=False)
    with pytest.raises(hts.InvalidArgumentError, match="before the first question"):
        s.add_text("another\n", sparse=True)
    with pytest.raises(hts.InvalidArgumentError, match="parts"):
        s.add_message("user", [{"sparse": True}])


def test_hand_decoding_selects_on_logits_and_reports_the_selection(smollm_gguf):
    """add_tokens/logits instead of generate(): logits() runs the waiting
    selection, `selection` shows it, select(replace_kept) keeps other lines."""
    model = Model(smollm_gguf, n_ctx=1024, n_threads=2)
    doc = haystack(n_lines=30, where=12)
    s = model.session(sparse=SparseConfig(keep_ratio=0.2, select_layer=2))
    s.add_text(doc, sparse=True)
    s.add_text("\n" + QUESTION)
    assert s.selection is None
    logits = s.logits()
    kept = s.selection["kept_in_span"]
    assert s.stats().n_kept == len(kept) > 0 and logits.shape == (model.n_vocab,)
    assert s.select() is None  # nothing waits any more
    b = model.session(sparse=SparseConfig(keep_ratio=0.2, select_layer=2))
    b.add_text(doc, sparse=True)
    b.add_text("\n" + QUESTION)
    first_line = list(range(len(model.tokenize(doc.splitlines(keepends=True)[0]))))
    assert b.select(lambda picked: first_line)["kept_in_span"] == first_line
    assert b.stats().n_kept == len(first_line) and not np.array_equal(b.logits(), logits)
    assert model.session().select() is None and model.session().selection is None


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "htsparse_llama", *args], capture_output=True, text=True, timeout=600)


def test_cli_context_file_with_stats(qwen_gguf, tmp_path):
    doc = tmp_path / "log.txt"
    doc.write_text(haystack(seed=9, key=61524, where=50))
    common = [
        "generate",
        "-m",
        qwen_gguf,
        "-t",
        "2",
        "-c",
        "2048",
        "--temp",
        "0",
        "-n",
        "8",
        "-p",
        QUESTION,
        "--context-file",
        str(doc),
    ]
    sparse = run_cli(*common, "--keep-ratio", "0.1", "--select-layer", "4", "--stats")
    assert sparse.returncode == 0, sparse.stderr
    assert sparse.stdout.strip() == "61524"
    assert "kept" in sparse.stderr and "less than dense" in sparse.stderr
    pruned_early = run_cli(*common, "--keep-ratio", "0.1", "--select-layer", "4", "--prune-layer", "4")
    assert pruned_early.returncode == 0 and pruned_early.stdout.strip() == "61524", pruned_early.stderr
    dense = run_cli(*common, "--dense")
    assert dense.returncode == 0 and dense.stdout.strip() == "61524"


@pytest.mark.parametrize(
    "extra, fragment",
    [
        pytest.param(
            ["--context-file", "/nonexistent/doc.txt"], "cannot read --context-file", id="missing-context-file"
        ),
        pytest.param(["--keep-ratio", "2"], "keep_ratio must be in (0, 1]", id="keep-ratio=2"),
        pytest.param(["--prune-layer", "3"], "prune_layer must be in [select_layer=5, 30]", id="prune-before-select"),
        pytest.param(["--select-layer", "99"], "select_layer must be in [0, 30]", id="select-layer=99"),
    ],
)
def test_cli_bad_sparse_options(smollm_gguf, extra, fragment):
    proc = run_cli("generate", "-m", smollm_gguf, "-p", "hi", "-n", "2", *extra)
    # Out of the declared range: a bad flag (2, before anything loads); past the model's limits: an error (1).
    assert proc.returncode == (2 if extra[0] == "--keep-ratio" else 1)
    assert fragment in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
