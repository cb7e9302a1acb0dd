"""The HT-Sparse operators (ggml_ops/) against NumPy references on random
inputs: several shapes and GQA ratios, key counts that are no multiple of the
chunk, spans of one token, one segment and many, every head split."""

import math

import numpy as np
import pytest

import htsparse_llama as hts
from htsparse_llama._native_loader import native
from support.param_ids import kwargs_id

ops = native.ops


def f16(x):
    """What a value becomes in an F16 tensor (keys, values, masks) or as the
    F16 operand the CPU matmul converts queries to."""
    return x.astype(np.float16).astype(np.float32)


def scores_ref(q, k, scale):
    """(H, n_q, n_kv): head h reads KV head h // (H / G)."""
    group = q.shape[0] // k.shape[0]
    kk = np.repeat(f16(k), group, axis=0)
    return scale * np.einsum("hqd,hkd->hqk", f16(q).astype(np.float64), kk.astype(np.float64))


def lse_ref(q, k, mask, scale):
    s = scores_ref(q, k, scale)
    if mask is not None:
        s = s + mask[None, :, :]
    m = s.max(-1, keepdims=True)
    return (np.log(np.exp(s - m).sum(-1, keepdims=True)) + m)[..., 0]


def saliency_ref(q, k, mask, v0, v1, scale):
    lse = lse_ref(q, k, mask, scale)
    a = np.exp(scores_ref(q, k, scale)[:, :, v0:v1] - lse[..., None])  # (H, n_q, n_v)
    ta = a.mean(1)
    mass = ta.sum(1)
    p = ta / mass[:, None]
    n_v = v1 - v0
    conc = 1 + (p * np.log(np.maximum(p, 1e-30))).sum(1) / math.log(n_v) if n_v > 1 else np.ones_like(mass)
    return ta, mass, conc, mass * conc


def random_qk(rng, n_head, n_kv_head, d, n_q, n_kv, spread=1.0):
    q = (spread * rng.standard_normal((n_head, n_q, d))).astype(np.float32)
    k = rng.standard_normal((n_kv_head, n_kv, d)).astype(np.float32)
    return q, k


def causal_tail_mask(n_q, n_kv):
    """The query window is the last n_q keys; each query sees itself and before."""
    mask = np.zeros((n_q, n_kv), np.float32)
    for i in range(n_q):
        mask[i, n_kv - n_q + i + 1 :] = -np.inf
    return mask


SHAPES = [  # (H, G, d, n_q, n_kv, chunk)
    (4, 4, 16, 5, 50, 16),
    (4, 2, 32, 7, 333, 64),
    (8, 1, 64, 3, 1000, 256),
    (14, 2, 64, 16, 257, 4096),
    (6, 3, 16, 9, 33, 16),  # last chunk: one key, hidden from all but the last query
]


def shape_id(shape):
    return "H{}-G{}-d{}-q{}-kv{}-chunk{}".format(*shape)


@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
@pytest.mark.parametrize("masked", [False, True], ids=["unmasked", "masked"])
def test_attn_lse_matches_numpy(shape, masked):
    n_head, n_kv_head, d, n_q, n_kv, chunk = shape
    rng = np.random.default_rng(sum(shape))
    q, k = random_qk(rng, n_head, n_kv_head, d, n_q, n_kv)
    mask = causal_tail_mask(n_q, n_kv) if masked else None
    scale = 1 / math.sqrt(d)
    got = ops.attn_lse(q, k, mask, scale, chunk)
    assert got.shape == (n_head, n_q)
    np.testing.assert_allclose(got, lse_ref(q, k, mask, scale), rtol=1e-4, atol=1e-4)


def test_attn_lse_is_stable_for_large_scores():
    rng = np.random.default_rng(7)
    q, k = random_qk(rng, 4, 2, 32, 4, 300, spread=40.0)  # scores in the hundreds
    got = ops.attn_lse(q, k, None, 1.0, 64)
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, lse_ref(q, k, None, 1.0), rtol=1e-4)


@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
def test_head_saliency_matches_numpy(shape):
    n_head, n_kv_head, d, n_q, n_kv, chunk = shape
    rng = np.random.default_rng(100 + sum(shape))
    q, k = random_qk(rng, n_head, n_kv_head, d, n_q, n_kv)
    mask = causal_tail_mask(n_q, n_kv)
    v0, v1 = 2, n_kv - n_q  # the span lies before the query window
    scale = 1 / math.sqrt(d)
    got = ops.head_saliency(q, k, mask, v0, v1, scale, chunk)
    ta, mass, conc, score = saliency_ref(q, k, mask, v0, v1, scale)
    assert got["token_attn"].shape == (n_head, v1 - v0)
    np.testing.assert_allclose(got["token_attn"], ta, rtol=2e-3, atol=1e-7)
    np.testing.assert_allclose(got["head_mass"].ravel(), mass, rtol=2e-3)
    np.testing.assert_allclose(got["head_conc"].ravel(), conc, rtol=2e-3, atol=1e-5)
    np.testing.assert_allclose(got["head_score"].ravel(), score, rtol=2e-3, atol=1e-7)
    assert (got["head_mass"] <= 1 + 1e-5).all()


