"""A Hugging Face tokenizer directory -> the GGUF tokenizer.* keys.

    from htsparse_convert.hf_vocab import HfVocab

    vocab = HfVocab("Qwen2.5-0.5B-Instruct/", n_vocab=embedding_rows)
    write_text_gguf("out.gguf", tensors, config, vocab_from=vocab)

Writes what upstream convert_hf_to_gguf.py (llama.cpp pinned by
llama-cpp-python 0.3.36) writes through `_set_vocab_gpt2`: get_vocab_base
(tokens, token types, [PAD{i}] padding), get_vocab_base_pre (tokenizer.ggml.pre
by the hash of the pre-tokenizer's output) and gguf.SpecialVocab (merges,
special token ids, add_bos/add_eos, chat template), plus the two tweaks
LlamaModel.set_vocab adds for the `llama` architecture.

Only byte-level BPE tokenizers (GPT-2 style: Qwen2/2.5/2-VL/2.5-VL, SmolLM2,
SmolVLM2) are supported; anything else is refused with the reason.

Upstream reads the tokenizer through transformers.AutoTokenizer; this module
reads tokenizer.json with the `tokenizers` library (the object AutoTokenizer
wraps for these models) and the JSON files directly, so it does not depend on
how a transformers version rebuilds a tokenizer class. The tests check the
result against upstream's converter key by key.
"""

from __future__ import annotations

import json
import logging
from hashlib import sha256
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import gguf

from .text_gguf import PathLike, arch_spec, flatten_config

logger = logging.getLogger(__name__)

# The check string of upstream's get_vocab_base_pre, verbatim.
CHKTXT = (
    "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis concatenated) "
    "✅ 🦙🦙 3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 កាន់តែពិសេសអាច😁 "
    "?我想在apple工作1314151天～ ------======= нещо на Български ''''''```````\"\"\"\"......!!!!!!?????? "
    "I've been 'told he's there, 'RE you sure? 'M not sure I'll make it, 'D you like some tea? We'Ve a'lL"
)

# sha256(str(ids of CHKTXT)) -> tokenizer.ggml.pre, copied from upstream's
# get_vocab_base_pre for the tokenizers this project supports. The hash covers
# the vocabulary too, so one pre-tokenizer can have several entries.
PRE_BY_CHKHSH: Dict[str, str] = {
    # Qwen/Qwen1.5-7B; Qwen2, Qwen2.5, Qwen2-VL, Qwen2.5-VL share its tokenizer
    "e636dc30a262dcc0d8c323492e32ae2b70728f4df7dfe9737d9f920a282b8aea": "qwen2",
    # Qwen/Qwen3-Embedding-0.6B
    "d4540891389ea895b53b399da6ac824becc30f2fba0e9ddbb98f92e55ca0e97c": "qwen2",
    # HuggingFaceTB/SmolLM-135M; SmolLM2 and SmolVLM2 share its tokenizer
    "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249": "smollm",
}

# SpecialVocab's default special token types; writers exist for all but cls.
_SPECIAL_TYPES = ("bos", "eos", "unk", "sep", "pad", "cls", "mask")
_ID_KEYS = {
    "bos": gguf.Keys.Tokenizer.BOS_ID,
    "eos": gguf.Keys.Tokenizer.EOS_ID,
    "unk": gguf.Keys.Tokenizer.UNK_ID,
    "sep": gguf.Keys.Tokenizer.SEP_ID,
    "pad": gguf.Keys.Tokenizer.PAD_ID,
    "mask": gguf.Keys.Tokenizer.MASK_ID,
    "eot": gguf.Keys.Tokenizer.EOT_ID,
    "eom": gguf.Keys.Tokenizer.EOM_ID,
}
_ADD_KEYS = {
    "bos": gguf.Keys.Tokenizer.ADD_BOS,
    "eos": gguf.Keys.Tokenizer.ADD_EOS,
    "sep": gguf.Keys.Tokenizer.ADD_SEP,
}
# Upstream writes these through GGUFWriter methods the gguf 0.19 wheel lacks.
_NORMALIZER_LOWERCASE = "tokenizer.ggml.normalizer.lowercase"
_NORMALIZER_STRIP_ACCENTS = "tokenizer.ggml.normalizer.strip_accents"


