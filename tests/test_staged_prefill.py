"""Staged prefill's skeleton: running every token through layers [0, S),
keeping the residual stream, then through [S, L) gives exactly the logits of
one pass (same kernels, same micro-batches), for any S."""

import numpy as np
import pytest

import htsparse_llama as hts
from htsparse_llama import Model


@pytest.mark.parametrize("n_batch", [512, 64])
def test_staged_equals_one_pass(smollm_gguf, n_batch):
    model = Model(smollm_gguf, n_ctx=512, n_threads=2)
    ids = model.tokenize("Staged prefill keeps the residual stream between stages. " * 12)[:150]
    session = model.session(n_batch=n_batch)
    one_pass = session.add_tokens(ids, all_logits=True)
    for split in (0, 1, 7, model.n_layer - 1, model.n_layer):
        session.reset()
        session._context._eval_staged(ids, True, split)
        staged = np.asarray(session._context.all_logits())
        assert np.array_equal(staged, one_pass), f"split {split}"
    # A follow-up after a staged prompt sees the same cache.
    follow = model.tokenize(" And then?")
    session.reset()
    session._context._eval_staged(ids, False, 5)
    after_staged = session.add_tokens(follow, all_logits=True)
    session.reset()
    session.add_tokens(ids)
    assert np.array_equal(session.add_tokens(follow, all_logits=True), after_staged)


def test_bad_split_is_refused(smollm_gguf):
    session = Model(smollm_gguf, n_ctx=64, n_threads=2).session()
    with pytest.raises(hts.InvalidArgumentError, match="split layer"):
        session._context._eval_staged([1, 2], False, 99)
