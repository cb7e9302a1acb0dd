"""Hugging Face checkpoint directories for the converter tests, as users
have them: config.json, safetensors, tokenizer files in the released layout,
preprocessor_config.json.

The tokenizers are the real Qwen2.5-Coder and SmolLM2 ones, rebuilt by
transformers from the real GGUFs (cached: rebuilding takes ~45 s), and
gemma-3-270m's SentencePiece vocabulary written back as a tokenizer.model
(spm_tokenizer). That
rebuild keeps the vocabulary, merges, added tokens and pre-tokenizer regex but
not every detail of the released tokenizer.json, so `released_tokenizer`
puts the released layout back (see _as_released_*): that is what users
convert, and it exercises the [PAD] padding, the ByteLevel post-processor
rule and the llama add_space_prefix key.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional

import pytest

from htsparse_llama.fetch.packaged import cache_dir

KINDS = ("qwen", "smollm")  # the byte-level BPE tokenizers (tokenizer.json); gemma: spm_tokenizer


def _cached_dir(gguf_path: str, build) -> Path:
    """A tokenizer directory made from a GGUF by build(folder), cached by the GGUF's name and size."""
    src = Path(gguf_path)
    stamp = f"{src.name} {src.stat().st_size}"
    target = cache_dir() / "hf-tokenizers" / src.stem
    if (target / "source.txt").is_file() and (target / "source.txt").read_text() == stamp:
        return target
    tmp = target.with_name(f".{target.name}.{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    build(tmp)
    (tmp / "source.txt").write_text(stamp)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)
    return target


def rebuilt_tokenizer(gguf_path: str) -> Path:
    """tokenizer.json etc. that transformers builds from a GGUF, cached by GGUF size."""
    from transformers import AutoTokenizer

    src = Path(gguf_path)
    return _cached_dir(
        gguf_path,
        lambda d: AutoTokenizer.from_pretrained(str(src.parent), gguf_file=src.name).save_pretrained(str(d)),
    )


# Gemma 3's special tokens and a chat template in its tokenizer_config.json's
# form (the real template is longer; this one has its turn markers).
GEMMA_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n"
    "{{ m['content'] }}<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


def spm_tokenizer(gguf_path: str) -> Path:
    """A Gemma tokenizer directory made from a GGUF's SentencePiece vocabulary,
    cached by GGUF size: tokenizer.model (every piece with its score and type;
    <unk> as the UNKNOWN piece sentencepiece needs) and tokenizer_config.json
    whose added_tokens_decoder lists the control and user-defined tokens, as
    the released gemma-3 repositories have them."""
    return _cached_dir(gguf_path, lambda d: _write_spm_tokenizer(gguf_path, d))


def _write_spm_tokenizer(gguf_path: str, folder: Path) -> None:
    import gguf
    from sentencepiece import sentencepiece_model_pb2 as pb  # needs protobuf (the test extra)

    reader = gguf.GGUFReader(gguf_path)
    tokens = reader.fields["tokenizer.ggml.tokens"].contents()
    scores = reader.fields["tokenizer.ggml.scores"].contents()
    types = reader.fields["tokenizer.ggml.token_type"].contents()
    unk = reader.fields["tokenizer.ggml.unknown_token_id"].contents()
    proto = pb.ModelProto()
    proto.trainer_spec.model_type = pb.TrainerSpec.BPE
    proto.trainer_spec.byte_fallback = True
    proto.trainer_spec.vocab_size = len(tokens)
    proto.trainer_spec.unk_id, proto.trainer_spec.bos_id = unk, 2
    proto.trainer_spec.eos_id, proto.trainer_spec.pad_id = 1, 0
    proto.normalizer_spec.name = "identity"
    proto.normalizer_spec.add_dummy_prefix = False
    for i, (token, score, kind) in enumerate(zip(tokens, scores, types)):
        proto.pieces.add(piece=token, score=score, type=pb.ModelProto.SentencePiece.UNKNOWN if i == unk else kind)
    folder.mkdir(parents=True)
    (folder / "tokenizer.model").write_bytes(proto.SerializeToString())
    decoder = {
        str(i): {"content": t, "special": k == gguf.TokenType.CONTROL, "normalized": False}
        for i, (t, k) in enumerate(zip(tokens, types))
        if k in (gguf.TokenType.CONTROL, gguf.TokenType.USER_DEFINED)
    }
    config = {
        "add_bos_token": True,
        "add_eos_token": False,
        "bos_token": "<bos>",
        "eos_token": "<eos>",
        "pad_token": "<pad>",
        "unk_token": "<unk>",
        "chat_template": GEMMA_TEMPLATE,
        "added_tokens_decoder": decoder,
        "tokenizer_class": "GemmaTokenizer",
    }
    dump_json(config, folder / "tokenizer_config.json")


