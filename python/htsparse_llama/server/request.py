"""An OpenAI chat-completions request body -> a ChatRequest the engine runs:
the messages as text turns (at most one user turn with images or a video),
the sampling settings, the HT-Sparse overrides and the video sampling
options, all checked here so that a bad request is one ApiError (a 4xx with
an OpenAI-style body) before the model is touched.

    req = parse_chat_request(body_bytes, limits, model_ids=["model"])
    try:
        ...                      # engine.run(req)
    finally:
        req.close()              # removes the files data URLs were decoded to

Fields beyond OpenAI's (the openai client's extra_body) are listed in
EXTRA_FIELDS; an unknown field is refused rather than ignored, so a
misspelt `keep_ratio` does not silently run with the default.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
MAX_STOP = 16


class ApiError(Exception):
    """A request the server refuses: HTTP status + OpenAI's error object."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error",
                 code: Optional[str] = None, param: Optional[str] = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type, code, param

    def body(self) -> Dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


@dataclass
class Limits:
    """What one request may ask for (the serve command's flags)."""

    max_body_bytes: int = 64 << 20
    max_media_bytes: int = 48 << 20
    max_visual_tokens: int = 8192
    max_images: int = 32
    media_dirs: Sequence[str] = ()


@dataclass
class Media:
    kind: str   # "image" | "video"
    path: str   # a readable file (a data URL is decoded to a temporary one)
    label: str  # how errors name it: the path, or "the video data URL"


@dataclass
class Message:
    role: str   # system | user | assistant
    text: str
    media: List[Media] = field(default_factory=list)


@dataclass
class ChatRequest:
    model: str
    messages: List[Message]
    stream: bool = False
    include_usage: bool = False
    sampling: Dict[str, Any] = field(default_factory=dict)  # Session.generate keywords given by the request
    sparse: Dict[str, Any] = field(default_factory=dict)    # HT-Sparse overrides given by the request
    video: Dict[str, Any] = field(default_factory=dict)     # VideoOptions fields given by the request
    workdir: Optional[str] = None  # temporary folder of decoded data URLs

    @property
    def visual_index(self) -> Optional[int]:
        """The message that carries the images or the video, if any."""
        return next((i for i, m in enumerate(self.messages) if m.media), None)

    def close(self) -> None:
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None


# -- field checks --------------------------------------------------------------------------------


def _bad(param: str, message: str) -> ApiError:
    return ApiError(400, message, code="invalid_value", param=param)


def _number(body: dict, name: str, lo: float, hi: float = math.inf, lo_open: bool = False,
            integer: bool = False) -> Optional[float]:
    """body[name] when present and not null, checked against [lo, hi] ((lo, hi] when lo_open)."""
    value = body.get(name)
    if value is None:
        return None
    kind = "an integer" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)) \
            or (isinstance(value, float) and not math.isfinite(value)):
        raise _bad(name, f"'{name}' must be {kind}, got {json.dumps(value)}")
    if value < lo or (lo_open and value == lo) or value > hi:
        span = f"{'(' if lo_open else '['}{lo:g}, {hi:g}]" if hi != math.inf else \
            (f"> {lo:g}" if lo_open else f">= {lo:g}")
        raise _bad(name, f"'{name}' must be {kind} {'in ' if hi != math.inf else ''}{span}, got {value}")
    return value


def _bool(body: dict, name: str) -> Optional[bool]:
    value = body.get(name)
    if value is not None and not isinstance(value, bool):
        raise _bad(name, f"'{name}' must be true or false, got {json.dumps(value)}")
    return value


def _neutral(body: dict, name: str, neutral: Sequence[Any], why: str) -> None:
    """An OpenAI field this server does not implement: accepted only at its no-op value."""
    if name in body and body[name] not in neutral:
        raise ApiError(400, f"'{name}' is not supported by this server ({why})", code="unsupported_parameter",
                       param=name)


# Extra (non-OpenAI) fields: name -> (check arguments for _number, or "bool"), grouped by where they go.
SAMPLING_EXTRAS = {"top_k": dict(lo=0, integer=True), "min_p": dict(lo=0, hi=1),
                   "repeat_penalty": dict(lo=0, lo_open=True)}
