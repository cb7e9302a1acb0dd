"""Any layer count: HT-Sparse on tiny random llamas of 80 and 96 layers (as
deep as Qwen2.5-VL-72B and beyond), with pure per-head routing (P = L) and
FastV-style pruning (P = S). Selection measures saliency at every layer
below P, one graph input per layer: a fixed-size input context would abort
there (GGML_ASSERT), so this is about the runtime not falling over."""

import numpy as np
import pytest
from transformers import LlamaConfig, LlamaForCausalLM

from htsparse_llama import Model, SparseConfig
from support.haystack import QUESTION, haystack
from support.tiny_models import convert, randomize_

pytestmark = pytest.mark.real_model  # the SmolLM2 tokenizer of the packaged GGUF


@pytest.fixture(scope="module", params=[80, 96], ids=lambda n: f"{n}-layers")
def deep(request, smollm_vocab, tiny_dir):
    n_layer = request.param
    config = LlamaConfig(
        vocab_size=smollm_vocab.n_tokens,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=n_layer,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
        rope_theta=10000.0,
    )
    model = LlamaForCausalLM(config)
    randomize_(model, seed=n_layer)
    return Model(str(convert(model, tiny_dir / f"llama-{n_layer}-layers.gguf", smollm_vocab)), n_ctx=2048, n_threads=2)


@pytest.mark.parametrize("zone", ["P=L", "P=S"])
def test_selection_on_a_deep_model(deep, zone):
    n_layer = deep.n_layer
    prune = n_layer if zone == "P=L" else 4
    s = deep.session(sparse=SparseConfig(keep_ratio=0.2, select_layer=4, prune_layer=prune))
    s.add_message("user", [{"text": haystack(n_lines=40, where=20), "sparse": True}, {"text": "\n" + QUESTION}])
    answer = s.generate(max_tokens=3, temperature=0, stream=False)
    stats = s.stats()
    assert (stats.select_layer, stats.prune_layer) == (4, prune)
    assert 0 < stats.n_kept < stats.n_sparse and isinstance(answer, str)
    full_kv = np.asarray(s.selection["full_kv"])
    assert full_kv.shape == (n_layer, 1)
    assert np.isfinite(np.asarray(s.selection["kv_head_score"])).all()
    assert np.isfinite(s.logits()).all()
