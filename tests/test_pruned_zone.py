"""Staged prefill with a pruned zone (docs/architecture.md#staged-prefill):
the sparse span runs through layers [0, P) only, selection happens when the
answer starts, and only the kept tokens run through [P, L).

The exact checks run on the tiny f32 llama (3 layers, GQA 4/2): on quantised
weights ggml's CPU matrix kernels round differently for different batch
sizes (llama.cpp itself changes its logits by 0.6 on SmolLM2-Q4 when a
prompt is fed as 3 + 343 tokens instead of 346), and staged prefill batches
the prompt differently from one dense pass."""

import numpy as np
import pytest

import htsparse_llama as hts
from htsparse_llama import Model, SparseConfig
from htsparse_llama.tasks.text import passkey
from support.memory_plan import capacity
from support.sparse_helpers import dense_over_cells, rel_l2


@pytest.fixture(scope="module")
def smollm(smollm_gguf):
    return Model(smollm_gguf, n_ctx=1024, n_threads=2)


@pytest.fixture(scope="module")
def prompt(smollm):
    return passkey(smollm, seed=3, n_lines=24)  # the tiny llama shares SmolLM2's tokenizer


def sparse_answer(model, prompt, config, n=4):
    """prefix, sparse span, question; greedy answer; the session after it."""
    s = model.session(sparse=config)
    s.add_tokens(prompt.prefix)
    s.add_text(model.detokenize(prompt.span), sparse=True)
    s.add_tokens(prompt.suffix)
    text = s.generate(max_tokens=n, temperature=0, stream=False)
    return text, s


def dense_answer(model, ids, n=4):
    s = model.session()
    s.add_tokens(ids)
    return s.generate(max_tokens=n, temperature=0, stream=False), s


def staged_without_selection(model, prompt, prune_layer, n=4):
    """The same batches as a sparse session, every token finishing: prefix,
    then span and question held at P, then all of them through [P, L)."""
    s = model.session()
    s.add_tokens(prompt.prefix)
    if prune_layer < model.n_layer:
        s._context._hold_from_layer(prune_layer)
    s.add_tokens(prompt.span)
    s.add_tokens(prompt.suffix)
    if prune_layer < model.n_layer:
        s._context._finish_held()
    return s.generate(max_tokens=n, temperature=0, stream=False), s


@pytest.mark.parametrize("select_layer, prune_layer", [(1, 1), (1, 2), (1, 3)])
def test_keeping_everything_with_full_heads_is_dense(tiny, prompt, select_layer, prune_layer):
    """keep_ratio = full_head_ratio = 1: the pruned zone sees every token, so
    the answer is the dense one, for S = P (selection probe), S < P and P = L:
    bit for bit against the same batches without selection, and within
    batching noise (measured 5.8e-4 to 6.2e-4 rel L2) of one dense pass."""
    config = SparseConfig(keep_ratio=1.0, full_head_ratio=1.0, select_layer=select_layer, prune_layer=prune_layer)
    text, s = sparse_answer(tiny, prompt, config)
    assert s.tokens()[: s.n_past - 4] == prompt.prefix + prompt.span + prompt.suffix  # the span round-trips as text
    assert s.stats().n_kept == len(prompt.span)
    same_text, same = staged_without_selection(tiny, prompt, prune_layer)
    assert text == same_text and np.array_equal(s.logits(), same.logits())
    want_text, dense = dense_answer(tiny, prompt.prefix + prompt.span + prompt.suffix)
    assert text == want_text and rel_l2(s.logits(), dense.logits()) < 1e-3


@pytest.fixture(scope="module", params=["tiny_llama", "tiny_qwen3"])
def tiny_of_each_arch(request):
    """The tiny f32 model of each decoder family, one thread (see support/sparse_helpers.tiny)."""
    return Model(str(request.getfixturevalue(request.param).gguf_path), n_ctx=1024, n_threads=1)


def test_pruning_from_layer_0_equals_dropping_the_tokens(tiny_of_each_arch):
    """S = P = 0: unselected tokens are never computed, so the result is a
    dense pass over the kept tokens at their original positions (bit for bit:
    the same batches, the kept tokens at the same compact cells). Qwen3's
    q/k norms run on the kept tokens alone, like everything else."""
    tiny = tiny_of_each_arch
    prompt = passkey(tiny, seed=3, n_lines=24)
    config = SparseConfig(keep_ratio=0.3, select_layer=0, prune_layer=0)
    text, s = sparse_answer(tiny, prompt, config)
    begin, end = s._sparse.span
    kept_in_span = [begin + v for v in s.selection["kept_in_span"]]
    assert 0.3 * (end - begin) <= len(kept_in_span) < 0.45 * (end - begin)
    rest = kept_in_span + list(range(end, s.n_past - 4))  # the question, not the 4 answer tokens
    all_ids = s.tokens()
    ref_text, ref = dense_over_cells(tiny, prompt.prefix, all_ids, rest)
    assert text == ref_text
    assert np.array_equal(s.logits(), ref.logits())
    # And it is not the full-context answer: the dropped tokens mattered.
    _, full = dense_answer(tiny, all_ids[: s.n_past - 4])
    assert rel_l2(full.logits(), ref.logits()) > 1e-2


