"""DeepStack (Qwen3-VL): an input embedding row is n_embd * (1 + D) wide,
the token's own row then one row per DeepStack layer, and row il + 1 is added
to the residual after layer il < D, for visual tokens only (text has none).
The tiny Qwen3-VL has D = 2 over 3 layers. Checked against transformers'
Qwen3VLTextModel (visual_pos_masks, deepstack_visual_embeds) and, for
HT-Sparse, through a span that waits at P = 1 < D: its layer-1 rows travel
with the held tokens and follow the kept ones through compaction."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import htsparse_llama as hts
from htsparse_llama import Model, SparseConfig
from support.parity import REL_TOL_F32, check_close, image_layout, prompt, rel_l2

pytestmark = pytest.mark.real_model

D = 2  # the tiny tower's two taps


@pytest.fixture(scope="module")
def qwen3vl(tiny_qwen3vl):
    return tiny_qwen3vl


@pytest.fixture(scope="module")
def model(qwen3vl):
    return Model(str(qwen3vl.gguf_path), n_ctx=256, n_threads=1, device="cpu")


def visual_rows(n: int, n_embd: int, seed: int) -> np.ndarray:
    """Visual tokens as libmtmd hands them out: [n, n_embd * (1 + D)]."""
    return np.random.default_rng(seed).normal(0.0, 1.0, size=(n, n_embd * (1 + D))).astype(np.float32)


def reference(qwen3vl, ids, rows, positions, grid: slice, deepstack=True) -> np.ndarray:
    """transformers' logits [n, n_vocab] with the grid's tokens given as rows."""
    tm = qwen3vl.torch_model
    n_embd = qwen3vl.config.text_config.hidden_size
    with torch.no_grad():
        embeds = tm.get_input_embeddings()(torch.tensor([ids]))
        embeds[0, grid] = torch.from_numpy(rows[:, :n_embd])
        mask = torch.zeros(1, len(ids), dtype=torch.bool)
        mask[0, grid] = True
        extra = [torch.from_numpy(rows[:, (k + 1) * n_embd : (k + 2) * n_embd]) for k in range(D)]
        out = tm.model.language_model(
            inputs_embeds=embeds,
            position_ids=torch.as_tensor(positions, dtype=torch.long)[:, None, :],
            visual_pos_masks=mask if deepstack else None,
            deepstack_visual_embeds=extra if deepstack else None,
            use_cache=False,
        )
        return tm.lm_head(out.last_hidden_state)[0].float().numpy()


def test_deepstack_rows_match_transformers(qwen3vl, model):
    """Text, a grid of visual rows with their DeepStack rows, text: every
    position's logits equal transformers' (and differ from a run that
    drops the DeepStack rows, so they are really added)."""
    positions, chunks = image_layout()
    (n_before, _), (n_grid, grid_pos), (n_after, _) = chunks
    ids = prompt(qwen3vl.n_vocab, n=positions.shape[1], seed=23)
    rows = visual_rows(n_grid, model.info["n_embd"], seed=5)
    grid = slice(n_before, n_before + n_grid)
    ref = reference(qwen3vl, ids, rows, positions, grid)
    without = reference(qwen3vl, ids, rows, positions, grid, deepstack=False)
    assert rel_l2(without, ref).max() > 10 * REL_TOL_F32

    assert model.info["n_embd_inp"] == model.info["n_embd"] * (1 + D) and model.info["n_deepstack"] == D
    s = model.session()
    got = [s.add_tokens(ids[:n_before], all_logits=True)]
    got.append(s.add_embeddings(rows, positions=grid_pos, placeholder=ids[n_before], all_logits=True))
    got.append(s.add_tokens(ids[n_before + n_grid :], all_logits=True))
    check_close("qwen3vl DeepStack", np.concatenate(got), ref, REL_TOL_F32)


def test_rows_without_deepstack_are_refused(model):
    s = model.session()
    with pytest.raises(hts.InvalidArgumentError, match=r"\(n, 192\)"):
        s.add_embeddings(np.zeros((4, model.info["n_embd"]), dtype=np.float32))


def sparse_logits(model, ids, rows, grid_pos, config, n_before):
    """prefix text, the visual rows as a sparse span (a segment per frame), the
    rest as the question: the first answer logits and the selection."""
    s = model.session(sparse=config)
    s.add_tokens(ids[:n_before])
    frame = len(rows) // 2
    s.add_embeddings(rows, positions=grid_pos, placeholder=ids[n_before], sparse=True, segments=[0, frame])
    s.add_tokens(ids[n_before + len(rows) :])
    s.select()
    return s.logits().copy(), s.selection


def test_a_span_waiting_below_the_last_deepstack_layer_carries_its_rows(qwen3vl, model):
    """S = P = 1 < D: the span waits at layer 1 with its layer-1 DeepStack rows.
    Keeping everything equals the dense answer; keeping one frame of two,
    the dropped frame's layer-1 rows (never used past P) change nothing and
    the kept frame's change the answer, so the rows follow their tokens."""
    positions, chunks = image_layout(grid=(2, 3, 4))
    (n_before, _), (n_grid, grid_pos), _ = chunks
    ids = prompt(qwen3vl.n_vocab, n=positions.shape[1], seed=29)
    rows = visual_rows(n_grid, model.info["n_embd"], seed=9)
    n_embd = model.info["n_embd"]

    everything = SparseConfig(keep_ratio=1.0, full_head_ratio=1.0, select_layer=1, prune_layer=1)
    kept_all, _ = sparse_logits(model, ids, rows, grid_pos, everything, n_before)
    dense = model.session()
    dense.add_tokens(ids[:n_before])
    dense.add_embeddings(rows, positions=grid_pos, placeholder=ids[n_before])
    dense.add_tokens(ids[n_before + n_grid :])
    assert rel_l2(kept_all, dense.logits()) < REL_TOL_F32

    half = SparseConfig(keep_ratio=0.5, full_head_ratio=0.0, select_layer=1, prune_layer=1)
    base, sel = sparse_logits(model, ids, rows, grid_pos, half, n_before)
    kept = np.asarray(sel["kept_in_span"])
    assert 0 < len(kept) < n_grid
    dropped = np.setdiff1d(np.arange(n_grid), kept)
    layer1 = slice(2 * n_embd, 3 * n_embd)  # the row added after layer 1

    other = rows.copy()
    other[dropped, layer1] += 5.0
    same, sel2 = sparse_logits(model, ids, other, grid_pos, half, n_before)
    assert sel2["kept_in_span"] == sel["kept_in_span"] and np.array_equal(same, base)

    other = rows.copy()
    other[kept, layer1] += 5.0
    changed, sel3 = sparse_logits(model, ids, other, grid_pos, half, n_before)
    assert sel3["kept_in_span"] == sel["kept_in_span"] and rel_l2(changed, base) > 10 * REL_TOL_F32


def test_reroute_below_the_deepstack_layers_is_refused(model):
    with pytest.raises(hts.InvalidArgumentError, match="DeepStack"):
        model.session(sparse=SparseConfig(select_layer=1, prune_layer=1, reroute=True))
