"""The Python API: Model (an immutable loaded GGUF) and Session (one
conversation with its own KV cache).

    model = Model("model.gguf", n_ctx=4096, n_threads=4, device="auto")
    s = model.session()
    s.add_message("user", "Hello!")
    for piece in s.generate(max_tokens=64, temperature=0.7):
        print(piece, end="", flush=True)
"""

from __future__ import annotations

import codecs
import os
import time
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from ._native_loader import native
from .errors import ContextOverflowError, InvalidArgumentError
from .sparse_config import SparseConfig
from .sparse_session import SessionStats, SparseState

_TURN_MARK = "@@htsparse-turn-content@@"


def supported_architectures() -> List[str]:
    """Names of the GGUF architectures (general.architecture) this runtime runs."""
    return list(native.supported_architectures())


def _check_positive(name: str, value: int, allow_zero: bool = False) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
        raise InvalidArgumentError(f"{name} must be an integer, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        raise InvalidArgumentError(f"{name} must be {'>= 0' if allow_zero else 'positive'}, got {value}")
    return int(value)


class Model:
    """A GGUF model loaded for inference.

    Args:
        path: a llama.cpp GGUF file (qwen2, qwen2vl or llama architecture).
        n_ctx: default context length (tokens) of sessions made from this model.
        n_threads: CPU threads; None or 0 uses every hardware thread.
        device: "auto" (GPU when there is one), "cpu", "gpu" or a ggml device
            name such as "CUDA0".
        verbose: print llama.cpp's own log messages.
    """

    def __init__(
        self,
        path: Union[str, os.PathLike],
        n_ctx: int = 4096,
        n_threads: Optional[int] = None,
        device: str = "auto",
        verbose: bool = False,
    ) -> None:
        self.path = os.fspath(path)
        self.n_ctx = _check_positive("n_ctx", n_ctx)
        threads = _check_positive("n_threads", n_threads or 0, allow_zero=True)
        self._native = native.Model(self.path, device, threads, verbose)
        self.info = dict(self._native.info())

    # -- properties -----------------------------------------------------------------
    @property
    def arch(self) -> str:
        return self.info["arch"]

    @property
    def n_vocab(self) -> int:
        return self.info["n_vocab"]

    @property
    def n_layer(self) -> int:
        return self.info["n_layer"]

    @property
    def device(self) -> str:
        return self.info["device"]

    @property
    def n_threads(self) -> int:
        return self.info["n_threads"]

    def __repr__(self) -> str:
        return f"Model({self.path!r}, arch={self.arch}, device={self.device}, n_threads={self.n_threads})"

    # -- text -----------------------------------------------------------------------
    def tokenize(self, text: str, add_special: bool = False, special: bool = True) -> List[int]:
        """Token ids of `text`. add_special adds BOS/EOS as the model wants;
        special parses markers such as "<|im_start|>" as their tokens."""
        return list(self._native.tokenize(text, add_special, special))

    def detokenize(self, tokens: Sequence[int], special: bool = False) -> str:
        """Text of `tokens` (special tokens rendered when `special`)."""
        return self._native.detokenize(list(tokens), special).decode("utf-8", errors="replace")

    def token_bytes(self, token: int) -> bytes:
        """The raw bytes of one token (may be a partial UTF-8 sequence)."""
        return self._native.token_to_piece(int(token), False)

    def is_eog(self, token: int) -> bool:
        """True for end-of-generation tokens (end of turn, end of text)."""
        return bool(self._native.is_eog(int(token)))

    def apply_chat_template(self, messages: Sequence[Tuple[str, str]], add_assistant: bool = True) -> str:
        """Renders (role, content) pairs with the GGUF's own chat template."""
        return self._native.apply_chat_template([(r, c) for r, c in messages], add_assistant)

    def chat_turn(self, role: str, add_assistant: bool = False) -> Tuple[str, str]:
        """The chat template's text before and after the content of one turn of `role`."""
        before, after = self.apply_chat_template([(role, _TURN_MARK)], add_assistant=add_assistant).split(_TURN_MARK, 1)
        return before, after

    def assistant_header(self) -> str:
        """What the chat template puts before the assistant's answer."""
        with_header = self.apply_chat_template([("user", "x")], add_assistant=True)
        return with_header[len(self.apply_chat_template([("user", "x")], add_assistant=False)):]

    def session(self, n_ctx: Optional[int] = None, n_batch: int = 512,
                sparse: Optional[SparseConfig] = None) -> "Session":
        """A new conversation with its own KV cache of n_ctx tokens. With
        `sparse`, text added with sparse=True is thinned by HT-Sparse for each
        question (None: the dense path)."""
        return Session(self, n_ctx=n_ctx or self.n_ctx, n_batch=n_batch, sparse=sparse)


class Session:
    """One conversation: the tokens seen so far and their KV cache.

    Text goes in with add_text / add_tokens / add_message; generate() streams
    the model's continuation. The session keeps the logits of the last token.
    """

    def __init__(self, model: Model, n_ctx: int = 4096, n_batch: int = 512,
                 sparse: Optional[SparseConfig] = None) -> None:
        self.model = model
        _check_positive("n_ctx", n_ctx)
        _check_positive("n_batch", n_batch)
        if sparse is not None and not isinstance(sparse, SparseConfig):
            raise InvalidArgumentError(f"sparse must be a SparseConfig or None, got {type(sparse).__name__}")
        self._sparse_config = sparse
        self._native = native.Session(model._native, n_ctx, n_batch)
        self._sparse = SparseState(model, sparse, self._native) if sparse is not None else None
        self._stats = SessionStats()
        self._assistant_open = False  # generated tokens belong to an open assistant turn
        self._pending_assistant = False  # a user turn awaits the assistant header
        self.finish_reason: Optional[str] = None

    @property
    def n_past(self) -> int:
        """Tokens in the context so far."""
        return self._native.n_past

    @property
    def next_pos(self) -> int:
        """Rope position the next text token gets (past any M-RoPE image extent)."""
        return self._native.next_pos

    @property
    def n_ctx(self) -> int:
        return self._native.n_ctx

    @property
    def kv_bytes(self) -> int:
        """Bytes held by this session's KV cache."""
        return self._native.kv_bytes

    def tokens(self) -> List[int]:
        return list(self._native.tokens())

    # -- input ----------------------------------------------------------------------
    def add_tokens(
        self, tokens: Sequence[int], all_logits: bool = False, positions: Optional[np.ndarray] = None,
        sparse: bool = False,
    ) -> Optional[np.ndarray]:
        """Evaluates token ids after the current context. With all_logits,
        returns the logits of every new position, shape [len(tokens), n_vocab].

        `positions` overrides the rope positions (default: `next_pos` onwards):
        shape (n,), or (3, n) with time/height/width rows on M-RoPE models
        (qwen2vl), as Qwen-VL gives image tokens. sparse=True marks the tokens
        as a sparse span, as add_text(sparse=True) does."""
        ids = [int(t) for t in tokens]
        if not ids:
            raise InvalidArgumentError("add_tokens needs at least one token")
        if sparse and self._sparse is not None:
            if all_logits or positions is not None:
                raise InvalidArgumentError("a sparse span takes neither all_logits nor positions yet")
            self._add_span(ids)
            return None
        return self._eval(ids, all_logits, positions)

    def add_embeddings(
        self, embd: np.ndarray, positions: Optional[np.ndarray] = None, placeholder: int = 0, sparse: bool = False,
        segments: Optional[Sequence[int]] = None, all_logits: bool = False,
    ) -> Optional[np.ndarray]:
        """Evaluates embedding rows instead of tokens: `embd` of shape
        (n, n_embd), float32, such as an image's visual tokens. `positions`
        as in add_tokens ((3, n) time/height/width rows for M-RoPE images).
        The cells show token id `placeholder` in tokens() (use the model's
        image token).

        sparse=True makes them a sparse span in a session with a
        SparseConfig; `segments` are the span-relative starts of its
        segments (one per frame, say), by default runs of segment_tokens rows."""
        rows = np.ascontiguousarray(embd, dtype=np.float32)
        if rows.ndim != 2 or len(rows) == 0:
            raise InvalidArgumentError(f"embeddings must be a non-empty 2-D array (n, n_embd), got shape {rows.shape}")
        pos = None if positions is None else np.asarray(positions, dtype=np.int32)
        if sparse and self._sparse is not None:
            if all_logits:
                raise InvalidArgumentError("a sparse span takes no all_logits")
            start = time.perf_counter()
            self._sparse.add_embedding_span(self._native, rows, int(placeholder), pos, segments)
            self._count_prompt_time(start)
            self._stats.n_sparse += len(rows)
            return None
        if self._sparse is not None and self._sparse.holds_back:
            raise InvalidArgumentError("embeddings after a sparse span and before the answer must be sparse too")
        start = time.perf_counter()
        self._native.eval_embd(rows, int(placeholder), all_logits, pos)
        self._count_prompt_time(start)
        return np.asarray(self._native.all_logits()) if all_logits else None

    def _add_span(self, ids: List[int]) -> None:
        start = time.perf_counter()
        self._sparse.add_span(self._native, ids)
        self._count_prompt_time(start)
        self._stats.n_sparse += len(ids)

    def _eval(self, ids: List[int], all_logits: bool = False,
              positions: Optional[np.ndarray] = None) -> Optional[np.ndarray]:
        if self._sparse is not None and self._sparse.holds_back:
            # The question after a sparse span: evaluated when the answer starts.
            if all_logits or positions is not None:
                raise InvalidArgumentError("all_logits and positions are not available between a sparse span "
                                           "and the start of the answer")
            self._sparse.pending += ids
            return None
        start = time.perf_counter()
        self._native.eval(ids, all_logits, None if positions is None else np.asarray(positions, dtype=np.int32))
        self._count_prompt_time(start)
        return np.asarray(self._native.all_logits()) if all_logits else None

    def _count_prompt_time(self, start: float) -> None:
        stage = "prompt" if self._stats.ttft_ms is None else "follow_up"
        self._stats.prefill_ms[stage] = self._stats.prefill_ms.get(stage, 0.0) + (time.perf_counter() - start) * 1000

    def add_text(self, text: str, special: bool = True, sparse: bool = False) -> int:
        """Tokenizes and evaluates text (special markers parsed when `special`);
        BOS is added first when the session is empty and the model wants it.
        Returns the number of tokens added.

        sparse=True marks the text as a sparse span (a long document, a
        transcript): in a session made with a SparseConfig, only the parts
        each question needs stay in most heads' KV cache. In a dense session
        it is ordinary text."""
        ids = self.model.tokenize(text, add_special=False, special=special)
        if self.n_past == 0 and self.model.info["add_bos"] and self.model.info["bos"] >= 0:
            ids = [self.model.info["bos"]] + ids
        if not ids:
            return 0
        if sparse and self._sparse is not None:
            self._add_span(ids)
        else:
            self._eval(ids)
        return len(ids)

    def add_message(self, role: str, content: Union[str, Sequence[dict]]) -> int:
        """Adds one chat turn rendered with the GGUF's chat template. After a
        user turn, generate() opens the assistant's reply.

        `content` is a string, or a list of parts {"text": str, "sparse":
        bool}: a sparse part (a long document) is a sparse span, thinned by
        HT-Sparse in a session made with a SparseConfig."""
        parts = [{"text": content}] if isinstance(content, str) else list(content)
        for part in parts:
            if not isinstance(part, dict) or not isinstance(part.get("text"), str):
                raise InvalidArgumentError('content must be a string or a list of {"text": str, "sparse": bool} parts')
        before, after = self._begin_turn(role)
        if len(parts) == 1 and not parts[0].get("sparse"):
            return self.add_text(before + parts[0]["text"] + after)
        n = self.add_text(before)
        for part in parts:
            n += self.add_text(part["text"], sparse=bool(part.get("sparse")))
        return n + self.add_text(after)

    def _begin_turn(self, role: str) -> Tuple[str, str]:
        """Starts a turn of `role` (after a user turn, generate() opens the
        assistant's reply); the template's text around its content."""
        self._assistant_open = False
        self._pending_assistant = role != "assistant"
        return self.model.chat_turn(role)

    def _turn_tail(self) -> str:
        """What the template puts after an assistant message's content."""
        return self.model.chat_turn("assistant")[1]

    # -- output ---------------------------------------------------------------------
    def logits(self) -> np.ndarray:
        """Logits of the last evaluated position, shape [n_vocab] (float32).
        A question waiting after a sparse span is evaluated first (select())."""
        self.select()
        return np.asarray(self._native.logits())

    def select(self, replace_kept: Optional[Callable[[List[int]], List[int]]] = None) -> Optional[Dict[str, Any]]:
        """HT-Sparse: evaluates the question waiting after the sparse span(s),
        picks what to keep and runs the kept tokens through the pruned zone.
        generate() and logits() do this by themselves; call it to time it or
        to see the selection. Returns the selection (see `selection`), or None
        in a dense session or when no question waits.

        `replace_kept` is for baselines: it maps the selected span tokens to
        the ones kept instead (the head routing stays as selected)."""
        if self._sparse is None or not self._sparse.holds_back:
            return None
        self._sparse.select(self._native, self._stats, replace_kept)
        return self.selection

    @property
    def selection(self) -> Optional[Dict[str, Any]]:
        """The last HT-Sparse selection: `kept_in_span` (kept tokens of the
        sparse spans, relative to the first span's start), `full_kv` (per
        layer, per KV head: keeps the whole span) and `kv_head_score`. None
        before the first question."""
        if self._sparse is None or self._sparse.selection is None:
            return None
        return dict(self._sparse.selection)

    def answered(self) -> None:
        """Marks the assistant's answer as finished when it was decoded by
        hand (add_tokens, logits) rather than by generate(), which does this
        itself: with re-routing, the next user turn is then a new question
        that selects anew."""
        if self._sparse is not None:
            self._sparse.answered()

    def generate(
        self,
        max_tokens: int = 256,
        temperature: float = 0.8,
        top_k: int = 40,
        top_p: float = 0.95,
        min_p: float = 0.05,
        repeat_penalty: float = 1.0,
        seed: Optional[int] = None,
        stop: Sequence[str] = (),
        stream: bool = True,
    ) -> Union[Iterator[str], str]:
        """Continues the conversation. Yields text pieces as they are decoded
        (stream=True) or returns the whole text. Stops at an end-of-generation
        token, a `stop` string, max_tokens, or a full context; the reason is
        left in self.finish_reason ("stop", "length" or "context")."""
        _check_positive("max_tokens", max_tokens)
        sampler = native.Sampler(
            self.model._native,
            float(temperature),
            int(top_k),
            float(top_p),
            float(min_p),
            float(repeat_penalty),
            64,
            0xFFFFFFFF if seed is None else int(seed) & 0xFFFFFFFF,
        )
        if self.n_past == 0:
            raise InvalidArgumentError("nothing to continue: add text or a message first")
        started = time.perf_counter()
        if self._pending_assistant:
            self.add_text(self.model.assistant_header())
            self._pending_assistant = False
            self._assistant_open = True
        self.select()
        if self._stats.ttft_ms is None:
            self._stats.n_prompt = self.n_past
        pieces = self._generate(sampler, max_tokens, list(stop), started)
        return pieces if stream else "".join(pieces)

    def _generate(self, sampler, max_tokens: int, stop: List[str], started: float) -> Iterator[str]:
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        text = ""
        self.finish_reason = "length"
        first_at, n_decoded = None, 0
        for _ in range(max_tokens):
            token = sampler.sample(self._native)
            sampler.accept(token)
            if first_at is None:
                first_at = time.perf_counter()
                if self._stats.ttft_ms is None:
                    self._stats.ttft_ms = (first_at - started) * 1000
            else:
                n_decoded += 1
            if self.model.is_eog(token):
                self.finish_reason = "stop"
                break
            piece = decoder.decode(self.model.token_bytes(token))
            text += piece
            if self.n_past >= self.n_ctx:
                self.finish_reason = "context"
                if piece:
                    yield piece
                break
            self._native.eval([token], False)
            hit = next((s for s in stop if s and s in text), None)
            if hit is not None:
                piece = piece[: max(0, len(piece) - (len(text) - text.index(hit)))]
                self.finish_reason = "stop"
                if piece:
                    yield piece
                break
            if piece:
                yield piece
        if first_at is not None and n_decoded > 0:
            self._stats.decode_tok_s = n_decoded / (time.perf_counter() - first_at)
        tail = decoder.decode(b"", final=True)
        if tail:
            yield tail
        self._close_assistant_turn()
        self.answered()

    def stats(self) -> SessionStats:
        """Sizes, KV memory (actual and what a dense cache would hold) and
        timings of this conversation so far."""
        self._stats.kv_bytes = self._native.kv_bytes
        self._stats.kv_bytes_dense = self._native.kv_bytes_dense
        if self._sparse is not None:
            self._stats.select_layer = int(self._sparse.config["select_layer"])
            self._stats.prune_layer = int(self._sparse.config["prune_layer"])
        return self._stats

    def _close_assistant_turn(self) -> None:
        if not self._assistant_open:
            return
        self._assistant_open = False
        try:
            self.add_text(self._turn_tail())
        except ContextOverflowError:
            self.finish_reason = "context"

    def reset(self) -> None:
        """Forgets the conversation: empty context, cleared KV cache."""
        self._native.reset()
        self._sparse = (SparseState(self.model, self._sparse_config, self._native)
                        if self._sparse_config is not None else None)
        self._stats = SessionStats()
        self._assistant_open = False
        self._pending_assistant = False
        self.finish_reason = None