def test_head_saliency_one_token_span_is_fully_concentrated():
    rng = np.random.default_rng(3)
    q, k = random_qk(rng, 4, 2, 16, 3, 20)
    got = ops.head_saliency(q, k, None, 5, 6, 0.25, 8)
    ta, mass, _, _ = saliency_ref(q, k, None, 5, 6, 0.25)
    np.testing.assert_allclose(got["token_attn"], ta, rtol=2e-3)
    np.testing.assert_allclose(got["head_conc"].ravel(), 1.0)


def test_head_saliency_refuses_an_empty_span():
    rng = np.random.default_rng(4)
    q, k = random_qk(rng, 2, 1, 16, 2, 10)
    with pytest.raises(hts.InvalidArgumentError):
        ops.head_saliency(q, k, None, 4, 4, 0.25)


# --- selection ----------------------------------------------------------------


def pick_ref(seg_starts, n_v, token_score, keep_ratio=0.2, keep_mass=0.0, token_keep=1.0, floor=0):
    """The selection rules of docs/architecture.md#token-selection-on-segments, written plainly."""
    ends = list(seg_starts[1:]) + [n_v]
    segs = [np.arange(a, b) for a, b in zip(seg_starts, ends)]
    seg_score = np.array([token_score[s].max() for s in segs])
    order = np.argsort(-seg_score, kind="stable")
    kept = set()
    if keep_mass > 0:
        goal, held = keep_mass * token_score.sum(), 0.0
        for s in order:
            kept.add(s)
            held += token_score[segs[s]].sum()
            if held >= goal:
                break
    else:
        budget, n = max(1, math.ceil(keep_ratio * n_v - 1e-9)), 0
        for s in order:
            if n >= budget:
                break
            kept.add(s)
            n += len(segs[s])
    if floor:
        stretch = lambda s: seg_starts[s] * floor // n_v  # noqa: E731
        covered = {stretch(s) for s in kept}
        for s in order:
            if stretch(s) not in covered:
                kept.add(s)
                covered.add(stretch(s))
    tokens = np.concatenate([segs[s] for s in sorted(kept)])
    if token_keep < 1 and len(tokens) > 1:
        n = max(1, math.ceil(token_keep * len(tokens) - 1e-9))
        tokens = np.sort(tokens[np.argsort(-token_score[tokens], kind="stable")[:n]])
    return seg_score, order, tokens


def random_segments(rng, n_v, n_seg):
    if n_seg == 1:
        return [0]
    return [0] + sorted(rng.choice(np.arange(1, n_v), size=n_seg - 1, replace=False).tolist())


def params(**kw):
    p = ops.PickParams()
    for key, value in kw.items():
        setattr(p, key, value)
    return p


SELECT_CASES = [  # (n_v, n_seg, H, pick settings)
    (100, 10, 4, dict(keep_ratio=0.2)),
    (100, 1, 4, dict(keep_ratio=0.2)),  # one segment: all or nothing
    (1, 1, 2, dict(keep_ratio=0.5)),  # one token
    (777, 777, 8, dict(keep_ratio=0.1)),  # token-level segments
    (500, 37, 14, dict(keep_ratio=1.0)),  # keep everything
    (500, 37, 14, dict(keep_mass=0.6)),
    (500, 37, 14, dict(keep_ratio=0.05, segment_floor=6)),
    (500, 37, 14, dict(keep_ratio=0.3, token_keep=0.5)),
]


@pytest.mark.parametrize("case", SELECT_CASES, ids=lambda c: f"v{c[0]}-seg{c[1]}-H{c[2]}-" + kwargs_id(c[3]))
def test_select_tokens_matches_numpy(case):
    n_v, n_seg, n_head, pick = case
    rng = np.random.default_rng(n_v * 31 + n_seg)
    token_attn = rng.random((n_head, n_v)).astype(np.float32) ** 4 / n_v
    head_w = rng.random(n_head).astype(np.float32)
    head_w /= head_w.sum()
    seg_starts = random_segments(rng, n_v, n_seg)
    got = ops.select_tokens(token_attn, head_w, seg_starts, params(**pick))

    token_score = head_w.astype(np.float64) @ token_attn
    seg_score, order, kept = pick_ref(
        seg_starts, n_v, token_score, **{{"segment_floor": "floor"}.get(k, k): v for k, v in pick.items()}
    )
    np.testing.assert_allclose(got["token_score"], token_score, rtol=1e-5)
    np.testing.assert_allclose(got["segment_score"], seg_score, rtol=1e-5)
    assert got["order"].tolist() == order.tolist()
    assert got["kept"] == kept.tolist()
    if pick.get("keep_ratio") == 1.0:
        assert got["kept"] == list(range(n_v))
    if "keep_ratio" in pick and "token_keep" not in pick and "segment_floor" not in pick:
        assert len(got["kept"]) >= math.ceil(pick["keep_ratio"] * n_v - 1e-9)


