"""The one loaded model behind the server, and the queue in front of it.

Requests are stateless: each builds a new Session from its messages, runs
while it holds the model, and is forgotten. One request runs at a time (the
model and its vision tower are not shared between threads); the others wait
in a bounded queue. What is kept between requests is the embedding cache, so
a video asked about again is not decoded and encoded again (its key is the
file's content, so the same data URL sent twice hits).

    engine = Engine(model, vision, "qwen2.5-vl-3b", Defaults(...), Limits(), EmbeddingCache())
    with engine.run(request) as gen:       # waits for the model; ApiError for a bad request
        for chunk in gen.chunks(): ...     # streamed, or gen.response() in one piece
"""

from __future__ import annotations

import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, Iterator, List, Optional

from ..errors import ContextOverflowError, HtsError, InvalidArgumentError
from ..sparse_config import SparseConfig, sparse_config_from
from ..video.cache import EmbeddingCache
from ..video.turn import VideoOptions, VideoTurn
from .types import ApiError, ChatRequest, Limits, Media


class RequestQueue:
    """One request at a time; at most max_waiting more wait (503 beyond),
    each at most `timeout` seconds (None: as long as it takes). Once stopped
    (the server is shutting down), waiting and new requests get a 503."""

    def __init__(self, max_waiting: int = 16, timeout: Optional[float] = None) -> None:
        self.max_waiting, self.timeout = max_waiting, timeout
        self._cond = threading.Condition()
        self._busy = False  # a request holds the model
        self.stopping = False
        self.n_in = 0  # running + waiting

    @contextmanager
    def slot(self) -> Iterator[None]:
        with self._cond:
            if self.stopping:
                raise stopping_error()
            if self.n_in > self.max_waiting:
                raise ApiError(
                    503,
                    f"the server is busy ({self.n_in - 1} requests waiting); try again later",
                    type="server_error",
                    code="server_busy",
                )
            self.n_in += 1
            try:
                deadline = None if self.timeout is None else time.monotonic() + self.timeout
                while self._busy and not self.stopping:
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        raise ApiError(
                            503,
                            f"the request waited {self.timeout:g} s for the model; try again later",
                            type="server_error",
                            code="queue_timeout",
                        )
                    self._cond.wait(left)
                if self.stopping:
                    raise stopping_error()
                self._busy = True
            except BaseException:
                self.n_in -= 1
                raise
        try:
            yield
        finally:
            with self._cond:
                self._busy = False
                self.n_in -= 1
                self._cond.notify_all()

    def stop(self) -> None:
        """Refuses new requests and wakes the waiting ones (they get a 503)."""
        with self._cond:
            self.stopping = True
            self._cond.notify_all()

    def wait_idle(self, timeout: Optional[float]) -> bool:
        """Waits until no request holds the model; False if it still does after `timeout` s."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._busy, timeout)


def stopping_error(cut_short: bool = False) -> ApiError:
    """What a request gets when the server stops under it (Ctrl-C, SIGTERM)."""
    what = "the answer was cut short" if cut_short else "the request was not run"
    return ApiError(503, f"the server is stopping; {what}", type="server_error", code="server_stopping")


@dataclass
class Defaults:
    """What a request gets for the fields it leaves out (the serve flags)."""

    sampling: Dict[str, Any]  # Session.generate keywords (Sampling's options)
    sparse: Dict[str, Any] = field(default_factory=dict)  # SparseConfig's options and `dense`
    ctx: int = 4096  # context of a request's text; its visual tokens come on top


def _relabel(message: str, media: List[Media]) -> str:
    """Errors about a decoded data URL name the part, not the temporary file."""
    for m in media:
        message = message.replace(m.path, m.label)
    return message


class Engine:
    def __init__(
        self,
        model,
        vision,
        model_id: str,
        defaults: Defaults,
        limits: Limits,
        cache: Optional[EmbeddingCache] = None,
        queue: Optional[RequestQueue] = None,
    ) -> None:
        self.model, self.vision, self.model_id = model, vision, model_id
        self.defaults, self.limits = defaults, limits
        self.cache = cache if cache is not None else EmbeddingCache()
        self.queue = queue if queue is not None else RequestQueue()
        self.created = int(time.time())
        # Tokens the session appends after an answer (the template's end of turn); not the answer's.
        self.turn_tail = len(model.tokenize(model.chat_turn("assistant")[1]))
        default = sparse_config_from(defaults.sparse)
        if default is not None:
            default.resolve(model)  # the server's own HT-Sparse flags fit this model, or it does not start

    # -- stopping (Ctrl-C, SIGTERM) -------------------------------------------------------
    def stop(self) -> None:
        """The server is shutting down: waiting and new requests get a 503,
        and the running one ends at its next step (between tokens, between
        frame groups of a video, between the prefill's messages); a single
        runtime call under way (one token, one prefill) is not interrupted."""
        self.queue.stop()

    def check_running(self, cut_short: bool = False) -> None:
        """Raises the 503 of a stopping server before the next runtime call."""
        if self.queue.stopping:
            raise stopping_error(cut_short)

    def model_card(self) -> Dict[str, Any]:
        return {"id": self.model_id, "object": "model", "created": self.created, "owned_by": "htsparse-llama"}

    @contextmanager
    def run(self, req: ChatRequest) -> Iterator["Generation"]:
        """Waits for the model, then builds the session and starts the answer
        (prefill and HT-Sparse selection happen here, so their errors come
        before any byte is sent); the model stays held until the block ends,
        and the answer is closed before it is let go (an answer left
        unfinished is cancelled there, not later when it is collected)."""
        with self.queue.slot():
            gen = self._start(req)
            try:
                yield gen
            finally:
                gen.close()

    # -- a request's session ---------------------------------------------------------------
    def sparse_config(self, overrides: Dict[str, Any]) -> Optional[SparseConfig]:
        """The HT-Sparse settings of a request: the server's, then the
        request's fields; None for dense. ApiError (400) when the runtime
        refuses them for this model."""
        config = sparse_config_from(dict(self.defaults.sparse, **overrides))
        if config is not None:
            try:
                config.resolve(self.model)  # layers out of range for this model, and the like
            except InvalidArgumentError as exc:
                raise ApiError(400, f"HT-Sparse settings: {exc}", code="invalid_value") from None
        return config

    def _progress(self, stage: str, done: int, total: int) -> None:
        self.check_running()  # raised inside the encoder's progress callback, it stops the encoding

    def _load_turn(self, req: ChatRequest, media: List[Media]):
        if self.vision is None:
            raise ApiError(
                400,
                "this server runs a text model without a vision tower, so it takes no images or "
                "videos (start it with --mmproj)",
                code="media_not_supported",
            )
        budget = req.video.get("max_visual_tokens", self.limits.max_visual_tokens)
        try:
            if media[0].kind == "video":
                v = req.video
                options = VideoOptions(v.get("fps"), v.get("max_frames"), v.get("start"), v.get("end"), budget)
                return VideoTurn.load_video(self.vision, media[0].path, options, self.cache, self._progress)
            turn = VideoTurn.load_images(self.vision, [m.path for m in media], self.cache, self._progress)
        except InvalidArgumentError as exc:  # VideoError: not a video, budget too small, bad start/end...
            raise ApiError(400, _relabel(str(exc), media), code="invalid_media") from None
        if turn.n_visual_tokens > budget:
            raise ApiError(
                400,
                f"the images make {turn.n_visual_tokens} visual tokens, more than the "
                f"{budget} allowed (max_visual_tokens)",
                code="invalid_media",
            )
        return turn

    def _start(self, req: ChatRequest) -> "Generation":
        sparse = self.sparse_config(req.sparse)
        visual = req.visual_index
        turn = self._load_turn(req, req.messages[visual].media) if visual is not None else None
        if turn is None:
            sparse = None  # nothing to thin: text requests run the dense path
        n_ctx = self.defaults.ctx + (turn.n_visual_tokens if turn is not None else 0)
        try:
            session = self.model.session(n_ctx=n_ctx, sparse=sparse)
            for i, m in enumerate(req.messages):
                self.check_running()
                if i == visual:
                    turn.ask(session, self.vision, m.text, sparse=sparse is not None)
                else:
                    session.add_message(m.role, m.text)
            self.check_running()
            pieces = session.generate(stream=True, **dict(self.defaults.sampling, **req.sampling))
        except ContextOverflowError as exc:
            raise ApiError(
                400,
                f"{exc} (the server's context is {self.defaults.ctx} text tokens; start it with a larger --ctx)",
                code="context_length_exceeded",
            ) from None
        except InvalidArgumentError as exc:
            raise ApiError(400, str(exc), code="invalid_value") from None
        return Generation(self, req, session, pieces, turn, sparse is not None)


class Generation:
    """One answer being decoded, in OpenAI's response shapes."""

    def __init__(self, engine: Engine, req: ChatRequest, session, pieces: Iterator[str], turn, sparse: bool) -> None:
        self.engine, self.req, self.session, self.turn, self.sparse = engine, req, session, turn, sparse
        self._pieces = pieces
        self.id = f"chatcmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.text = ""

    def pieces(self) -> Iterator[str]:
        """The answer's text pieces; a stopping server ends it between two
        tokens with a 503 (stopping_error)."""
        while True:
            self.engine.check_running(cut_short=True)
            piece = next(self._pieces, None)
            if piece is None:
                return
            self.text += piece
            yield piece

    def close(self) -> None:
        """Ends the answer: one not read to its end is cancelled (its turn
        closed), so that nothing runs in the runtime once the model is let go."""
        self._pieces.close()

    @property
    def finish_reason(self) -> str:
        return "length" if self.session.finish_reason in ("length", "context") else "stop"

    def usage(self) -> Dict[str, int]:
        s = self.session
        n_prompt = s.stats().n_prompt
        # Tokens evaluated since the prompt, less the end-of-turn text the session adds after an answer
        # (absent when the context ran out).
        completion = s.n_past - n_prompt - (self.engine.turn_tail if s.finish_reason != "context" else 0)
        completion = max(0, completion)
        return {"prompt_tokens": n_prompt, "completion_tokens": completion, "total_tokens": n_prompt + completion}

    def htsparse(self) -> Dict[str, Any]:
        """The session's statistics and what the visual input became."""
        stats = self.session.stats()
        out: Dict[str, Any] = asdict(stats)
        out["full_heads"] = [list(h) for h in stats.full_heads]
        out["sparse"] = self.sparse
        turn = self.turn
        out["visual_tokens"] = turn.n_visual_tokens if turn is not None else 0
        if turn is not None:
            out["from_cache"] = turn.from_cache
            if turn.plan is not None:
                out.update(frames=len(turn.times), width=turn.plan.width, height=turn.plan.height)
        return out

    def _base(self, kind: str) -> Dict[str, Any]:
        return {
            "id": self.id,
            "object": kind,
            "created": self.created,
            "model": self.engine.model_id,
            "system_fingerprint": None,
        }

    def response(self) -> Dict[str, Any]:
        """The whole answer as a chat.completion."""
        for _ in self.pieces():
            pass
        out = self._base("chat.completion")
        out["choices"] = [
            {
                "index": 0,
                "message": {"role": "assistant", "content": self.text, "refusal": None},
                "logprobs": None,
                "finish_reason": self.finish_reason,
            }
        ]
        out["usage"] = self.usage()
        out["htsparse"] = self.htsparse()
        return out

    def _chunk(self, delta: Dict[str, Any], finish: Optional[str] = None) -> Dict[str, Any]:
        out = self._base("chat.completion.chunk")
        out["choices"] = [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]
        return out

    def chunks(self) -> Iterator[Dict[str, Any]]:
        """chat.completion.chunk objects as the answer is decoded: the role,
        the text pieces, the finish reason (with the htsparse statistics),
        and the usage when the request asked (stream_options.include_usage)."""
        yield self._chunk({"role": "assistant", "content": ""})
        for piece in self.pieces():
            yield self._chunk({"content": piece})
        last = self._chunk({}, self.finish_reason)
        last["htsparse"] = self.htsparse()
        yield last
        if self.req.include_usage:
            usage = self._base("chat.completion.chunk")
            usage.update(choices=[], usage=self.usage())
            yield usage


def describe_error(exc: BaseException) -> ApiError:
    """An unexpected failure while answering, as a 500 (the server keeps serving)."""
    if isinstance(exc, ApiError):
        return exc
    what = "the runtime failed" if isinstance(exc, HtsError) else "internal error"
    return ApiError(500, f"{what}: {exc}", type="server_error", code="internal_error")
