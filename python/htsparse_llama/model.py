"""The Python API: Model (an immutable loaded GGUF) and Session (one
conversation with its own KV cache).

    model = Model("model.gguf", n_ctx=4096, n_threads=4, device="auto")
    s = model.session()
    s.add_message("user", "Hello!")
    for piece in s.generate(max_tokens=64, temperature=0.7):
        print(piece, end="", flush=True)
"""

from __future__ import annotations

import os
from dataclasses import asdict
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from ._native_loader import native
from .errors import InvalidArgumentError
from .sampling import Sampling
from .session_stats import SessionStats, SparseView
from .sparse_config import SparseConfig


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

    def device_memory(self) -> Tuple[int, int]:
        """(free, total) bytes of the model's device memory, as ggml reports
        them (the system's memory for the CPU)."""
        free, total = self._native.device_memory()
        return int(free), int(total)

    def weight_placement(self) -> List[Tuple[str, str]]:
        """Each weight's name and the ggml buffer type it lives in (CPU, CPU_REPACK, CUDA0...)."""
        return [(str(name), str(buft)) for name, buft in self._native.weight_placement()]

    @property
    def kv_bytes_per_token(self) -> int:
        """Bytes a dense KV cache (F16 K and V, every layer) holds per token."""
        return 2 * self.n_layer * self.info["n_head_kv"] * self.info["n_embd_head"] * 2

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
        """The chat template's text before and after the content of one turn of
        `role` (with add_assistant, "after" ends with the assistant's header)."""
        before, after = self._native.chat_turn(role)
        return before, after + (self.assistant_header() if add_assistant else "")

    def assistant_header(self) -> str:
        """What the chat template puts before the assistant's answer."""
        return self._native.assistant_header()

    def session(
        self, n_ctx: Optional[int] = None, n_batch: int = 512, sparse: Optional[SparseConfig] = None
    ) -> "Session":
        """A new conversation with its own KV cache of n_ctx tokens. With
        `sparse`, text added with sparse=True is thinned by HT-Sparse for each
        question (None: the dense path)."""
        return Session(self, n_ctx=n_ctx or self.n_ctx, n_batch=n_batch, sparse=sparse)