def _read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def describe_pre_tokenizer(pre: Any) -> str:
    """A short readable name of a tokenizer.json pre_tokenizer, for errors."""
    if not isinstance(pre, dict):
        return repr(pre)
    kind = pre.get("type", "?")
    if kind == "Sequence":
        return "Sequence[" + ", ".join(describe_pre_tokenizer(p) for p in pre.get("pretokenizers", [])) + "]"
    if kind == "Split":
        pattern = pre.get("pattern", {})
        regex = pattern.get("Regex", pattern.get("String"))
        return f"Split({regex!r})"
    if kind == "ByteLevel":
        return f"ByteLevel(use_regex={pre.get('use_regex', True)})"
    if kind == "Digits":
        return f"Digits(individual_digits={pre.get('individual_digits', False)})"
    return str(kind)


def does_token_look_special(token: str) -> bool:
    """Upstream's ModelBase.does_token_look_special."""
    return (
        token in ("<pad>", "<mask>", "<2mass>", "[@BOS@]")
        or (token.startswith("<|") and token.endswith("|>"))
        or (token.startswith("<｜") and token.endswith("｜>"))
        or (token.startswith("<unused") and token.endswith(">"))
    )


def detect_pre(tokenizer: Any, pre_tokenizer: Any = None, where: Any = "tokenizer.json") -> Tuple[str, str]:
    """(tokenizer.ggml.pre, chkhsh) of a `tokenizers.Tokenizer`, as upstream's
    get_vocab_base_pre decides it: the sha256 of the ids of CHKTXT looked up
    in PRE_BY_CHKHSH. Raises ValueError, naming the pre-tokenizer (the
    tokenizer.json `pre_tokenizer` entry), for a hash not in the table.

    Upstream encodes with AutoTokenizer(dir).encode(chktxt), special tokens
    included; this is the Rust tokenizer AutoTokenizer wraps for byte-level
    BPE models, and encode adds special tokens by default too. The tests
    check both give the same hash."""
    ids = tokenizer.encode(CHKTXT).ids
    chkhsh = sha256(str(ids).encode()).hexdigest()
    if chkhsh not in PRE_BY_CHKHSH:
        raise ValueError(
            f"{where}: BPE pre-tokenizer {describe_pre_tokenizer(pre_tokenizer)} (chkhsh {chkhsh}) is not one "
            f"this converter knows; supported: {sorted(set(PRE_BY_CHKHSH.values()))} (Qwen2/2.5, SmolLM2). "
            "Refused rather than guessed: llama.cpp would split text differently from the tokenizer"
        )
    return PRE_BY_CHKHSH[chkhsh], chkhsh