def test_two_spans_from_layer_0_equal_dropping_their_tokens(tiny, prompt):
    """Two sparse spans with text between them, S = P = 0: each span keeps
    its own share, the text between and after them is kept whole, and the
    result is a dense pass over exactly those tokens at their positions."""
    cut = prompt.seg_starts[len(prompt.seg_starts) // 2]
    between = tiny.tokenize("\nAnd the second half of the log:\n")
    s = tiny.session(sparse=SparseConfig(keep_ratio=0.3, select_layer=0, prune_layer=0))
    s.add_tokens(prompt.prefix)
    s.add_tokens(prompt.span[:cut], sparse=True)
    s.add_tokens(between)
    s.add_tokens(prompt.span[cut:], sparse=True)
    s.add_tokens(prompt.suffix)
    text = s.generate(max_tokens=4, temperature=0, stream=False)
    spans = s._sparse.spans
    assert spans == [
        (len(prompt.prefix), len(prompt.prefix) + cut),
        (len(prompt.prefix) + cut + len(between), len(prompt.prefix) + len(prompt.span) + len(between)),
    ]
    kept = [spans[0][0] + v for v in s.selection["kept_in_span"]]
    for b, e in spans:
        assert 0.3 * (e - b) <= sum(b <= c < e for c in kept) < 0.5 * (e - b)
    assert all(any(b <= c < e for b, e in spans) for c in kept) and s.stats().n_kept == len(kept)
    dropped = set().union(*(range(b, e) for b, e in spans)) - set(kept)
    cells = [c for c in range(len(prompt.prefix), s.n_past - 4) if c not in dropped]
    ref_text, ref = dense_over_cells(tiny, prompt.prefix, s.tokens(), cells)
    assert text == ref_text
    assert np.array_equal(s.logits(), ref.logits())


def test_selection_probe_reads_what_a_dense_pass_reads(tiny, prompt):
    """With S = P the select layer's keys come from a probe, not a run of the
    layer; it must select exactly what a full prefill selects at S."""
    picks = []
    for prune_layer in (1, 3):
        config = SparseConfig(keep_ratio=0.2, select_layer=1, prune_layer=prune_layer, full_head_ratio=0.0)
        _, s = sparse_answer(tiny, prompt, config, n=1)
        picks.append(s.selection["kept_in_span"])
    assert picks[0] == picks[1]


def test_pruned_layers_keep_only_the_kept_tokens(smollm, prompt):
    """KV bytes: layers past P hold no full heads, so the cache shrinks as P
    moves down, and what is reported is what the tensors hold."""
    sizes = []
    for prune_layer in (30, 15, 4):
        config = SparseConfig(keep_ratio=0.2, select_layer=4, prune_layer=prune_layer, full_head_ratio=0.5)
        _, s = sparse_answer(smollm, prompt, config, n=1)
        st = s.stats()
        assert all(il < prune_layer for il, _ in st.full_heads)
        assert len(st.full_heads) == int(0.5 * prune_layer * smollm.info["n_head_kv"] + 0.5)  # rounds half up
        sizes.append(st.kv_bytes)
    assert sizes[0] > sizes[1] > sizes[2]
    # Exact: full heads keep every cell, sparse heads the kept ones, each padded to 256 and grown by the
    # cache's rule (support/memory_plan.py), from compaction (n_c cells) to now.
    cell_bytes = 2 * 2 * 64  # K and V, f16, head_dim 64
    n_full = round(0.5 * 4 * 3)
    n_c = len(prompt.prefix) + len(prompt.span) + len(prompt.suffix)
    dropped = len(prompt.span) - st.n_kept
    full_cells = capacity(n_c, s.n_past)
    sparse_cells = capacity(n_c - dropped + 1, s.n_past - dropped)
    assert st.kv_bytes == cell_bytes * (n_full * full_cells + (30 * 3 - n_full) * sparse_cells)


def test_hold_refusals(smollm, prompt):
    s = smollm.session()
    native = s._context
    with pytest.raises(hts.InvalidArgumentError, match="no tokens are held"):
        native._finish_held()
    native._hold_from_layer(3)
    s.add_tokens(prompt.prefix)
    with pytest.raises(hts.InvalidArgumentError, match="finish_held"):
        native.eval(prompt.suffix, True)
    with pytest.raises(hts.InvalidArgumentError, match="already held"):
        native._hold_from_layer(5)
    with pytest.raises(hts.InvalidArgumentError, match="outside"):
        smollm.session()._context._hold_from_layer(31)
    native._finish_held()  # no compaction: every held token finishes, as one pass would
    dense = smollm.session()
    dense.add_tokens(prompt.prefix)
    assert native.n_held == 0 and np.array_equal(s.logits(), dense.logits())
