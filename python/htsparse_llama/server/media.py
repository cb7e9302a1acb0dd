"""Where a request's images and videos come from, and what is allowed.

- data URLs (data:video/mp4;base64,...) are decoded to a temporary file,
  since PyAV and Pillow read files;
- file paths (/abs/path or file:///abs/path) are read only inside the folders
  the server was started with (--media-dir); with none, no path is read, so a
  client cannot make the server read its files;
- http(s) URLs are refused: the server fetches nothing, so it never makes
  requests to other hosts on a client's behalf nor holds the model while a
  slow host answers.

Every refusal is an ApiError naming the part (messages[i].content[j]).
"""

from __future__ import annotations

import base64
import binascii
import mimetypes
import os
import re
from urllib.parse import unquote, unquote_to_bytes, urlsplit

from .types import ApiError, Limits, Media

_DATA_URL = re.compile(r"data:(?P<mime>[^;,]*)(?P<params>(?:;[^;,]*)*),(?P<data>.*)\Z", re.S | re.I)
_SCHEME = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*):")


def resolve_media(url: str, kind: str, limits: Limits, workdir, param: str) -> Media:
    """The file behind `url` for an image or video part; workdir.get() gives
    the request's temporary folder for decoded data URLs."""
    scheme = _SCHEME.match(url)
    name = scheme.group("scheme").lower() if scheme else ""
    if name == "data":
        return _data_url(url, kind, limits, workdir.get(), param)
    if name in ("http", "https"):
        raise ApiError(
            400,
            f"{param}: this server does not fetch media from URLs ({url[:80]}); send the {kind} "
            f"as a data URL (data:{'video/mp4' if kind == 'video' else 'image/png'};base64,...) or as "
            f"a file path under a folder the server was started with (--media-dir)",
            code="url_not_allowed",
            param=param,
        )
    if name == "file":
        parts = urlsplit(url)
        if parts.netloc not in ("", "localhost"):
            raise ApiError(
                400, f"{param}: file URLs on other hosts are not read ({url[:80]})", code="url_not_allowed", param=param
            )
        return _file(unquote(parts.path), kind, limits, param)
    if scheme and len(name) > 1:  # one letter: a Windows drive, a path
        raise ApiError(
            400,
            f"{param}: unsupported URL scheme '{name}:'; use a data URL or a file path",
            code="url_not_allowed",
            param=param,
        )
    return _file(url, kind, limits, param)


def _too_large(param: str, kind: str, size: int, limits: Limits) -> ApiError:
    return ApiError(
        413,
        f"{param}: the {kind} is {size / 2**20:.1f} MiB; this server takes at most "
        f"{limits.max_media_bytes / 2**20:.1f} MiB per image or video",
        code="media_too_large",
        param=param,
    )


def _data_url(url: str, kind: str, limits: Limits, folder: str, param: str) -> Media:
    m = _DATA_URL.match(url)
    if m is None:
        raise ApiError(
            400, f"{param}: a data URL must look like data:<type>;base64,<data>", code="invalid_value", param=param
        )
    mime = m.group("mime").strip().lower()
    is_base64 = any(p.strip().lower() == "base64" for p in m.group("params").split(";"))
    data = m.group("data")
    estimate = len(data) * 3 // 4 if is_base64 else len(data) // 3
    if estimate > limits.max_media_bytes:  # refused before decoding it
        raise _too_large(param, kind, estimate, limits)
    try:
        raw = base64.b64decode("".join(data.split()), validate=True) if is_base64 else unquote_to_bytes(data)
    except (binascii.Error, ValueError):
        raise ApiError(
            400, f"{param}: the data URL's base64 payload is not valid base64", code="invalid_value", param=param
        ) from None
    if not raw:
        raise ApiError(400, f"{param}: the data URL holds no data", code="invalid_value", param=param)
    if len(raw) > limits.max_media_bytes:
        raise _too_large(param, kind, len(raw), limits)
    suffix = mimetypes.guess_extension(mime) if mime else None
    fd, path = _new_file(folder, suffix or (".mp4" if kind == "video" else ".img"))
    with os.fdopen(fd, "wb") as f:
        f.write(raw)
    return Media(kind, path, f"the {kind} data URL of {param}")


def _new_file(folder: str, suffix: str):
    import tempfile

    return tempfile.mkstemp(suffix=suffix, dir=folder)


def _inside(path: str, folders) -> bool:
    for folder in folders:
        root = os.path.realpath(folder)
        if path == root or path.startswith(root.rstrip(os.sep) + os.sep):
            return True
    return False


def _file(path: str, kind: str, limits: Limits, param: str) -> Media:
    if not limits.media_dirs:
        raise ApiError(
            403,
            f"{param}: this server reads no file paths (it was started without --media-dir); "
            f"send the {kind} as a data URL",
            type="permission_error",
            code="path_not_allowed",
            param=param,
        )
    if not os.path.isabs(path):
        raise ApiError(
            400, f"{param}: a file path must be absolute, got {path[:200]!r}", code="invalid_value", param=param
        )
    real = os.path.realpath(path)  # symbolic links are followed before the check, so one cannot lead outside
    if not _inside(real, limits.media_dirs):
        raise ApiError(
            403,
            f"{param}: {path[:200]!r} is outside the folders this server reads media from (--media-dir)",
            type="permission_error",
            code="path_not_allowed",
            param=param,
        )
    if not os.path.isfile(real):
        raise ApiError(400, f"{param}: no such file: {path[:200]!r}", code="invalid_value", param=param)
    size = os.path.getsize(real)
    if size > limits.max_media_bytes:
        raise _too_large(param, kind, size, limits)
    return Media(kind, real, path)
