"""A SentencePiece tokenizer directory (tokenizer.model) -> the GGUF tokenizer.* keys.

    from htsparse_convert.spm_vocab import SpmVocab

    vocab = SpmVocab("gemma-3-4b-it/", n_vocab=embedding_rows)
    write_text_gguf("out.gguf", tensors, config, vocab_from=vocab)

Writes what upstream convert_hf_to_gguf.py (llama.cpp pinned by
llama-cpp-python 0.3.36) writes through `_set_vocab_sentencepiece` for Gemma 3
(Gemma3Model.set_vocab): tokenizer.ggml.model "llama", pre "default", every
piece with its score and type as the `sentencepiece` library reports them,
ids the model has beyond the tokenizer's as "[PAD{id}]" UNUSED, the entries of
added_tokens.json and of tokenizer_config.json's added_tokens_decoder over
them (CONTROL when special or special-looking, else USER_DEFINED with spaces
pre-normalised, score -1000), then gguf.SpecialVocab without merges (special
token ids, add_bos/add_eos, chat template) and add_space_prefix False.

Only Gemma 3 checkpoints are read this way (upstream's other SentencePiece
paths add keys of their own); the tests check the result against upstream's
converter key by key.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional

import gguf

from .hf_vocab import SpecialVocab, does_token_look_special
from .text_gguf import PathLike, arch_spec, flatten_config

SPM_ARCHS = ("gemma3",)  # GGUF architectures whose tokenizer.model is read here


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


class SpmVocab:
    """The tokenizer.model of a Hugging Face checkpoint directory, as upstream's
    converter writes it (a VocabSource for write_text_gguf).

    Args:
        model_dir: holds tokenizer.model, and usually tokenizer_config.json,
            tokenizer.json (for the special tokens' ids), config.json and a
            chat template.
        n_vocab: tokens the GGUF must have (the embedding rows). Default:
            config.json's vocab_size (upstream's choice), else the
            tokenizer's own size.
        arch: GGUF architecture; default from config.json. Only Gemma 3's.
    Raises:
        ValueError: no tokenizer.model, one sentencepiece cannot read, an
            architecture upstream reads otherwise, or ids >= n_vocab.
    """

    def __init__(self, model_dir: PathLike, n_vocab: Optional[int] = None, arch: Optional[str] = None) -> None:
        self.dir = Path(model_dir)
        model_path = self.dir / "tokenizer.model"
        if not model_path.is_file():
            raise ValueError(f"{self.dir}: no tokenizer.model (a SentencePiece tokenizer)")
        config = flatten_config(_read_json(self.dir / "config.json") or {})
        self.arch = arch or (arch_spec(config).gguf_arch if config else None)
        if self.arch not in SPM_ARCHS:
            raise ValueError(
                f"{self.dir}: a SentencePiece tokenizer is read for {', '.join(SPM_ARCHS)} models only, "
                f"not {self.arch!r}"
            )
        from sentencepiece import SentencePieceProcessor  # the convert extra

        sp = SentencePieceProcessor()
        try:
            sp.LoadFromFile(str(model_path))
        except (OSError, RuntimeError) as exc:
            raise ValueError(f"{model_path}: sentencepiece cannot read it: {exc}") from exc
        size = int(n_vocab) if n_vocab is not None else int(config.get("vocab_size") or sp.vocab_size())
        self.tokens: List[str] = [f"[PAD{i}]" for i in range(size)]
        self.scores: List[float] = [-10000.0] * size
        self.toktypes: List[int] = [int(gguf.TokenType.UNUSED)] * size
        self._pieces(sp, size)
        self._added(size)
        tokenizer_json = _read_json(self.dir / "tokenizer.json") or {}
        self.special = SpecialVocab(self.dir, tokenizer_json, load_merges=False)

    def _pieces(self, sp: Any, size: int) -> None:
        """Upstream's _create_vocab_sentencepiece, the pieces."""
        if sp.vocab_size() > size:
            raise ValueError(f"{self.dir}/tokenizer.model has {sp.vocab_size()} pieces for {size} embedding rows")
        for i in range(sp.vocab_size()):
            kind = gguf.TokenType.NORMAL
            if sp.IsUnknown(i):
                kind = gguf.TokenType.UNKNOWN
            elif sp.IsControl(i):
                kind = gguf.TokenType.CONTROL
            elif sp.IsUnused(i):
                kind = gguf.TokenType.UNUSED
            elif sp.IsByte(i):
                kind = gguf.TokenType.BYTE
            self.tokens[i], self.scores[i], self.toktypes[i] = sp.IdToPiece(i), sp.GetScore(i), int(kind)

    def _added(self, size: int) -> None:
        """added_tokens.json, then tokenizer_config.json's added_tokens_decoder (ids past `size` ignored)."""
        user_defined = int(gguf.TokenType.USER_DEFINED)
        for token, tid in (_read_json(self.dir / "added_tokens.json") or {}).items():
            if tid < size:
                self.tokens[tid], self.scores[tid], self.toktypes[tid] = token, -1000.0, user_defined
        decoder: Dict[str, Any] = (_read_json(self.dir / "tokenizer_config.json") or {}).get("added_tokens_decoder", {})
        for key, data in decoder.items():
            tid, token = int(key), data["content"]
            if tid >= size:
                continue
            if data.get("special") or does_token_look_special(token):
                self.toktypes[tid] = int(gguf.TokenType.CONTROL)
            else:
                token = token.replace("\u2581", " ")  # pre-normalise user-defined spaces
                self.toktypes[tid] = int(gguf.TokenType.USER_DEFINED)
            self.tokens[tid], self.scores[tid] = token, -1000.0

    @property
    def n_tokens(self) -> int:
        return len(self.tokens)

    def add_to(self, writer: gguf.GGUFWriter) -> None:
        """Writes the keys in upstream's order."""
        writer.add_tokenizer_model("llama")
        writer.add_tokenizer_pre("default")
        writer.add_token_list(self.tokens)
        writer.add_token_scores(self.scores)
        writer.add_token_types(self.toktypes)
        self.special.add_to(writer, dict(self.special.add_special_token))
        writer.add_add_space_prefix(False)  # Gemma3Model.set_vocab