class HfVocab:
    """The tokenizer of a Hugging Face checkpoint directory, as upstream's
    converter writes it into a GGUF (a VocabSource for write_text_gguf).

    Args:
        model_dir: holds tokenizer.json, and usually tokenizer_config.json,
            config.json and a chat template (chat_template.jinja/.json or in
            tokenizer_config.json).
        n_vocab: tokens the GGUF must have, i.e. the embedding rows. Ids the
            tokenizer does not use are filled with "[PAD{id}]" UNUSED tokens,
            as upstream does (Qwen's embedding is larger than its tokenizer).
            Default: config.json's vocab_size (upstream's choice), else the
            tokenizer's own size.
        arch: GGUF architecture ("qwen2", "qwen2vl", "qwen3", "llama"); default from
            config.json. `llama` adds the keys upstream's LlamaModel adds.
    Raises:
        ValueError: no tokenizer.json, a tokenizer that is not byte-level BPE,
            a pre-tokenizer llama.cpp would not recognise, or ids >= n_vocab.
    """

    def __init__(self, model_dir: PathLike, n_vocab: Optional[int] = None, arch: Optional[str] = None) -> None:
        self.dir = Path(model_dir)
        tok_path = self.dir / "tokenizer.json"
        if not tok_path.is_file():
            hint = (
                " (it has tokenizer.model: SentencePiece tokenizers are not supported)"
                if (self.dir / "tokenizer.model").is_file()
                else ""
            )
            raise ValueError(
                f"{self.dir}: no tokenizer.json{hint}; only byte-level BPE tokenizers "
                "given as tokenizer.json (Qwen2/2.5, SmolLM2) are supported"
            )
        self._json = _read_json(tok_path)
        self._check_supported()
        cfg_path = self.dir / "tokenizer_config.json"
        self._tok_config: Dict[str, Any] = _read_json(cfg_path) if cfg_path.is_file() else {}
        config_path = self.dir / "config.json"
        self._config = flatten_config(_read_json(config_path)) if config_path.is_file() else {}
        if arch is None and self._config:
            arch = arch_spec(self._config).gguf_arch
        self.arch = arch

        from tokenizers import Tokenizer  # installed with transformers

        try:
            self._tok = Tokenizer.from_file(str(tok_path))
        except Exception as exc:  # tokenizers raises a bare Exception on bad files
            raise ValueError(f"{tok_path}: the tokenizers library cannot read it: {exc}") from exc
        # Upstream pads to config vocab_size; the caller's embedding rows win.
        vocab = self._tok.get_vocab(with_added_tokens=True)
        self._hp_vocab_size = int(self._config.get("vocab_size") or n_vocab or len(vocab))
        target = int(n_vocab) if n_vocab is not None else self._hp_vocab_size
        if max(vocab.values()) >= target:
            raise ValueError(
                f"{tok_path}: token id {max(vocab.values())} does not fit a vocabulary of {target} (the embedding rows)"
            )
        self.pre, self.chkhsh = detect_pre(self._tok, self._json.get("pre_tokenizer"), tok_path)
        self.tokens, self.toktypes = self._tokens(vocab, target)
        self.special = SpecialVocab(self.dir, self._json)

    def _check_supported(self) -> None:
        model = self._json.get("model") or {}
        kind = model.get("type")
        # Upstream's Qwen2/Llama converters try tokenizer.model (SentencePiece) first.
        if (self.dir / "tokenizer.model").is_file():
            raise ValueError(
                f"{self.dir} has a SentencePiece tokenizer.model (upstream converts that as "
                "tokenizer.ggml.model 'llama'); only byte-level BPE (gpt2) is supported"
            )
        if kind != "BPE":
            raise ValueError(
                f"{self.dir}/tokenizer.json: tokenizer model {kind!r} is not supported; "
                "only byte-level BPE (GPT-2 style, tokenizer.ggml.model 'gpt2') is"
            )
        if model.get("byte_fallback"):
            raise ValueError(
                f"{self.dir}/tokenizer.json: BPE with byte_fallback is a SentencePiece-style "
                "tokenizer (upstream writes it as 'llama'); only byte-level BPE is supported"
            )

    def _tokens(self, vocab: Dict[str, int], n: int) -> Tuple[List[str], List[int]]:
        """Upstream's get_vocab_base."""
        reverse = {i: t for t, i in vocab.items()}
        added = self._tok.get_added_tokens_decoder()  # id -> AddedToken
        added_contents = {a.content for a in added.values()}
        tokens: List[str] = []
        types: List[int] = []
        for i in range(n):
            token = reverse.get(i)
            if token is None:
                tokens.append(f"[PAD{i}]")
                types.append(gguf.TokenType.UNUSED)
                continue
            if token in added_contents:
                info = added.get(i)
                # llama.cpp takes CONTROL/USER_DEFINED text as pre-normalised.
                # transformers 5 never applies clean_up_tokenization to BPE, so
                # decode(encode(t)) is exactly what upstream gets.
                if info is not None and not info.normalized:
                    token = self._tok.decode(
                        self._tok.encode(token, add_special_tokens=False).ids, skip_special_tokens=False
                    )
                if (info is not None and info.special) or does_token_look_special(token):
                    types.append(gguf.TokenType.CONTROL)
                else:
                    token = token.replace("\u2581", " ")  # pre-normalise user-defined spaces
                    types.append(gguf.TokenType.USER_DEFINED)
            else:
                types.append(gguf.TokenType.NORMAL)
            tokens.append(token)
        return tokens, [int(t) for t in types]

    @property
    def n_tokens(self) -> int:
        return len(self.tokens)

    def add_to(self, writer: gguf.GGUFWriter) -> None:
        """Writes the keys in upstream's order."""
        # LlamaModel.set_vocab writes tokenizer_config's add_prefix_space first.
        prefix = self._tok_config.get("add_prefix_space")
        if self.arch == "llama" and prefix is not None:
            writer.add_add_space_prefix(bool(prefix))
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(self.pre)
        writer.add_token_list(self.tokens)
        writer.add_token_types(self.toktypes)
        add_special = dict(self.special.add_special_token)
        # LlamaModel.set_vocab: "granite small models", i.e. every llama with
        # vocab_size 49152 (SmolLM2 too), gets add_bos_token = False.
        if self.arch == "llama" and self._hp_vocab_size == 49152:
            add_special.pop("bos", None)
        self.special.add_to(writer, add_special)
        if self.arch == "llama" and self._hp_vocab_size == 49152:
            writer.add_bool(gguf.Keys.Tokenizer.ADD_BOS, False)


