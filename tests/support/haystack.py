"""A pass-key haystack: a log of heartbeat lines with one line holding the
key, and the question that asks for it. The HT-Sparse tests that check a
sparse session still finds the needle (test_sparse_session, test_calibrate)
mark the log sparse and ask QUESTION after it."""

import numpy as np

QUESTION = "What is the pass key? Answer with the number only."


def haystack(seed=5, n_lines=80, key=42817, where=33):
    rng = np.random.default_rng(seed)
    lines = [f"[{i:03d}] heartbeat on node {rng.integers(1, 99)}" for i in range(n_lines)]
    lines[where] = f"[{where:03d}] The pass key is {key}. Remember it."
    return "\n".join(lines) + "\n"
