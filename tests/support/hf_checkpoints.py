"""Hugging Face checkpoint directories for the converter tests, as users
have them: config.json, safetensors, tokenizer files in the released layout,
preprocessor_config.json.

The tokenizers are the real Qwen2.5-Coder and SmolLM2 ones, rebuilt by
transformers from the real GGUFs (cached: rebuilding takes ~45 s). That
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
from typing import Any, Dict, Mapping, Optional

import pytest

from htsparse_llama.fetch.packaged import cache_dir

KINDS = ("qwen", "smollm")  # the tokenizers


def rebuilt_tokenizer(gguf_path: str) -> Path:
    """tokenizer.json etc. that transformers builds from a GGUF, cached by GGUF size."""
    from transformers import AutoTokenizer

    src = Path(gguf_path)
    stamp = f"{src.name} {src.stat().st_size}"
    target = cache_dir() / "hf-tokenizers" / src.stem
    if (target / "source.txt").is_file() and (target / "source.txt").read_text() == stamp:
        return target
    tmp = target.with_name(f".{target.name}.{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    AutoTokenizer.from_pretrained(str(src.parent), gguf_file=src.name).save_pretrained(str(tmp))
    (tmp / "source.txt").write_text(stamp)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)
    return target


@pytest.fixture(scope="session")
def rebuilt_dirs(qwen_gguf, smollm_gguf) -> Dict[str, Path]:
    """kind -> the rebuilt tokenizer directory (a fixture of every test, through conftest.py)."""
    return {"qwen": rebuilt_tokenizer(qwen_gguf), "smollm": rebuilt_tokenizer(smollm_gguf)}


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
    for f in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(rebuilt / f, dest / f)
    return (_as_released_qwen if kind == "qwen" else _as_released_smollm)(dest)


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
