"""Synthetic GGUFs of a real model's shape (the GPU benchmarks' 7B-shaped
model): llama.cpp and our runtime load the same file and agree on its logits,
the file has the shape's tensors, and a tokenizer-only GGUF (what travels to
the GPU machine) is enough to make one."""

import numpy as np
import pytest

llama_cpp = pytest.importorskip("llama_cpp")
gguf = pytest.importorskip("gguf")

from htsparse_convert.synthetic_gguf import SHAPES, tensor_shapes, write_synthetic_gguf, write_vocab_gguf  # noqa: E402
from htsparse_llama import Model  # noqa: E402
from htsparse_llama.bench.llama_cpp import load_llama  # noqa: E402

pytestmark = pytest.mark.real_model  # the Qwen2.5 tokenizer of the packaged model


@pytest.fixture(scope="module")
def vocab(qwen_gguf, tmp_path_factory):
    return write_vocab_gguf(tmp_path_factory.mktemp("vocab") / "vocab.gguf", qwen_gguf)


# The qwen2 shape, a qwen3 one (q/k norms, no biases, head_dim 96 where n_embd / n_head is 64), a
# qwen3vl one (M-RoPE sections, DeepStack depth) and a gemma3 one (a 16-token window on five of
# every six layers, post norms, linear rope scaling): the tiny forms of the benchmark shapes.
@pytest.fixture(scope="module", params=["tiny", "tiny-qwen3", "tiny-qwen3vl", "tiny-gemma3"])
def synthetic(vocab, request, tmp_path_factory):
    folder = tmp_path_factory.mktemp("synthetic")
    return vocab, write_synthetic_gguf(folder / f"{request.param}-Q8_0.gguf", request.param, vocab_from=vocab)


def test_vocab_gguf_is_small_and_keeps_the_tokenizer(vocab):
    assert vocab.stat().st_size < 16 * 2**20
    reader = gguf.GGUFReader(vocab)
    assert len(reader.tensors) == 0 and "tokenizer.ggml.tokens" in reader.fields


def test_tensors_have_the_shape(synthetic):
    _, path = synthetic
    reader = gguf.GGUFReader(path)
    n_vocab = len(reader.fields["tokenizer.ggml.tokens"].data)
    shape = SHAPES[path.name.removesuffix("-Q8_0.gguf")]
    want = {name: ne for name, ne, _ in tensor_shapes(shape, n_vocab)}
    got = {t.name: tuple(int(v) for v in t.shape) for t in reader.tensors}
    assert got == want
    types = {t.name: t.tensor_type for t in reader.tensors}
    assert types["blk.0.ffn_down.weight"] == gguf.GGMLQuantizationType.Q8_0
    assert types["blk.0.attn_norm.weight"] == gguf.GGMLQuantizationType.F32
    assert reader.fields["general.architecture"].contents() == shape.arch
    assert ("blk.0.attn_q_norm.weight" in got) == (shape.arch != "qwen2") != ("blk.0.attn_q.bias" in got)
    assert ("blk.0.post_ffw_norm.weight" in got) == (shape.arch == "gemma3")


def test_llama_cpp_and_ours_agree_on_it(synthetic):
    _, path = synthetic
    ours = Model(str(path), n_ctx=512, n_threads=2)
    ids = ours.tokenize("The quick brown fox jumps over the lazy dog. " * 6)
    logits = ours.session(n_ctx=512).add_tokens(ids, all_logits=True)
    ref = load_llama(
        str(path), n_ctx=512, n_threads=2, n_threads_batch=2, logits_all=True, flash_attn=True, verbose=False
    )
    ref.eval(ids)
    want = np.asarray(ref.scores[: len(ids)])
    assert np.isfinite(logits).all() and logits.std() > 0
    rel = np.linalg.norm(logits - want, axis=-1) / np.linalg.norm(want, axis=-1)
    assert rel.max() < 1e-3
    assert (logits.argmax(-1) == want.argmax(-1)).mean() > 0.95
