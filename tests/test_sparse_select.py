"""The selection step on real weights: saliency of the question over the
cached keys at every layer, line segments picked at the select layer, KV
heads routed, the cache compacted; decoding goes on over the compacted cache."""

import numpy as np
import pytest

import htsparse_llama as hts
from htsparse_llama import Model
from htsparse_llama.tasks.text import passkey


def prefill(model, prompt, capture=True):
    s = model.session()
    if capture:
        s._context._set_query_capture(len(prompt.suffix))
    for run in (prompt.prefix, prompt.span, prompt.suffix):
        s.add_tokens(run)
    return s


def greedy(model, session, n=8):
    out, logits = [], session.logits()
    for _ in range(n):
        out.append(int(np.argmax(logits)))
        session.add_tokens([out[-1]])
        logits = session.logits()
    return model.detokenize(out)


def select(session, prompt, **config):
    begin = len(prompt.prefix)
    return session._context._select_sparse([(begin, begin + len(prompt.span), prompt.seg_starts)], config)


def test_passkey_survives_selection_at_layer_4_keeping_a_tenth(qwen_gguf):
    """The measurement of docs/architecture.md#token-selection-on-segments:
    line segments chosen at layer 4 of 24 keep the needle at keep 0.1; the
    answer is the dense answer."""
    model = Model(qwen_gguf, n_ctx=2048, n_threads=2)
    prompt = passkey(model, seed=0)
    dense = prefill(model, prompt, capture=False)
    dense_answer = greedy(model, dense)
    assert prompt.answer in dense_answer

    s = prefill(model, prompt)
    # prune_layer = L: KV routing over every layer (the pruned zone is tested in test_pruned_zone.py).
    sel = select(s, prompt, keep_ratio=0.1, select_layer=4, prune_layer=model.n_layer, full_head_ratio=0.25)
    kept = set(sel["kept_in_span"])
    assert set(prompt.needle) <= kept
    assert 0.1 * len(prompt.span) <= len(kept) < 0.15 * len(prompt.span)
    n_full = sum(sum(layer) for layer in sel["full_kv"])
    assert n_full == round(0.25 * model.n_layer * model.info["n_head_kv"])
    assert s.kv_bytes < dense.kv_bytes
    assert greedy(model, s) == dense_answer


def test_keep_everything_with_every_head_full_is_dense(smollm_gguf):
    model = Model(smollm_gguf, n_ctx=1024, n_threads=2)
    prompt = passkey(model, seed=1, n_lines=30)
    dense = prefill(model, prompt, capture=False)
    s = prefill(model, prompt)
    assert np.array_equal(s.logits(), dense.logits())
    sel = select(s, prompt, keep_ratio=1.0, full_head_ratio=1.0, select_layer=3)
    assert sel["kept_in_span"] == list(range(len(prompt.span)))
    assert greedy(model, s, 6) == greedy(model, dense, 6)


def test_selection_needs_a_query_window_after_the_span(smollm_gguf):
    model = Model(smollm_gguf, n_ctx=1024, n_threads=2)
    prompt = passkey(model, seed=2, n_lines=20)
    no_capture = prefill(model, prompt, capture=False)
    with pytest.raises(hts.InvalidArgumentError, match="query window"):
        select(no_capture, prompt)
    s = prefill(model, prompt)
    with pytest.raises(hts.InvalidArgumentError, match="before the .*query window"):
        s._context._select_sparse([(0, s.n_past, [0])], {})
    with pytest.raises(hts.InvalidArgumentError, match="after the previous one"):
        s._context._select_sparse([(10, 20, [0]), (15, 30, [0])], {})
    with pytest.raises(hts.InvalidArgumentError, match="no sparse span"):
        s._context._select_sparse([], {})
    with pytest.raises(hts.InvalidArgumentError, match="keep_ratio"):
        select(s, prompt, keep_ratio=0.0)
    select(s, prompt, keep_ratio=0.5)
    with pytest.raises(hts.InvalidArgumentError, match="already compacted"):
        select(s, prompt)
