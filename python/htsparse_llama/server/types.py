"""What the server's parts hand each other: a refused request (ApiError, an
HTTP status and OpenAI's error object), the limits a request must keep
within, and a parsed request (ChatRequest: its messages with their media)."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence


class ApiError(Exception):
    """A request the server refuses: HTTP status + OpenAI's error object."""

    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",
        code: Optional[str] = None,
        param: Optional[str] = None,
    ) -> None:
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
    kind: str  # "image" | "video"
    path: str  # a readable file (a data URL is decoded to a temporary one)
    label: str  # how errors name it: the path, or "the video data URL"


@dataclass
class Message:
    role: str  # system | user | assistant
    text: str
    media: List[Media] = field(default_factory=list)


@dataclass
class ChatRequest:
    model: str
    messages: List[Message]
    stream: bool = False
    include_usage: bool = False
    sampling: Dict[str, Any] = field(default_factory=dict)  # Session.generate keywords given by the request
    sparse: Dict[str, Any] = field(default_factory=dict)  # HT-Sparse overrides given by the request
    video: Dict[str, Any] = field(default_factory=dict)  # VideoOptions fields given by the request
    workdir: Optional[str] = None  # temporary folder of decoded data URLs

    @property
    def visual_index(self) -> Optional[int]:
        """The message that carries the images or the video, if any."""
        return next((i for i, m in enumerate(self.messages) if m.media), None)

    def close(self) -> None:
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None
