"""SparseConfig: key names agree between C++ and Python, unset values get the
GGUF's calibrated keys or the built-in defaults, bad values are refused."""

import pytest

import htsparse_llama as hts
from htsparse_llama import Model, SparseConfig
from htsparse_llama._native_loader import native
from htsparse_llama.sparse_config import GGUF_KEYS
from support.param_ids import kwargs_id


def test_gguf_key_names_match_between_cpp_and_python():
    assert tuple(native.sparse_gguf_keys()) == GGUF_KEYS


@pytest.fixture(scope="module")
def smollm(smollm_gguf):
    return Model(smollm_gguf, n_ctx=256, n_threads=2)


def test_defaults_without_calibration_keys(smollm):
    got = SparseConfig().resolve(smollm)
    assert smollm.n_layer == 30
    assert got["select_layer"] == 5  # about L/6: docs/architecture.md#token-selection-on-segments
    assert got["select_layer"] <= got["prune_layer"] <= 30
    assert 0 < got["keep_ratio"] <= 1 and 0 <= got["full_head_ratio"] <= 1
    assert got["q_window"] >= 1 and got["head_prior"] == []


def test_explicit_values_win(smollm):
    got = SparseConfig(keep_ratio=0.5, select_layer=30, prune_layer=30, full_head_ratio=1.0).resolve(smollm)
    assert (got["keep_ratio"], got["select_layer"], got["prune_layer"], got["full_head_ratio"]) == (0.5, 30, 30, 1.0)


def _bad(fragment, **bad):
    return pytest.param(bad, fragment, id=kwargs_id(bad))


@pytest.mark.parametrize(
    "bad, fragment",
    [
        _bad("keep_ratio must be in (0, 1]", keep_ratio=0.0),
        _bad("keep_ratio must be in (0, 1]", keep_ratio=1.5),
        _bad("token_keep", token_keep=0.0),
        _bad("full_head_ratio", full_head_ratio=-0.1),
        _bad("keep_mass", keep_mass=2.0),
        _bad("prune_layer must be in [select_layer=10, 30]", select_layer=10, prune_layer=5),
        _bad("select_layer must be in [0, 30]", select_layer=31),
        _bad("q_window", q_window=0),
        _bad("segment_tokens", segment_tokens=0),
    ],
)
def test_bad_values_are_refused(smollm, bad, fragment):
    with pytest.raises(hts.InvalidArgumentError) as err:
        SparseConfig(**bad).resolve(smollm)
    assert fragment in str(err.value)


def test_calibration_keys_in_the_gguf_become_the_defaults(smollm_gguf, tmp_path):
    from htsparse_convert import GgufVocab, write_text_gguf
    from support.tiny_models import llama_model

    vocab = GgufVocab(smollm_gguf)
    model = llama_model(vocab.n_tokens)  # 3 layers, 2 KV heads
    tensors = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    prior = [0.1, 0.9, 0.5, 0.4, 0.3, 0.2]
    path = write_text_gguf(
        tmp_path / "calibrated.gguf",
        tensors,
        model.config,
        vocab_from=vocab,
        extra_metadata={
            "htsparse.version": 1,
            "htsparse.select_layer": 1,
            "htsparse.prune_layer": 2,
            "htsparse.keep_ratio": 0.3,
            "htsparse.full_head_ratio": 0.5,
            "htsparse.q_window": 16,
            "htsparse.head_prior": prior,
        },
    )
    tiny = Model(path, n_ctx=64, n_threads=2)
    got = SparseConfig().resolve(tiny)
    assert (got["select_layer"], got["prune_layer"], got["q_window"]) == (1, 2, 16)
    assert got["keep_ratio"] == pytest.approx(0.3) and got["full_head_ratio"] == pytest.approx(0.5)
    assert got["head_prior"] == pytest.approx(prior)
    # The caller still wins, and a select layer past the file's prune layer moves it along.
    got = SparseConfig(keep_ratio=0.1, select_layer=3).resolve(tiny)
    assert (got["keep_ratio"], got["select_layer"], got["prune_layer"]) == (pytest.approx(0.1), 3, 3)

    bad = write_text_gguf(
        tmp_path / "bad_prior.gguf",
        tensors,
        model.config,
        vocab_from=vocab,
        extra_metadata={"htsparse.head_prior": [0.5, 0.5]},
    )
    with pytest.raises(hts.InvalidArgumentError, match="head_prior must hold 3 x 2 values"):
        SparseConfig().resolve(Model(bad, n_ctx=64, n_threads=2))
