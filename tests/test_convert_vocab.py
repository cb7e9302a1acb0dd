"""HF tokenizer files -> GGUF tokenizer.* keys (htsparse_convert.hf_vocab,
and spm_vocab for Gemma 3's tokenizer.model), checked against upstream's
convert_hf_to_gguf.py, the real GGUFs, llama.cpp's tokenizer and
transformers' tokenizer.

The tokenizers are the real Qwen2.5-Coder, SmolLM2 and gemma-3-270m ones in
their released layout (hf_checkpoints.py says how they are made). Gemma's
file against upstream's, key by key: test_convert_checkpoint.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Dict

import gguf
import pytest

from htsparse_convert.hf_vocab import PRE_BY_CHKHSH, HfVocab, detect_pre
from htsparse_convert.spm_vocab import SpmVocab
from htsparse_convert.text_gguf import read_gguf_metadata, write_text_gguf
from support.hf_checkpoints import KINDS, dump_json, load_json, released_tokenizer
from support.upstream_converter import converter_args, run_upstream_converter

PRE = {"qwen": "qwen2", "smollm": "smollm"}


def _tiny_checkpoint(kind: str, d: Path, n_vocab: int) -> None:
    """A random 2-layer decoder saved next to the tokenizer, special ids in
    config.json as in the released configs."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    common = dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=n_vocab,
        max_position_embeddings=512,
        tie_word_embeddings=True,
    )
    if kind == "qwen":
        model = Qwen2ForCausalLM(Qwen2Config(bos_token_id=151643, eos_token_id=151645, **common))
    else:
        model = LlamaForCausalLM(LlamaConfig(bos_token_id=1, eos_token_id=2, pad_token_id=2, **common))
    model.save_pretrained(str(d))


@pytest.fixture(scope="session")
def released_dir(rebuilt_dirs, tmp_path_factory):
    """kind -> an HF checkpoint directory: released-layout tokenizer + tiny model."""
    made: Dict[str, Path] = {}

    def get(kind: str) -> Path:
        if kind not in made:
            d = tmp_path_factory.mktemp(f"hf_{kind}")
            n_vocab = released_tokenizer(kind, rebuilt_dirs[kind], d)
            _tiny_checkpoint(kind, d, n_vocab)
            made[kind] = d
        return made[kind]

    return get


@pytest.fixture(scope="session")
def hf_vocab(released_dir):
    made: Dict[str, HfVocab] = {}

    def get(kind: str) -> HfVocab:
        if kind not in made:
            made[kind] = HfVocab(released_dir(kind))
        return made[kind]

    return get


@pytest.fixture(scope="session")
def our_gguf(released_dir, hf_vocab, tmp_path_factory):
    """kind -> the tiny checkpoint written by write_text_gguf with HfVocab."""
    from safetensors.numpy import load_file

    made: Dict[str, Path] = {}

    def get(kind: str) -> Path:
        if kind not in made:
            d = released_dir(kind)
            out = tmp_path_factory.mktemp(f"ours_{kind}") / "ours.gguf"
            made[kind] = write_text_gguf(
                out, load_file(str(d / "model.safetensors")), load_json(d / "config.json"), vocab_from=hf_vocab(kind)
            )
        return made[kind]

    return get


def _tokenizer_keys(path: Path) -> Dict[str, Any]:
    return {f.key: (f.type, f.sub_type, f.value) for f in read_gguf_metadata(path, "tokenizer.")}


def _values(path: Path) -> Dict[str, Any]:
    return {k: v[2] for k, v in _tokenizer_keys(path).items()}


# -- (a) the same keys as upstream's converter -------------------------------------------------


@pytest.fixture(scope="session")
def upstream_ggufs(upstream_converter, released_dir, tmp_path_factory) -> Dict[str, Path]:
    """kind -> upstream's convert_hf_to_gguf.py output (f32) for released_dir(kind),
    both made in one subprocess."""
    out = tmp_path_factory.mktemp("upstream")
    ggufs = {kind: out / f"{kind}.gguf" for kind in KINDS}
    jobs = [converter_args(released_dir(kind), ggufs[kind], "f32") for kind in KINDS]
    run_upstream_converter(upstream_converter, jobs)
    return ggufs


