"""Re-routing (SparseConfig(reroute=True),
docs/architecture.md#multi-turn-and-re-routing): each follow-up question
selects the sparse span's tokens anew. The session logs the residual stream
at S of every token, keeps the dense zone [0, S) whole, and for a new
question reruns layers [S, L) under its own selection.

The exact checks run on the tiny f32 llama with one thread, as in
test_pruned_zone.py (same batches, same compact cells: bit for bit)."""

import numpy as np
import pytest

import htsparse_llama as hts
from htsparse_llama import Model, SparseConfig
from htsparse_llama.tasks.text import follow_up_tokens, multikey, passkey
from support.memory_plan import capacity
from support.sparse_helpers import dense_over_cells, rel_l2


@pytest.fixture(scope="module")
def smollm(smollm_gguf):
    return Model(smollm_gguf, n_ctx=2048, n_threads=2)


def two_questions(model, prompt, config, second_question, n=4):
    """prefix, sparse span, question, answer; a second question, answer. As
    token runs (no chat-template bookkeeping), so batches are predictable."""
    s = model.session(sparse=config)
    s.add_tokens(prompt.prefix)
    s.add_text(model.detokenize(prompt.span), sparse=True)
    s.add_tokens(prompt.suffix)
    answers, picks = [], []
    for ids in ([], follow_up_tokens(model, second_question)):
        if ids:
            s.add_tokens(ids)
        answers.append(s.generate(max_tokens=n, temperature=0, stream=False))
        picks.append(list(s.selection["kept_in_span"]) if s._sparse else None)
    return answers, picks, s


@pytest.fixture(scope="module")
def prompt(smollm):
    return passkey(smollm, seed=3, n_lines=24)  # the tiny llama shares SmolLM2's tokenizer


QUESTION_2 = "Which node ran the last backup? Answer with the number only."


@pytest.mark.parametrize("select_layer, prune_layer", [(1, 1), (1, 2), (1, 3)])
def test_rerouting_while_keeping_everything_is_dense(tiny, prompt, select_layer, prune_layer):
    """keep_ratio = full_head_ratio = 1: the rerun of layers [S, L) for the
    second question recomputes what was there, so the answers are the dense
    session's, and the logits within batching noise of it (the rerun batches
    the whole conversation at once, the dense session had it token by token:
    measured 1.1e-4 to 2.0e-4 rel L2)."""
    config = SparseConfig(
        keep_ratio=1.0, full_head_ratio=1.0, select_layer=select_layer, prune_layer=prune_layer, reroute=True
    )
    answers, _, s = two_questions(tiny, prompt, config, QUESTION_2)
    assert s._sparse.n_selections == 2 and "reroute" in s.stats().prefill_ms
    dense_answers, _, dense = two_questions(tiny, prompt, None, QUESTION_2)
    assert answers == dense_answers and s.tokens() == dense.tokens()
    assert rel_l2(s.logits(), dense.logits()) < 1e-3


def test_rerouted_pruning_from_layer_0_equals_dropping_the_tokens(tiny, prompt):
    """S = P = 0: after the second question the model has seen exactly the
    prefix, the tokens that question selected, and everything after the span
    (bit for bit against a dense pass over those tokens at their positions),
    and that selection is not the first question's."""
    config = SparseConfig(keep_ratio=0.3, select_layer=0, prune_layer=0, reroute=True)
    answers, picks, s = two_questions(tiny, prompt, config, QUESTION_2)
    assert picks[0] != picks[1]
    begin, end = s._sparse.span
    cells = list(range(begin)) + [begin + v for v in picks[1]] + list(range(end, s.n_past - 4))
    ref_text, ref = dense_over_cells(tiny, [], s.tokens(), cells)
    assert answers[1] == ref_text
    assert np.array_equal(s.logits(), ref.logits())
    assert s.stats().n_kept == len(picks[1])


def test_each_question_finds_its_own_key(smollm):
    """Two questions about different services' pass keys (4 keys in 60 lines,
    3 lines kept): with re-routing the second selection holds the second
    needle, which the first did not; without, the first routing stands for
    both questions."""
    task = multikey(smollm, seed=11, n_lines=60, n_keys=4)
    assert len(task.follow_ups) == 3
    second = task.follow_ups[0]
    config = SparseConfig(keep_ratio=0.05, full_head_ratio=0.0, select_layer=8, prune_layer=8)
    _, picks, s = two_questions(
        smollm, task, SparseConfig(**{**config.__dict__, "reroute": True}), second.question, n=1
    )
    assert set(task.needle) <= set(picks[0]), "the first question's needle was not kept"
    assert set(second.needle) <= set(picks[1]), "the second question's needle was not kept"
    assert not set(second.needle) <= set(picks[0])  # so re-routing is what kept it
    _, fixed, _ = two_questions(smollm, task, config, second.question, n=1)
    assert fixed[1] == fixed[0]


def test_rerouting_keeps_the_dense_zone_whole(smollm, prompt):
    """KV bytes with re-routing: every head of layers [0, S) at full length
    (the rerun needs them), the rest compact; exactly what the tensors hold."""
    config = SparseConfig(keep_ratio=0.2, select_layer=4, prune_layer=4, full_head_ratio=0.5, reroute=True)
    _, _, s = two_questions(smollm, prompt, config, QUESTION_2, n=1)
    st = s.stats()
    assert sorted(st.full_heads) == [(il, g) for il in range(4) for g in range(3)]
    cell_bytes = 2 * 2 * 64  # K and V, f16, head_dim 64
    n_c = s.n_past - 1  # cells at the second compaction (then 1 answer token)
    n_compacted = n_c - len(prompt.span) + st.n_kept
    full_cells = capacity(n_c, s.n_past)  # the dense zone, compacted again (every head full)
    sparse_cells = capacity(n_compacted + 1, n_compacted + 1)
    assert st.kv_bytes == cell_bytes * (4 * 3 * full_cells + 26 * 3 * sparse_cells)


def test_reroute_refusals(smollm, tiny):
    with pytest.raises(hts.InvalidArgumentError, match="reroute needs a select layer"):
        smollm.session(sparse=SparseConfig(select_layer=30, prune_layer=30, reroute=True))
    s = tiny.session()
    with pytest.raises(hts.InvalidArgumentError, match="no residual log"):
        s._context._rewind_to_logged_layer(1)
    s.add_text("hello")
    with pytest.raises(hts.InvalidArgumentError, match="empty context"):
        s._context._log_residual_at(1)
    with pytest.raises(hts.InvalidArgumentError, match="outside"):
        tiny.session()._context._log_residual_at(3)
