"""Embedding rows as input (the way visual tokens enter a session):
add_embeddings equals add_tokens when the rows are the token embeddings,
matches transformers' inputs_embeds on M-RoPE image positions, and works as
a sparse span with frame segments; refusals."""

import numpy as np
import pytest
import torch

import htsparse_llama as hts
from htsparse_llama import Model, SparseConfig
from support.parity import REL_TOL_F32, check_close, image_layout, prompt, rel_l2

pytestmark = pytest.mark.real_model  # the tiny models carry real vocabularies


def token_rows(m, ids) -> np.ndarray:
    """The token embedding rows of `ids`, as the f32 GGUF holds them."""
    table = m.torch_model.get_input_embeddings().weight.detach().float().numpy()
    return table[np.asarray(ids)]


def test_embedding_rows_equal_their_tokens(tiny_llama):
    """Same kernels on the same numbers: bit-identical logits, every row."""
    m = tiny_llama
    model = Model(str(m.gguf_path), n_ctx=256, n_threads=2)
    ids = prompt(m.n_vocab, n=40, seed=3)
    by_tokens = model.session().add_tokens(ids, all_logits=True)
    s = model.session()
    s.add_tokens(ids[:10])
    a = s.add_embeddings(token_rows(m, ids[10:30]), placeholder=7, all_logits=True)
    b = s.add_tokens(ids[30:], all_logits=True)
    assert np.array_equal(np.concatenate([a, b]), by_tokens[10:])
    assert s.tokens() == ids[:10] + [7] * 20 + ids[30:] and s.n_past == 40


@pytest.fixture(scope="module")
def image_case(tiny_qwen2vl):
    """Text, a 2x3x4 grid of random 'visual' rows at M-RoPE image positions,
    text: transformers' logits from inputs_embeds, and the pieces."""
    m = tiny_qwen2vl
    positions, chunks = image_layout()
    ids = prompt(m.n_vocab, n=positions.shape[1], seed=17)
    n_before, n_grid = chunks[0][0], chunks[1][0]
    embeds = token_rows(m, ids)
    rng = np.random.default_rng(5)
    visual = rng.normal(0, float(embeds.std()), size=(n_grid, embeds.shape[1])).astype(np.float32)
    embeds[n_before : n_before + n_grid] = visual
    with torch.no_grad():
        ref = (
            m.torch_model(
                inputs_embeds=torch.from_numpy(embeds)[None],
                position_ids=torch.as_tensor(positions, dtype=torch.long)[:, None, :],
                use_cache=False,
            )
            .logits[0]
            .float()
            .numpy()
        )
    return m, ids, positions, chunks, visual, ref


def test_visual_rows_at_image_positions_match_transformers(image_case):
    m, ids, positions, chunks, visual, ref = image_case
    (n_before, _), (n_grid, grid_pos), (n_after, _) = chunks
    s = Model(str(m.gguf_path), n_ctx=256, n_threads=2).session()
    out = [
        s.add_tokens(ids[:n_before], all_logits=True),
        s.add_embeddings(visual, positions=grid_pos, placeholder=151655, all_logits=True),
        s.add_tokens(ids[n_before + n_grid :], all_logits=True),
    ]  # text resumes past the grid's extent
    check_close("qwen2vl visual rows", np.concatenate(out), ref, REL_TOL_F32)
    # The rows matter: the same positions with the tokens' own rows differ.
    assert (
        rel_l2(
            Model(str(m.gguf_path), n_ctx=256, n_threads=2)
            .session()
            .add_tokens(ids, all_logits=True, positions=positions),
            ref,
        ).max()
        > 10 * REL_TOL_F32
    )


def test_visual_rows_as_a_sparse_span(image_case):
    """keep 1 with every head full gives the dense logits of the question;
    a sparse selection keeps whole frames (segments) as configured."""
    m, ids, positions, chunks, visual, ref = image_case
    (n_before, _), (n_grid, grid_pos), (n_after, _) = chunks
    model = Model(str(m.gguf_path), n_ctx=256, n_threads=1)
    frames = list(range(0, n_grid, n_grid // 2))  # 2 frames of 12 rows

    def run(config):
        s = model.session(sparse=config)
        s.add_tokens(ids[:n_before])
        s.add_embeddings(visual, positions=grid_pos, sparse=True, segments=frames)
        s.add_tokens(ids[n_before + n_grid :])
        return s, s.logits()

    _, full = run(SparseConfig(keep_ratio=1.0, full_head_ratio=1.0, select_layer=1, prune_layer=3))
    assert rel_l2(full[None], ref[-1:]).max() < REL_TOL_F32
    s, _ = run(SparseConfig(keep_ratio=0.5, select_layer=1, prune_layer=1))
    kept = s.selection["kept_in_span"]
    assert kept in (list(range(0, 12)), list(range(12, 24)))  # one whole frame
    assert s.stats().n_sparse == n_grid and s.stats().n_kept == 12


def test_refusals(tiny_llama):
    m = tiny_llama
    model = Model(str(m.gguf_path), n_ctx=64, n_threads=2)
    s = model.session()
    with pytest.raises(hts.InvalidArgumentError, match="shape"):
        s.add_embeddings(np.zeros((3, 5), np.float32))
    with pytest.raises(hts.InvalidArgumentError, match="2-D"):
        s.add_embeddings(np.zeros(64, np.float32))
    with pytest.raises(hts.ContextOverflowError):
        s.add_embeddings(np.zeros((65, 64), np.float32))
    sp = model.session(sparse=SparseConfig(select_layer=0, prune_layer=0))
    with pytest.raises(hts.InvalidArgumentError, match="layer 0"):
        sp.add_embeddings(np.zeros((4, 64), np.float32), sparse=True)
    sp = model.session(sparse=SparseConfig(select_layer=1))
    with pytest.raises(hts.InvalidArgumentError, match="segments"):
        sp.add_embeddings(np.zeros((4, 64), np.float32), sparse=True, segments=[1, 2])