@pytest.mark.parametrize("kind", KINDS)
def test_vocab_matches_upstream_converter(kind, upstream_ggufs, our_gguf):
    up = upstream_ggufs[kind]
    theirs, ours = _tokenizer_keys(up), _tokenizer_keys(our_gguf(kind))
    assert set(ours) == set(theirs), {"only ours": set(ours) - set(theirs), "only upstream": set(theirs) - set(ours)}
    differing = [k for k in theirs if ours[k] != theirs[k]]
    assert not differing, {k: (str(ours[k])[:200], str(theirs[k])[:200]) for k in differing}
    # What the equality covered, so a key silently missing on both sides shows up.
    values = _values(up)
    assert values["tokenizer.ggml.model"] == "gpt2" and values["tokenizer.ggml.pre"] == PRE[kind]
    assert values["tokenizer.chat_template"].count("<|im_start|>") >= 2
    if kind == "qwen":  # 151665 tokens, 151936 embedding rows
        assert values["tokenizer.ggml.tokens"][-1] == "[PAD151935]"
        assert values["tokenizer.ggml.token_type"].count(gguf.TokenType.UNUSED) == 151936 - 151665
        assert values["tokenizer.ggml.add_bos_token"] is False and values["tokenizer.ggml.add_eos_token"] is False
        assert values["tokenizer.ggml.eos_token_id"] == 151645
    else:
        assert values["tokenizer.ggml.add_space_prefix"] is False
        assert values["tokenizer.ggml.add_bos_token"] is False  # upstream's llama rule for vocab 49152
        assert values["tokenizer.ggml.unknown_token_id"] == 0


# -- the real GGUFs were converted by upstream from the released tokenizers --------------------


@pytest.mark.parametrize("kind", KINDS)
def test_released_layout_gives_back_the_real_gguf_vocab(kind, our_gguf, qwen_gguf, smollm_gguf):
    """Tokens, types, merges, pre and special ids equal the published GGUF's.
    (add_* flags are left out: that file came from an older converter.)"""
    real = _values(Path(qwen_gguf if kind == "qwen" else smollm_gguf))
    ours = _values(our_gguf(kind))
    for key in ("tokens", "token_type", "merges", "pre", "model", "bos_token_id", "eos_token_id", "padding_token_id"):
        assert ours[f"tokenizer.ggml.{key}"] == real[f"tokenizer.ggml.{key}"], key
    assert ours["tokenizer.chat_template"] == real["tokenizer.chat_template"]


@pytest.mark.parametrize("kind", KINDS)
def test_rebuilt_tokenizer_hashes_like_upstream(kind, rebuilt_dirs):
    """The tokenizer transformers rebuilds from a GGUF, as saved, reproduces
    upstream's chkhsh. SmolLM2's rebuild drops the Digits pre-tokenizer, but
    its vocabulary has no token with two digits, so the ids do not change.
    (test_vocab_matches_upstream_converter shows that hashing with the
    tokenizers library agrees with upstream's AutoTokenizer.)"""
    from tokenizers import Tokenizer

    path = rebuilt_dirs[kind] / "tokenizer.json"
    pre, chkhsh = detect_pre(Tokenizer.from_file(str(path)), None, path)
    assert pre == PRE[kind] and PRE_BY_CHKHSH[chkhsh] == pre
    if kind == "smollm":
        assert not any(sum(c.isdigit() for c in t) > 1 for t in load_json(path)["model"]["vocab"])