SPARSE_EXTRAS = {"keep_ratio": dict(lo=0, hi=1, lo_open=True), "keep_mass": dict(lo=0, hi=1, lo_open=True),
                 "full_head_ratio": dict(lo=0, hi=1), "select_layer": dict(lo=0, integer=True),
                 "prune_layer": dict(lo=0, integer=True), "dense": "bool"}
VIDEO_EXTRAS = {"fps": dict(lo=0, lo_open=True), "max_frames": dict(lo=1, integer=True), "start": dict(lo=0),
                "end": dict(lo=0, lo_open=True), "max_visual_tokens": dict(lo=1, integer=True)}
EXTRA_FIELDS = {**SAMPLING_EXTRAS, **SPARSE_EXTRAS, **VIDEO_EXTRAS}
STANDARD_FIELDS = {"model", "messages", "stream", "stream_options", "max_tokens", "max_completion_tokens",
                   "temperature", "top_p", "stop", "seed", "n", "frequency_penalty", "presence_penalty",
                   "logprobs", "top_logprobs", "tools", "tool_choice", "functions", "function_call",
                   "response_format", "logit_bias", "user", "metadata", "store", "service_tier"}


def _extras(body: dict, spec: dict) -> Dict[str, Any]:
    out = {}
    for name, check in spec.items():
        value = _bool(body, name) if check == "bool" else _number(body, name, **check)
        if value is not None:
            out[name] = value
    return out


def _sampling(body: dict) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    given = [n for n in ("max_completion_tokens", "max_tokens") if body.get(n) is not None]
    for name in given[:1]:  # the newer name wins when a client sends both
        out["max_tokens"] = int(_number(body, name, 1, integer=True))
    for name, key, check in (("temperature", "temperature", dict(lo=0, hi=2)),
                             ("top_p", "top_p", dict(lo=0, hi=1, lo_open=True)),
                             ("seed", "seed", dict(lo=-math.inf, integer=True))):
        value = _number(body, name, **check)
        if value is not None:
            out[key] = value
    stop = body.get("stop")
    if stop is not None:
        stops = [stop] if isinstance(stop, str) else stop
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops) or len(stops) > MAX_STOP:
            raise _bad("stop", f"'stop' must be a string or a list of at most {MAX_STOP} strings")
        out["stop"] = [s for s in stops if s]
    out.update(_extras(body, SAMPLING_EXTRAS))
    return out


def _unsupported(body: dict) -> None:
    _neutral(body, "n", (1, None), "it returns one choice")
    for name in ("frequency_penalty", "presence_penalty"):
        _neutral(body, name, (0, 0.0, None), "use the extra field 'repeat_penalty'")
    _neutral(body, "logprobs", (False, None), "no log probabilities")
    _neutral(body, "top_logprobs", (0, None), "no log probabilities")
    for name in ("tools", "functions", "logit_bias"):
        _neutral(body, name, (None, [], {}), "no tool calls" if name != "logit_bias" else "no logit bias")
    for name in ("tool_choice", "function_call"):
        _neutral(body, name, (None, "none", "auto"), "no tool calls")
    _neutral(body, "response_format", (None, {"type": "text"}), "plain text answers only")


# -- messages ------------------------------------------------------------------------------------


def _content(i: int, message: dict, role: str, limits: Limits, workdir: "_Workdir") -> Message:
    where = f"messages[{i}].content"
    content = message.get("content")
    if content is None and role == "assistant":
        content = ""
    if message.get("tool_calls") or message.get("function_call"):
        raise ApiError(400, f"messages[{i}] holds tool calls, which this server does not support",
                       code="unsupported_parameter", param=f"messages[{i}]")
    if isinstance(content, str):
        return Message(role, content)
    if not isinstance(content, list) or not content:
        raise _bad(where, f"'{where}' must be a string or a non-empty list of content parts")
    from .server_media import resolve_media

    texts: List[str] = []
    media: List[Media] = []
    for j, part in enumerate(content):
        here = f"{where}[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            if not isinstance(part.get("text"), str):
                raise _bad(here, f"'{here}.text' must be a string")
            texts.append(part["text"])
        elif kind in ("image_url", "video_url"):
            ref = part.get(kind)
            url = ref.get("url") if isinstance(ref, dict) else ref
            if not isinstance(url, str) or not url:
                raise _bad(here, f"'{here}.{kind}.url' must be a non-empty string (a data URL or a file path)")
            if role != "user":
                raise _bad(here, f"images and videos go in user messages, not in a {role} message ({here})")
            media.append(resolve_media(url, kind[:5], limits, workdir, here))
        else:
            raise _bad(here, f"'{here}' has type {json.dumps(kind)}; this server takes 'text', 'image_url' and "
                             f"'video_url' parts")
    # The visual span goes first and the question after it (VideoTurn.ask), so text parts are joined.
    return Message(role, "\n".join(texts), media)


