"""HT-Sparse on a model with sliding-window layers (Gemma 3,
docs/architecture.md#sliding-window-layers-under-ht-sparse): a window layer
is neither routed nor compacted and never selects; in the pruned zone it
holds only the kept tokens, each seeing the kept tokens within the window of
its own position, as in a dense pass over the kept tokens alone.

The exact checks run on the tiny f32 Gemma 3 (support/tiny_models.py: global
layers 0 and 3, window layers 1, 2 and 4, a 16-token window). Its window
layers keep a ring of the window plus a micro-batch (768 rows) in a
2048-cell context, and the prompt is longer than the ring, so the rings wrap
in the dense zone and in the pruned zone, where the kept tokens of one span
are stored at cells that are not contiguous (KvCache::store_rows).
"""

import numpy as np
import pytest

import htsparse_llama as hts
from htsparse_llama import Model, SparseConfig
from htsparse_llama.tasks.text import passkey
from support.sparse_helpers import rel_l2

pytestmark = pytest.mark.real_model  # the tokenizer comes from gemma-3-270m


@pytest.fixture(scope="module")
def gemma(tiny_gemma3):
    return Model(str(tiny_gemma3.gguf_path), n_ctx=2048, n_threads=1)


@pytest.fixture(scope="module")
def prompt(gemma):
    p = passkey(gemma, seed=5, n_lines=70)
    assert len(p.span) > 900  # past the 768-row ring
    return p


def sparse_answer(model, prompt, config, n=4):
    s = model.session(sparse=config)
    s.add_tokens(prompt.prefix)
    s.add_tokens(prompt.span, sparse=True)
    s.add_tokens(prompt.suffix)
    return s.generate(max_tokens=n, temperature=0, stream=False), s


def ring_batches(cells, n_batch=512, ring=768, window=16):
    """The micro-batches the pruned zone runs kept tokens in (Context::window_batch):
    at most n_batch tokens whose cells lie less than ring - window apart."""
    out, i = [], 0
    while i < len(cells):
        k = 1
        while k < min(n_batch, len(cells) - i) and cells[i + k] - cells[i] < ring - window:
            k += 1
        out.append(cells[i : i + k])
        i += k
    return out


def test_pruning_from_layer_0_equals_dropping_the_tokens(gemma, prompt):
    """S = P = 0: every layer after selection holds the kept tokens only, and
    a window counts positions, not kept tokens: the result is a dense pass
    over the kept tokens at their original positions, fed in the same
    micro-batches. Not bit for bit as on the llama (test_pruned_zone): the
    window layers read the kept tokens at their own cells, the gaps masked,
    where the reference reads them packed, and the CPU flash-attention kernel
    rounds by where keys sit (measured 5.6e-5 relative L2; the reference fed
    in 100-token runs differs from itself by 1.0e-3: this random model
    amplifies rounding)."""
    text, s = sparse_answer(gemma, prompt, SparseConfig(keep_ratio=0.3, select_layer=0, prune_layer=0))
    begin, end = s._sparse.span
    kept = [begin + v for v in s.selection["kept_in_span"]]
    assert 0.3 * (end - begin) <= len(kept) < 0.45 * (end - begin)
    assert kept[-1] - kept[0] > 768  # the kept tokens span more than one ring
    rest = kept + list(range(end, s.n_past - 4))  # the question, not the 4 answer tokens
    ids = s.tokens()
    ref = gemma.session()
    ref.add_tokens(prompt.prefix)
    batches = ring_batches(rest)
    assert len(batches) > 1  # the ring limits a batch, not n_batch alone
    for cells in batches:
        ref.add_tokens([ids[c] for c in cells], positions=np.array(cells))
    assert text == ref.generate(max_tokens=4, temperature=0, stream=False)
    assert rel_l2(s.logits(), ref.logits()) < 5e-4
    # A window counted in kept tokens (the same tokens at contiguous positions) is another answer,
    packed = gemma.session()
    packed.add_tokens(prompt.prefix + [ids[c] for c in rest])
    packed.generate(max_tokens=4, temperature=0, stream=False)
    assert rel_l2(packed.logits(), ref.logits()) > 1e-2
    # and the dropped tokens mattered.
    full = gemma.session()
    full.add_tokens(ids[: s.n_past - 4])
    full.generate(max_tokens=4, temperature=0, stream=False)
    assert rel_l2(full.logits(), ref.logits()) > 1e-2