@pytest.fixture(scope="session")
def rebuilt_dirs(qwen_gguf, smollm_gguf, gemma_gguf) -> Dict[str, Path]:
    """kind -> the rebuilt tokenizer directory (a fixture of every test, through conftest.py)."""
    return {
        "qwen": rebuilt_tokenizer(qwen_gguf),
        "smollm": rebuilt_tokenizer(smollm_gguf),
        "gemma": spm_tokenizer(gemma_gguf),
    }


def load_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def dump_json(obj: Any, path: Path) -> None:
    path.write_text(json.dumps(obj, ensure_ascii=False), encoding="utf-8")


def _as_released_qwen(d: Path) -> int:
    """Qwen2.5's released layout: 151643 BPE tokens + 22 added ones (the
    [PAD] rows of the GGUF are not tokens), NFC normaliser, ByteLevel
    post-processor, template inside tokenizer_config.json. Returns the
    config vocab_size (the embedding rows, larger than the tokenizer)."""
    tok = load_json(d / "tokenizer.json")
    added = {a["content"] for a in tok["added_tokens"]}
    vocab = tok["model"]["vocab"]
    tok["model"]["vocab"] = {t: i for t, i in vocab.items() if t not in added and not t.startswith("[PAD")}
    tok["normalizer"] = {"type": "NFC"}
    tok["post_processor"] = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}
    dump_json(tok, d / "tokenizer.json")
    template = (d / "chat_template.jinja").read_text(encoding="utf-8")
    (d / "chat_template.jinja").unlink()
    dump_json(
        {
            "add_bos_token": False,
            "add_prefix_space": False,
            "bos_token": None,
            "eos_token": "<|im_end|>",
            "pad_token": "<|endoftext|>",
            "unk_token": None,
            "errors": "replace",
            "chat_template": template,
            "clean_up_tokenization_spaces": False,
            "model_max_length": 32768,
            "split_special_tokens": False,
            "tokenizer_class": "Qwen2Tokenizer",
        },
        d / "tokenizer_config.json",
    )
    return len(vocab)  # 151936


def _as_released_smollm(d: Path) -> int:
    """SmolLM2's released layout: digits split one by one, ByteLevel
    post-processor, add_prefix_space false; template in chat_template.jinja."""
    tok = load_json(d / "tokenizer.json")
    tok["pre_tokenizer"] = {
        "type": "Sequence",
        "pretokenizers": [
            {"type": "Digits", "individual_digits": True},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        ],
    }
    tok["post_processor"] = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True}
    dump_json(tok, d / "tokenizer.json")
    cfg = load_json(d / "tokenizer_config.json")
    cfg.update(add_prefix_space=False, clean_up_tokenization_spaces=False, vocab_size=49152)
    for k in ("backend", "is_local", "local_files_only"):
        cfg.pop(k, None)
    dump_json(cfg, d / "tokenizer_config.json")
    return len(tok["model"]["vocab"])


def released_tokenizer(kind: str, rebuilt: Path, dest: Path) -> int:
    """Copies the rebuilt tokenizer of `kind` into dest in the released
    layout; returns the embedding rows a model with it has."""
    dest.mkdir(parents=True, exist_ok=True)
    if kind == "gemma":  # already in the released layout: tokenizer.model and tokenizer_config.json
        for f in ("tokenizer.model", "tokenizer_config.json"):
            shutil.copy(rebuilt / f, dest / f)
        return _spm_size(dest)
    for f in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(rebuilt / f, dest / f)
    return (_as_released_qwen if kind == "qwen" else _as_released_smollm)(dest)


def _spm_size(d: Path) -> int:
    from sentencepiece import SentencePieceProcessor

    sp = SentencePieceProcessor()
    sp.LoadFromFile(str(d / "tokenizer.model"))
    return sp.vocab_size()


def rename_saved(folder: Path, rename: Callable[[str], str]) -> None:
    """Renames the parameters of a saved checkpoint's safetensors in place."""
    from safetensors.numpy import load_file, save_file

    for shard in folder.glob("*.safetensors"):
        save_file({rename(k): v for k, v in load_file(shard).items()}, shard, metadata={"format": "pt"})


def save_checkpoint(
    model: Any, dest: Path, kind: str, rebuilt: Path, preprocessor: Optional[Mapping[str, Any]] = None
) -> Path:
    """A transformers model saved as an HF checkpoint directory, with the
    tokenizer of `kind` and, for a VLM, preprocessor_config.json."""
    model.save_pretrained(str(dest))
    released_tokenizer(kind, rebuilt, dest)
    if preprocessor is not None:
        dump_json(dict(preprocessor), dest / "preprocessor_config.json")
    return dest