def test_pads_to_the_embedding_rows(released_dir):
    vocab = HfVocab(released_dir("smollm"), n_vocab=49160)
    assert vocab.n_tokens == 49160
    assert vocab.tokens[-8:] == [f"[PAD{i}]" for i in range(49152, 49160)]
    assert set(vocab.toktypes[-8:]) == {gguf.TokenType.UNUSED}
    assert vocab.toktypes[:3] == [gguf.TokenType.CONTROL] * 3 and vocab.toktypes[100] == gguf.TokenType.NORMAL


# -- (b) llama.cpp tokenizes like transformers -------------------------------------------------

TEXTS = [
    "Hello world, this is a simple test.",
    "def add(a, b):\n    return a + b  # 12345\n\n\tx = [3.14, 2718281]\n",
    "Grüße aus Köln: naïve café, 東京タワー 🚀🦙 нещо на Български",
    "<|im_start|>user\nWhat is 12 * 34?<|im_end|>\n<|im_start|>assistant\n",
    '<tool_call>\n{"name": "f", "arguments": {}}\n</tool_call>',  # Qwen: USER_DEFINED tokens
]


@pytest.mark.parametrize("kind", KINDS)
def test_llama_cpp_tokenizes_like_transformers(kind, released_dir, our_gguf):
    llama_cpp = pytest.importorskip("llama_cpp")
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(released_dir(kind)))
    llm = llama_cpp.Llama(model_path=str(our_gguf(kind)), vocab_only=True, verbose=False)
    try:
        for text in TEXTS:
            expected = hf.encode(text, add_special_tokens=False)
            assert llm.tokenize(text.encode(), add_bos=False, special=True) == expected, text
        im_start = hf.convert_tokens_to_ids("<|im_start|>")
        assert llm.tokenize(b"<|im_start|>", add_bos=False, special=True) == [im_start]
        plain = TEXTS[2]
        assert llm.detokenize(llm.tokenize(plain.encode(), add_bos=False)).decode() == plain
        assert llm.n_vocab() == load_json(released_dir(kind) / "config.json")["vocab_size"]
        assert llm.token_eos() == (151645 if kind == "qwen" else 2)
    finally:
        llm.close()


# -- (c) bad input -------------------------------------------------------------------------------


def test_missing_tokenizer_json(tmp_path):
    with pytest.raises(ValueError, match="no tokenizer.json"):
        HfVocab(tmp_path)
    (tmp_path / "tokenizer.model").write_bytes(b"\x00")
    with pytest.raises(ValueError, match="SentencePiece"):
        HfVocab(tmp_path)


def test_sentencepiece_and_unigram_refused(tmp_path, released_dir):
    from tokenizers import Tokenizer, models

    Tokenizer(models.Unigram([("<unk>", 0.0), ("a", -1.0)], 0, False)).save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(ValueError, match=r"'Unigram' is not supported; only byte-level BPE"):
        HfVocab(tmp_path)
    tok = load_json(released_dir("smollm") / "tokenizer.json")
    tok["model"]["byte_fallback"] = True
    dump_json(tok, tmp_path / "tokenizer.json")
    with pytest.raises(ValueError, match="byte_fallback"):
        HfVocab(tmp_path)
    shutil.copy(released_dir("smollm") / "tokenizer.json", tmp_path / "tokenizer.json")
    (tmp_path / "tokenizer.model").write_bytes(b"\x00")
    with pytest.raises(ValueError, match="SentencePiece tokenizer.model"):
        HfVocab(tmp_path)


def test_unknown_pre_tokenizer(tmp_path, released_dir):
    """SmolLM2's vocabulary behind Qwen2's pre-tokenizer regex: llama.cpp has
    no name for that split, so it is refused, naming it."""
    qwen_pre = load_json(released_dir("qwen") / "tokenizer.json")["pre_tokenizer"]
    tok = load_json(released_dir("smollm") / "tokenizer.json")
    tok["pre_tokenizer"] = qwen_pre
    dump_json(tok, tmp_path / "tokenizer.json")
    with pytest.raises(ValueError, match=r"pre-tokenizer Sequence\[Split\(.\(\?i:'s.*ByteLevel.*chkhsh [0-9a-f]{64}"):
        HfVocab(tmp_path)


