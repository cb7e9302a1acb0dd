"""Shared pieces of the HT-Sparse exactness tests (test_pruned_zone.py,
test_reroute.py): the one-thread tiny llama they run on (the module-scoped
`tiny` fixture, given to every test module by conftest.py), and the dense
reference they compare against."""

import numpy as np
import pytest

from htsparse_llama import Model


@pytest.fixture(scope="module")
def tiny(tiny_llama):
    # One thread: the compact cache puts kept keys at other cell numbers, and
    # the CPU flash-attention kernel splits cells among threads, so sums
    # would round differently with several (see test_kv_split.py).
    return Model(str(tiny_llama.gguf_path), n_ctx=1024, n_threads=1)


def rel_l2(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def dense_over_cells(model, first, ids, cells, n=4):
    """A dense session over `first`, then the tokens of `cells` (indices into
    `ids`) at their own positions as one run; its greedy n-token answer and
    the session. Pruning from layer 0 must equal this bit for bit."""
    ref = model.session()
    if first:
        ref.add_tokens(first)
    ref.add_tokens([ids[c] for c in cells], positions=np.array(cells))
    return ref.generate(max_tokens=n, temperature=0, stream=False), ref