def _messages(body: dict, limits: Limits, workdir: "_Workdir") -> List[Message]:
    raw = body.get("messages")
    if raw is None:
        raise ApiError(400, "'messages' is required", code="missing_required_parameter", param="messages")
    if not isinstance(raw, list) or not raw:
        raise _bad("messages", "'messages' must be a non-empty list")
    messages = []
    for i, m in enumerate(raw):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            got = json.dumps(m.get("role") if isinstance(m, dict) else m)
            raise _bad(f"messages[{i}]", f"messages[{i}] must be an object whose 'role' is one of "
                                         f"{', '.join(ROLES)} (got {got})")
        messages.append(_content(i, m, ROLES[m["role"]], limits, workdir))
    if messages[-1].role != "user":
        raise _bad("messages", "the last message must be the user's (the server answers it)")
    _check_media(messages, limits)
    return messages


def _check_media(messages: List[Message], limits: Limits) -> None:
    with_media = [i for i, m in enumerate(messages) if m.media]
    if len(with_media) > 1:
        raise _bad("messages", "images or a video may be in one user message only (the conversation's visual "
                               f"span); messages {with_media} all have some")
    if not with_media:
        return
    media = messages[with_media[0]].media
    kinds = {m.kind for m in media}
    if "video" in kinds and len(media) > 1:
        raise _bad("messages", "a message takes one video, or images, not several videos nor both")
    if len(media) > limits.max_images:
        raise _bad("messages", f"at most {limits.max_images} images per request, got {len(media)}")


class _Workdir:
    """A temporary folder made when the first data URL needs one."""

    def __init__(self) -> None:
        self.path: Optional[str] = None

    def get(self) -> str:
        if self.path is None:
            import tempfile

            self.path = tempfile.mkdtemp(prefix="htsparse-serve-")
        return self.path


# -- the request ---------------------------------------------------------------------------------


def parse_json(body: bytes) -> dict:
    try:
        obj = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"the request body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(obj, dict):
        raise ApiError(400, "the request body must be a JSON object", code="invalid_json")
    return obj


def parse_chat_request(body: bytes, limits: Limits, model_ids: Sequence[str]) -> ChatRequest:
    """The checked request; raises ApiError. Data URLs are decoded to files
    here, before the request waits for the model: call close() after."""
    obj = parse_json(body)
    unknown = sorted(set(obj) - STANDARD_FIELDS - set(EXTRA_FIELDS))
    if unknown:
        raise ApiError(400, f"unknown field(s) {', '.join(map(repr, unknown))}; extra fields this server takes: "
                            f"{', '.join(EXTRA_FIELDS)}", code="unknown_parameter", param=unknown[0])
    model = obj.get("model")
    if model is None:
        raise ApiError(400, "'model' is required", code="missing_required_parameter", param="model")
    if model not in model_ids:
        raise ApiError(404, f"The model {json.dumps(model)} does not exist; this server runs "
                            f"{', '.join(map(repr, model_ids))}", code="model_not_found", param="model")
    _unsupported(obj)
    stream = bool(_bool(obj, "stream"))
    options = obj.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise _bad("stream_options", "'stream_options' must be an object")
    include_usage = bool(options and _bool(options, "include_usage"))
    sampling, sparse, video = _sampling(obj), _extras(obj, SPARSE_EXTRAS), _extras(obj, VIDEO_EXTRAS)
    if video.get("max_visual_tokens", 0) > limits.max_visual_tokens:
        raise _bad("max_visual_tokens", f"'max_visual_tokens' may be at most {limits.max_visual_tokens} on this "
                                        f"server, got {video['max_visual_tokens']}")
    workdir = _Workdir()
    try:
        messages = _messages(obj, limits, workdir)
    except BaseException:
        if workdir.path is not None:
            shutil.rmtree(workdir.path, ignore_errors=True)
        raise
    return ChatRequest(model, messages, stream, include_usage, sampling, sparse, video, workdir.path)