def test_embedding_smaller_than_tokenizer(released_dir):
    with pytest.raises(ValueError, match="does not fit a vocabulary of 1000"):
        HfVocab(released_dir("smollm"), n_vocab=1000)


# -- Gemma 3's SentencePiece tokenizer.model (htsparse_convert.spm_vocab) -----------------------


@pytest.fixture(scope="module")
def gemma_dir(rebuilt_dirs, tmp_path_factory):
    """gemma-3-270m's tokenizer.model and tokenizer_config.json beside a Gemma 3 config."""
    d = tmp_path_factory.mktemp("gemma")
    n_vocab = released_tokenizer("gemma", rebuilt_dirs["gemma"], d)
    dump_json({"model_type": "gemma3_text", "architectures": ["Gemma3ForCausalLM"], "vocab_size": n_vocab,
               "bos_token_id": 2, "eos_token_id": 1, "pad_token_id": 0}, d / "config.json")  # fmt: skip
    return d


def test_spm_vocab_gives_back_the_real_gguf_vocab(gemma_dir, gemma_gguf):
    """The pieces, scores and types sentencepiece reports, the control and
    user-defined tokens of added_tokens_decoder over them and the special ids
    are the published gemma-3-270m GGUF's (upstream made it from the released
    tokenizer); the writer's keys are upstream's Gemma 3 ones."""
    vocab = SpmVocab(gemma_dir)
    real = _values(Path(gemma_gguf))
    assert vocab.tokens == real["tokenizer.ggml.tokens"] and vocab.toktypes == real["tokenizer.ggml.token_type"]
    assert vocab.scores == pytest.approx(real["tokenizer.ggml.scores"])
    writer = gguf.GGUFWriter(gemma_dir / "keys.gguf", "gemma3")
    vocab.add_to(writer)
    keys = [k for k in writer.kv_data[0] if k.startswith("tokenizer.")]
    assert keys[:5] == [f"tokenizer.ggml.{k}" for k in ("model", "pre", "tokens", "scores", "token_type")]
    for key in ("bos_token_id", "eos_token_id", "padding_token_id", "add_bos_token", "add_eos_token",
                "add_space_prefix"):  # fmt: skip
        assert writer.kv_data[0][f"tokenizer.ggml.{key}"].value == real[f"tokenizer.ggml.{key}"], key


def test_spm_vocab_is_refused_for_other_models(gemma_dir, tmp_path):
    with pytest.raises(ValueError, match="gemma3 models only, not 'qwen2'"):
        SpmVocab(gemma_dir, arch="qwen2")
    with pytest.raises(ValueError, match="no tokenizer.model"):
        SpmVocab(tmp_path, arch="gemma3")


def test_llama_cpp_tokenizes_gemma_like_transformers(gemma_dir):
    """The GGUF written from the tokenizer.model, read by llama.cpp, splits
    text as transformers' Gemma tokenizer (built from the same file) does."""
    llama_cpp = pytest.importorskip("llama_cpp")
    from transformers import AutoTokenizer

    path = write_text_gguf(gemma_dir / "tokens.gguf", *_tiny_gemma(gemma_dir), vocab_from=SpmVocab(gemma_dir))
    hf = AutoTokenizer.from_pretrained(str(gemma_dir))
    llm = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
    try:
        for text in TEXTS[:3] + ["<start_of_turn>user\nWhat is 12 * 34?<end_of_turn>\n<start_of_turn>model\n"]:
            assert llm.tokenize(text.encode(), add_bos=False, special=True) == hf.encode(text, add_special_tokens=False)
    finally:
        llm.close()


def _tiny_gemma(d: Path):
    from support.tiny_models import gemma3_model

    model = gemma3_model(load_json(d / "config.json")["vocab_size"])
    return {k: v.detach().numpy() for k, v in model.state_dict().items()}, model.config