def test_select_tokens_refuses_bad_segments():
    token_attn = np.ones((2, 10), np.float32)
    with pytest.raises(hts.InvalidArgumentError, match="start at token 0"):
        ops.select_tokens(token_attn, np.ones(2, np.float32), [1, 5], params())
    with pytest.raises(hts.InvalidArgumentError, match="increase"):
        ops.select_tokens(token_attn, np.ones(2, np.float32), [0, 5, 5], params())


# --- routed attention ---------------------------------------------------------


def attention_ref(q, k, v, mask, scale):
    """q (n, d), k/v (n_kv, d), mask (n, n_kv) -> (n, d)."""
    s = scale * f16(q).astype(np.float64) @ f16(k).T.astype(np.float64) + f16(mask)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return p @ f16(v)


def causal_mask(n_tokens, cells_pos, first_pos):
    """Token i at position first_pos + i sees cells holding positions <= its own."""
    pos = first_pos + np.arange(n_tokens)[:, None]
    return np.where(np.asarray(cells_pos)[None, :] <= pos, 0.0, -np.inf).astype(np.float32)


@pytest.mark.parametrize("n_head, n_kv_head", [(4, 4), (4, 2), (8, 1), (14, 2), (12, 4)])
@pytest.mark.parametrize("split", ["all_full", "all_sparse", "mixed"])
def test_routed_attention_matches_numpy(n_head, n_kv_head, split):
    rng = np.random.default_rng(n_head * 10 + n_kv_head)
    d, n_tokens, n_cells = 32, 6, 70
    is_full = {
        "all_full": [True] * n_kv_head,
        "all_sparse": [False] * n_kv_head,
        "mixed": [bool(g % 2 == 0) for g in range(n_kv_head)],
    }[split]
    if split == "mixed" and all(is_full):
        is_full[-1] = False  # one KV head: make it sparse so the case differs
    full_g = [g for g in range(n_kv_head) if is_full[g]]
    sparse_g = [g for g in range(n_kv_head) if not is_full[g]]

    # Full cache: every position; compact cache: a kept subset plus the new tokens.
    k_all = rng.standard_normal((n_kv_head, n_cells, d)).astype(np.float32)
    v_all = rng.standard_normal((n_kv_head, n_cells, d)).astype(np.float32)
    kept_cells = np.sort(rng.choice(n_cells - n_tokens, size=20, replace=False)).tolist() + list(
        range(n_cells - n_tokens, n_cells)
    )
    q = rng.standard_normal((n_tokens, n_head, d)).astype(np.float32)
    first_pos = n_cells - n_tokens
    mask_full = causal_mask(n_tokens, range(n_cells), first_pos)
    mask_sparse = causal_mask(n_tokens, kept_cells, first_pos)
    scale = 1 / math.sqrt(d)

    kw = {}
    if full_g:
        kw.update(k_full=k_all[full_g], v_full=v_all[full_g], mask_full=mask_full)
    if sparse_g:
        kw.update(
            k_sparse=k_all[sparse_g][:, kept_cells], v_sparse=v_all[sparse_g][:, kept_cells], mask_sparse=mask_sparse
        )
    got = ops.routed_attention(q, is_full, scale=scale, **kw)
    assert got.shape == (n_tokens, n_head, d)

    group = n_head // n_kv_head
    for h in range(n_head):
        g = h // group
        cells = list(range(n_cells)) if is_full[g] else kept_cells
        mask = mask_full if is_full[g] else mask_sparse
        ref = attention_ref(q[:, h], k_all[g][cells], v_all[g][cells], mask, scale)
        np.testing.assert_allclose(got[:, h], ref, rtol=5e-3, atol=5e-3, err_msg=f"head {h}")


def test_routed_attention_all_full_is_plain_attention_bit_for_bit():
    """With every head full, routing only permutes heads there and back: the
    result is the single flash-attention call's, exactly."""
    rng = np.random.default_rng(11)
    n_head, n_kv_head, d, n_tokens, n_cells = 8, 2, 64, 5, 40
    q = rng.standard_normal((n_tokens, n_head, d)).astype(np.float32)
    k = rng.standard_normal((n_kv_head, n_cells, d)).astype(np.float32)
    v = rng.standard_normal((n_kv_head, n_cells, d)).astype(np.float32)
    mask = causal_mask(n_tokens, range(n_cells), n_cells - n_tokens)
    routed = ops.routed_attention(q, [True, True], k_full=k, v_full=v, mask_full=mask, scale=0.125)
    # The same call with the KV heads listed as sparse runs the same kernel on the same data.
    as_sparse = ops.routed_attention(q, [False, False], k_sparse=k, v_sparse=v, mask_sparse=mask, scale=0.125)
    assert np.array_equal(routed, as_sparse)


def test_routed_attention_refuses_missing_caches():
    q = np.zeros((2, 4, 16), np.float32)
    with pytest.raises(hts.InvalidArgumentError):
        ops.routed_attention(q, [True, False], k_full=np.zeros((1, 8, 16), np.float32))
