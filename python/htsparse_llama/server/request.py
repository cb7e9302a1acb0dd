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

The sampling, HT-Sparse and video fields are the options of Sampling,
SparseConfig (with `dense`) and VideoOptions, made from their one
declaration (options.py), under OpenAI's names where OpenAI has one; the
others are the openai client's extra_body. An unknown field is refused
rather than ignored, so a misspelt `keep_ratio` does not silently run with
the default.
"""

from __future__ import annotations

import json
import shutil
from typing import Any, Dict, List, Optional, Sequence

from ..options import OptionError, from_request, request_fields
from ..sampling import Sampling
from ..sparse_config import SPARSE_SWITCHES, SparseConfig
from ..video.turn import VideoOptions
from .media import resolve_media
from .types import ApiError, ChatRequest, Limits, Media, Message

ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}

# OpenAI's own fields: the ones this server implements come from the options below, the
# others are accepted at their no-op values only (_unsupported).
OPENAI_FIELDS = {
    "model",
    "messages",
    "stream",
    "stream_options",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "stop",
    "seed",
    "n",
    "frequency_penalty",
    "presence_penalty",
    "logprobs",
    "top_logprobs",
    "tools",
    "tool_choice",
    "functions",
    "function_call",
    "response_format",
    "logit_bias",
    "user",
    "metadata",
    "store",
    "service_tier",
}
OPTION_FIELDS = (
    request_fields(Sampling)
    + request_fields(SparseConfig)
    + request_fields(SPARSE_SWITCHES)
    + request_fields(VideoOptions)
)
EXTRA_FIELDS = [f for f in OPTION_FIELDS if f not in OPENAI_FIELDS]


# -- field checks --------------------------------------------------------------------------------


def _bad(param: str, message: str) -> ApiError:
    return ApiError(400, message, code="invalid_value", param=param)


def _options(source: Any, body: dict) -> Dict[str, Any]:
    """The fields of `source`'s options the body sets, checked (a 400 naming the field)."""
    try:
        return from_request(source, body)
    except OptionError as exc:
        raise _bad(exc.name, str(exc)) from None


def _bool(body: dict, name: str) -> Optional[bool]:
    value = body.get(name)
    if value is not None and not isinstance(value, bool):
        raise _bad(name, f"'{name}' must be true or false, got {json.dumps(value)}")
    return value


def _neutral(body: dict, name: str, neutral: Sequence[Any], why: str) -> None:
    """An OpenAI field this server does not implement: accepted only at its no-op value."""
    if name in body and body[name] not in neutral:
        raise ApiError(
            400, f"'{name}' is not supported by this server ({why})", code="unsupported_parameter", param=name
        )


def _sampling(body: dict) -> Dict[str, Any]:
    out = _options(Sampling, body)
    if "stop" in out:
        out["stop"] = [s for s in out["stop"] if s]
    return out


def _sparse(body: dict) -> Dict[str, Any]:
    return {**_options(SparseConfig, body), **_options(SPARSE_SWITCHES, body)}


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
        raise ApiError(
            400,
            f"messages[{i}] holds tool calls, which this server does not support",
            code="unsupported_parameter",
            param=f"messages[{i}]",
        )
    if isinstance(content, str):
        return Message(role, content)
    if not isinstance(content, list) or not content:
        raise _bad(where, f"'{where}' must be a string or a non-empty list of content parts")
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
            raise _bad(
                here,
                f"'{here}' has type {json.dumps(kind)}; this server takes 'text', 'image_url' and 'video_url' parts",
            )
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
            raise _bad(
                f"messages[{i}]",
                f"messages[{i}] must be an object whose 'role' is one of {', '.join(ROLES)} (got {got})",
            )
        messages.append(_content(i, m, ROLES[m["role"]], limits, workdir))
    if messages[-1].role != "user":
        raise _bad("messages", "the last message must be the user's (the server answers it)")
    _check_media(messages, limits)
    return messages


def _check_media(messages: List[Message], limits: Limits) -> None:
    with_media = [i for i, m in enumerate(messages) if m.media]
    if len(with_media) > 1:
        raise _bad(
            "messages",
            "images or a video may be in one user message only (the conversation's visual "
            f"span); messages {with_media} all have some",
        )
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
    unknown = sorted(set(obj) - OPENAI_FIELDS - set(EXTRA_FIELDS))
    if unknown:
        raise ApiError(
            400,
            f"unknown field(s) {', '.join(map(repr, unknown))}; extra fields this server takes: "
            f"{', '.join(EXTRA_FIELDS)}",
            code="unknown_parameter",
            param=unknown[0],
        )
    model = obj.get("model")
    if model is None:
        raise ApiError(400, "'model' is required", code="missing_required_parameter", param="model")
    if model not in model_ids:
        raise ApiError(
            404,
            f"The model {json.dumps(model)} does not exist; this server runs {', '.join(map(repr, model_ids))}",
            code="model_not_found",
            param="model",
        )
    _unsupported(obj)
    stream = bool(_bool(obj, "stream"))
    options = obj.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise _bad("stream_options", "'stream_options' must be an object")
    include_usage = bool(options and _bool(options, "include_usage"))
    sampling, sparse, video = _sampling(obj), _sparse(obj), _options(VideoOptions, obj)
    if video.get("max_visual_tokens") == "auto":
        raise _bad("max_visual_tokens", "'max_visual_tokens' is a number on this server (auto is the CLI's)")
    if video.get("max_visual_tokens", 0) > limits.max_visual_tokens:  # the server's bound, not the option's
        raise _bad(
            "max_visual_tokens",
            f"'max_visual_tokens' may be at most {limits.max_visual_tokens} on this "
            f"server, got {video['max_visual_tokens']}",
        )
    workdir = _Workdir()
    try:
        messages = _messages(obj, limits, workdir)
    except BaseException:
        if workdir.path is not None:
            shutil.rmtree(workdir.path, ignore_errors=True)
        raise
    return ChatRequest(model, messages, stream, include_usage, sampling, sparse, video, workdir.path)