def test_keeping_everything_past_window_layers_is_dense(gemma, prompt):
    """S = P = 3 (window layers 1 and 2 before it, 4 after): the span waits
    at layer 3 with its rows (a ring cannot replay it: its window has moved
    on), and keeping every token gives the dense answer within batching
    noise."""
    config = SparseConfig(keep_ratio=1.0, full_head_ratio=1.0, select_layer=3, prune_layer=3)
    text, s = sparse_answer(gemma, prompt, config)
    assert s.stats().n_kept == len(prompt.span)
    # Bit for bit against the same batches without selection,
    same = gemma.session()
    same.add_tokens(prompt.prefix)
    same._context._hold_from_layer(3)
    same.add_tokens(prompt.span)
    same.add_tokens(prompt.suffix)
    same._context._finish_held()
    assert text == same.generate(max_tokens=4, temperature=0, stream=False)
    assert np.array_equal(s.logits(), same.logits())
    # and within batching noise of one dense pass (measured 3.1e-3 on this random model).
    dense = gemma.session()
    dense.add_tokens(prompt.prefix + prompt.span + prompt.suffix)
    assert text == dense.generate(max_tokens=4, temperature=0, stream=False)
    assert rel_l2(s.logits(), dense.logits()) < 1e-2


def test_window_layers_are_neither_routed_nor_scored(gemma, prompt):
    """Full heads are picked among the global layers before P only; the
    window layers of the pruned zone hold a ring, not the sparse cells."""
    config = SparseConfig(keep_ratio=0.2, full_head_ratio=1.0, select_layer=3, prune_layer=3)
    _, s = sparse_answer(gemma, prompt, config)
    assert s.stats().full_heads == [(0, 0), (0, 1)]  # layer 0's two KV heads; layers 1, 2 are window layers
    head_score = s.selection["kv_head_score"]
    assert all(head_score[il] == [0.0, 0.0] for il in (1, 2, 4)) and any(head_score[0])


def test_a_window_layer_cannot_select(gemma):
    refused = "select_layer 1 is a sliding-window layer.*global layers are 0, 3"
    with pytest.raises(hts.InvalidArgumentError, match=refused):
        gemma.session(sparse=SparseConfig(select_layer=1, prune_layer=3))
    # The default select layer (about L/6) moves to the next global layer.
    assert SparseConfig().resolve(gemma)["select_layer"] == 3  # round(5 / 6) = 1, a window layer


def test_rerouting_keeping_everything_answers_as_dense(gemma, prompt):
    """Re-routing (S = 0, P = 3): a follow-up question rewinds layers [0, L)
    (window rings included) from the F16 residual log and selects again;
    keeping everything, both answers are the dense ones (the log's F16 rows
    put the logits 8.0e-4 off, measured)."""
    follow = gemma.tokenize("\nAnd again, what is the key?")
    config = SparseConfig(keep_ratio=1.0, full_head_ratio=1.0, select_layer=0, prune_layer=3, reroute=True)
    s = gemma.session(sparse=config)
    dense = gemma.session()
    answers = []
    for session, sparse in ((s, True), (dense, False)):
        session.add_tokens(prompt.prefix)
        session.add_tokens(prompt.span, sparse=sparse)
        session.add_tokens(prompt.suffix)
        first = session.generate(max_tokens=4, temperature=0, stream=False)
        session.add_tokens(follow)
        answers.append((first, session.generate(max_tokens=4, temperature=0, stream=False)))
    assert answers[0] == answers[1]
    assert rel_l2(s.logits(), dense.logits()) < 1e-2