class SpecialVocab:
    """gguf.SpecialVocab(dir, load_merges) of the pinned llama.cpp's
    gguf-py. The gguf 0.19 wheel's copy is older (no ByteLevel post-processor
    rule, which sets add_bos/add_eos False for Qwen2.5; no normalizer flags),
    so the logic is ported here; warnings-only branches are left out."""

    def __init__(self, path: Path, tokenizer: Dict[str, Any], load_merges: bool = True) -> None:
        self.types: Tuple[str, ...] = _SPECIAL_TYPES
        self.ids: Dict[str, int] = {}
        self.add_special_token: Dict[str, bool] = {}
        self.chat_template: Union[None, str, List[Dict[str, str]]] = None
        self.normalizer: Dict[str, bool] = {}
        self.merges = self._merges(tokenizer) if load_merges else []
        self._from_tokenizer_json(path, tokenizer)
        self._from_config_json(path)
        if not self.merges and load_merges:
            self.merges = self._merges_txt(path)

    @staticmethod
    def _merges(tokenizer: Dict[str, Any]) -> List[str]:
        merges = (tokenizer.get("model") or {}).get("merges")
        if not isinstance(merges, list) or not merges:
            return []
        if isinstance(merges[0], str):
            return merges
        if isinstance(merges[0], list) and len(merges[0]) == 2 and isinstance(merges[0][0], str):
            # transformers >= 4.45 pairs; a space inside a part becomes U+0120-shifted.
            return [
                " ".join("".join(chr(ord(c) + 256) if c == " " else c for c in part) for part in pair)
                for pair in merges
            ]
        raise ValueError("unknown tokenizer merges format")

    @staticmethod
    def _merges_txt(path: Path) -> List[str]:
        file = path / "merges.txt"
        if not file.is_file():
            return []
        lines = file.read_text(encoding="utf-8").splitlines()
        if lines and lines[0].strip().startswith("#"):
            lines = lines[1:]
        parts = (line.strip().split(None, 3) for line in lines)
        return [f"{p[0]} {p[1]}" for p in parts if len(p) == 2]

    def _set(self, typ: str, tid: Any) -> None:
        if not isinstance(tid, int):
            return
        if tid < 0:
            raise ValueError(f"invalid value for special token type {typ}: {tid}")
        self.ids.setdefault(typ, tid)

    def _normalizer(self, norm: Dict[str, Any]) -> None:
        kind = norm.get("type")
        if kind == "Lowercase":
            self.normalizer["lowercase"] = True
        elif kind == "StripAccents":
            self.normalizer["strip_accents"] = True
        elif kind == "BertNormalizer":
            for flag in ("lowercase", "strip_accents"):
                if flag in norm:
                    self.normalizer[flag] = norm[flag]
        elif kind == "Sequence":
            for n in norm.get("normalizers", []):
                self._normalizer(n)

    def _from_tokenizer_json(self, path: Path, tokenizer: Dict[str, Any]) -> None:
        if normalizer := tokenizer.get("normalizer"):
            self._normalizer(normalizer)
        added_tokens = tokenizer.get("added_tokens", {})
        cfg_path = path / "tokenizer_config.json"
        config: Optional[Dict[str, Any]] = _read_json(cfg_path) if cfg_path.is_file() else None
        self._post_processor(tokenizer.get("post_processor"), config)
        if not config:
            return
        self.chat_template = self._chat_template(path, config)
        for typ in self.types:
            add_entry = config.get(f"add_{typ}_token")
            if isinstance(add_entry, bool):
                self.add_special_token.setdefault(typ, add_entry)  # the post-processor wins
            entry = config.get(f"{typ}_token")
            content = entry.get("content") if isinstance(entry, dict) else entry
            if not isinstance(content, str):
                continue
            self._set(typ, next((a.get("id") for a in added_tokens if a.get("content") == content), None))

    def _post_processor(self, post: Optional[Dict[str, Any]], config: Optional[Dict[str, Any]]) -> None:
        """Which special tokens the tokenizer adds around a sequence. Mutates
        `config` as upstream does (bos/eos/cls/sep/eot/eom entries)."""
        if not post:
            return
        cfg = config or {}
        bos, cls, eos, sep = (cfg.get(k) for k in ("bos_token", "cls_token", "eos_token", "sep_token"))
        if not bos and cls and config:
            config["bos_token"] = bos = cls
        if not eos and sep and config:
            config["eos_token"] = eos = sep
        for proc in post.get("processors", [post]):
            kind = proc.get("type")
            if kind == "ByteLevel":
                self.add_special_token.setdefault("bos", False)
                self.add_special_token.setdefault("eos", False)
            elif kind == "RobertaProcessing":
                self.add_special_token.update(bos=True, eos=True, sep=True)
                if not cls and config:
                    config["cls_token"] = cls = proc.get("cls", [bos])[0]
                if not sep and config:
                    config["sep_token"] = sep = proc.get("sep", [eos])[0]
            elif kind == "TemplateProcessing":
                bos, cls, eos, sep = self._template(proc, config, bos, cls, eos, sep)

    def _template(
        self, proc: Dict[str, Any], config: Optional[Dict[str, Any]], bos: Any, cls: Any, eos: Any, sep: Any
    ) -> Tuple[Any, Any, Any, Any]:
        # Upstream's crude reading of TemplateProcessing: the first/last
        # special token of `single` are BOS/EOS; `pair` decides add_sep.
        single: Sequence[Dict[str, Any]] = proc.get("single", [])
        pair: Sequence[Dict[str, Any]] = proc.get("pair", [])
        first = last = None
        if len(single) > 1:
            if first := single[0].get("SpecialToken", {}).get("id"):
                if not config:
                    bos = first
                elif first not in (bos, cls):
                    if not bos:
                        config["bos_token"] = bos = first
                    if not cls:
                        config["cls_token"] = cls = first
                self.add_special_token["bos"] = first in (bos, cls)
            if last := single[-1].get("SpecialToken", {}).get("id"):
                if not config:
                    eos = last
                elif last != eos:
                    if "eot" not in self.types:
                        self.types += ("eot",)
                        config["eot_token"] = eos
                    elif "eom" not in self.types:
                        self.types += ("eom",)
                        config["eom_token"] = eos
                    config["eos_token"] = eos = last
                self.add_special_token["eos"] = last == eos
        if pair:
            start = 1 if first and pair[0].get("SpecialToken", {}).get("id") == first else 0
            stop = -1 if last and pair[-1].get("SpecialToken", {}).get("id") == last else None
            pair = pair[start:stop]
            if pair:
                a = pair[0].get("Sequence", {}).get("id")
                b = pair[-1].get("Sequence", {}).get("id")
                if a == "A" and b == "B" and (middle := pair[1:-1]):
                    add_sep = False
                    if entry := middle[0].get("SpecialToken", {}).get("id"):
                        add_sep = entry in (sep, eos) and not last
                    if len(middle) == 2:
                        if entry := middle[1].get("SpecialToken", {}).get("id"):
                            add_sep = add_sep or entry in (sep, eos)
                    self.add_special_token["sep"] = add_sep
                    if add_sep and not sep and config:
                        config["sep_token"] = eos
        return bos, cls, eos, sep

    @staticmethod
    def _chat_template(path: Path, config: Dict[str, Any]) -> Union[None, str, List[Dict[str, str]]]:
        alt: Union[None, str, List[Dict[str, str]]] = None
        jinja, js = path / "chat_template.jinja", path / "chat_template.json"
        if jinja.is_file():
            alt = jinja.read_text(encoding="utf-8")
            extra = sorted((path / "additional_chat_templates").glob("*.jinja"))
            if extra:
                alt = [{"name": "default", "template": alt}] + [
                    {"name": p.stem, "template": p.read_text(encoding="utf-8")} for p in extra
                ]
        elif js.is_file():
            alt = _read_json(js).get("chat_template")
        template = config.get("chat_template", alt)
        if template is None or isinstance(template, (str, list)):
            return template
        logger.warning("%s: chat_template is neither a string nor a list; ignored", path)
        return None

    def _from_config_json(self, path: Path) -> None:
        file = path / "config.json"
        if not file.is_file():
            return
        config = _read_json(file)
        for typ in self.types:
            tid = config.get(f"{typ}_token_id")
            if tid is None and "text_config" in config:
                tid = config["text_config"].get(f"{typ}_token_id")
            self._set(typ, tid)

    def add_to(self, writer: gguf.GGUFWriter, add_special: Dict[str, bool]) -> None:
        if self.merges:
            writer.add_token_merges(self.merges)
        for typ, tid in self.ids.items():
            if typ in _ID_KEYS:  # upstream's writer has no cls id
                writer.add_uint32(_ID_KEYS[typ], tid)
        for typ, value in add_special.items():
            if typ in _ADD_KEYS:
                writer.add_bool(_ADD_KEYS[typ], value)
        if self.chat_template is not None:
            writer.add_chat_template(self.chat_template)
        if "lowercase" in self.normalizer:
            writer.add_bool(_NORMALIZER_LOWERCASE, bool(self.normalizer["lowercase"]))
        if "strip_accents" in self.normalizer:
            writer.add_bool(_NORMALIZER_STRIP_ACCENTS, bool(self.normalizer["strip_accents"]))