class Session:
    """One conversation: the tokens seen so far and their KV cache.

    Text goes in with add_text / add_tokens / add_message; generate() streams
    the model's continuation. The session keeps the logits of the last token.
    The conversation's logic (chat turns, HT-Sparse, statistics, decoding)
    is the runtime's Conversation (runtime/src/conversation.h), shared with
    the C API; its decoder state (KV cache, scheduler) is a Context
    (runtime/src/context.h).
    """

    def __init__(
        self, model: Model, n_ctx: int = 4096, n_batch: int = 512, sparse: Optional[SparseConfig] = None
    ) -> None:
        self.model = model
        _check_positive("n_ctx", n_ctx)
        _check_positive("n_batch", n_batch)
        if sparse is not None and not isinstance(sparse, SparseConfig):
            raise InvalidArgumentError(f"sparse must be a SparseConfig or None, got {type(sparse).__name__}")
        self._conv = native.Conversation(model._native, n_ctx, n_batch, None if sparse is None else asdict(sparse))
        self._context = self._conv.context  # the decoder state (tests reach into it)
        self._sparse = SparseView(self._conv) if sparse is not None else None
        self.finish_reason: Optional[str] = None

    @property
    def n_past(self) -> int:
        """Tokens in the context so far."""
        return self._context.n_past

    @property
    def next_pos(self) -> int:
        """Rope position the next text token gets (past any M-RoPE image extent)."""
        return self._context.next_pos

    @property
    def n_ctx(self) -> int:
        return self._context.n_ctx

    @property
    def kv_bytes(self) -> int:
        """Bytes held by this session's KV cache."""
        return self._context.kv_bytes

    def tokens(self) -> List[int]:
        return list(self._context.tokens())

    # -- input ----------------------------------------------------------------------
    def add_tokens(
        self,
        tokens: Sequence[int],
        all_logits: bool = False,
        positions: Optional[np.ndarray] = None,
        sparse: bool = False,
    ) -> Optional[np.ndarray]:
        """Evaluates token ids after the current context. With all_logits,
        returns the logits of every new position, shape [len(tokens), n_vocab].

        `positions` overrides the rope positions (default: `next_pos` onwards):
        shape (n,), or (3, n) with time/height/width rows on M-RoPE models
        (qwen2vl), as Qwen-VL gives image tokens. sparse=True marks the tokens
        as a sparse span, as add_text(sparse=True) does."""
        ids = [int(t) for t in tokens]
        pos = None if positions is None else np.asarray(positions, dtype=np.int32)
        self._conv.add_tokens(ids, bool(sparse), bool(all_logits), pos)
        return np.asarray(self._context.all_logits()) if all_logits else None

    def add_embeddings(
        self,
        embd: np.ndarray,
        positions: Optional[np.ndarray] = None,
        placeholder: int = 0,
        sparse: bool = False,
        segments: Optional[Sequence[int]] = None,
        all_logits: bool = False,
    ) -> Optional[np.ndarray]:
        """Evaluates embedding rows instead of tokens: `embd` of shape
        (n, n_embd), float32, such as an image's visual tokens; on a model
        with DeepStack layers (Qwen3-VL) (n, info["n_embd_inp"]): the row,
        then one row per DeepStack layer, as libmtmd hands them out. `positions`
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
        segs = None if segments is None else [int(v) for v in segments]
        self._conv.add_embeddings(rows, int(placeholder), pos, bool(sparse), segs, bool(all_logits))
        return np.asarray(self._context.all_logits()) if all_logits else None

    def add_text(self, text: str, special: bool = True, sparse: bool = False) -> int:
        """Tokenizes and evaluates text (special markers parsed when `special`);
        BOS is added first when the session is empty and the model wants it.
        Returns the number of tokens added.

        sparse=True marks the text as a sparse span (a long document, a
        transcript): in a session made with a SparseConfig, only the parts
        each question needs stay in most heads' KV cache. In a dense session
        it is ordinary text."""
        return self._conv.add_text(text, bool(special), bool(sparse))

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
        return self._conv.add_message(role, [(p["text"], bool(p.get("sparse"))) for p in parts])

    def begin_turn(self, role: str) -> Tuple[str, str]:
        """Starts a turn of `role` whose content the caller adds itself (after
        a user turn, generate() opens the assistant's reply); returns the chat
        template's text before and after the content."""
        return tuple(self._conv.begin_turn(role))

    def add_chunks(self, chunks, sparse: bool = False) -> None:
        """Appends encoded chunks (a Chunks list from Vision) in order: text as
        tokens, images as embedding rows at their positions. sparse: from the
        first image chunk to the last, the text between included, one sparse
        span with a segment per image (see vision.py)."""
        self._conv.add_chunks(chunks, bool(sparse))

    def add_media_turn(
        self, chunks, question: str, sparse: bool = True, turn_text: Optional[Tuple[str, str]] = None
    ) -> None:
        """A user turn holding the chunks and then the question, rendered with
        the chat template as its templates render [video, text] content: text
        touching the chunks' first or last text chunk is tokenized with it.
        turn_text: (before, after) the turn's content instead of the
        template's (a processor's own prompt format); generate() then opens no
        assistant header of its own."""
        self._conv.add_media_turn(chunks, question, bool(sparse), turn_text)

    # -- output ---------------------------------------------------------------------
    def logits(self) -> np.ndarray:
        """Logits of the last evaluated position, shape [n_vocab] (float32).
        A question waiting after a sparse span is evaluated first (select())."""
        self.select()
        return np.asarray(self._context.logits())

    def select(self, replace_kept: Optional[Callable[[List[int]], List[int]]] = None) -> Optional[Dict[str, Any]]:
        """HT-Sparse: evaluates the question waiting after the sparse span(s),
        picks what to keep and runs the kept tokens through the pruned zone.
        generate() and logits() do this by themselves; call it to time it or
        to see the selection. Returns the selection (see `selection`), or None
        in a dense session or when no question waits.

        `replace_kept` is for baselines: it maps the selected span tokens to
        the ones kept instead (the head routing stays as selected)."""
        if not self._conv.holds_back:
            return None
        self._conv.select(replace_kept)
        return self.selection

    @property
    def sparse(self) -> Optional[SparseView]:
        """The HT-Sparse state (spans, their segments, the selection), read
        from the runtime; None in a dense session."""
        return self._sparse

    def trial_selections(self, zones: Sequence[Tuple[int, int]]) -> List[Dict[str, Any]]:
        """Calibration and analysis: the selection the runtime would make at
        each (select layer, prune layer) of `zones` for the question waiting
        after the sparse span(s), as `selection` shows one, compacting
        nothing. Needs a session made with SparseConfig(prune_layer=n_layer)
        (the spans then run every layer) that has not answered yet; the
        question runs densely, and the session answers densely afterwards."""
        return [dict(sel) for sel in self._conv.trial_selections([(int(s), int(p)) for s, p in zones])]

    @property
    def selection(self) -> Optional[Dict[str, Any]]:
        """The last HT-Sparse selection: `kept_in_span` (kept tokens of the
        sparse spans, relative to the first span's start), `full_kv` (per
        layer, per KV head: keeps the whole span) and `kv_head_score`. None
        before the first question."""
        return self._sparse.selection if self._sparse is not None else None

    def answered(self) -> None:
        """Marks the assistant's answer as finished when it was decoded by
        hand (add_tokens, logits) rather than by generate(), which does this
        itself: with re-routing, the next user turn is then a new question
        that selects anew."""
        self._conv.answered()

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
        token, a `stop` string (text that may start one is held back until it
        is known not to), max_tokens, or a full context; the reason is left in
        self.finish_reason ("stop", "length" or "context"). Closing the
        stream early ends the answer there ("cancelled")."""
        opts = Sampling(
            max_tokens=max_tokens,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            min_p=min_p,
            repeat_penalty=repeat_penalty,
            seed=seed,
            stop=tuple(stop),
        )
        answer = native.Answer(
            self._conv,
            opts.temperature,
            opts.top_k,
            opts.top_p,
            opts.min_p,
            opts.repeat_penalty,
            64,
            opts.native_seed,
            opts.max_tokens,
            list(opts.stop),
        )
        self.finish_reason = None
        pieces = self._stream(answer)
        return pieces if stream else "".join(pieces)

    def _stream(self, answer) -> Iterator[str]:
        try:
            while True:
                piece = answer.next()  # bytes of whole UTF-8 characters; None once the answer has ended
                if piece is None:
                    break
                if piece:
                    yield piece.decode("utf-8", errors="replace")
        except GeneratorExit:
            answer.cancel()  # the reader left: close the turn so the conversation stays whole
            raise
        finally:
            self.finish_reason = answer.finish_reason if answer.done else None

    def stats(self) -> SessionStats:
        """Sizes, KV memory (actual and what a dense cache would hold) and
        timings of this conversation so far."""
        return SessionStats.from_native(self._conv.stats())

    def reset(self) -> None:
        """Forgets the conversation: empty context, cleared KV cache."""
        self._conv.reset()
        self.finish_reason = None
