"""Video files as frames: probe a file, stream the RGB frames shown at
chosen times to the vision encoder, read still images (plan.py chooses the
times and the size).

    >>> from htsparse_llama.video.frames import probe, iter_frames
    >>> info = probe("clip.mp4")
    >>> for f in iter_frames("clip.mp4", [0.0, 0.5, 1.0], size=(448, 224)):
    ...     encode(f.rgb)   # [H, W, 3] uint8, f.time_s = time of the decoded frame

Which frame (`iter_frames`): for a requested time t the frame shown at t,
i.e. the last decoded frame whose timestamp is <= t (the first frame when t
precedes it). Times are relative to the video stream's start. Decoding goes
forward and seeks to a keyframe only to skip far ahead, holding at most two
decoded frames, so a long video is never in memory.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterator, Optional, Sequence, Tuple

import numpy as np

from ..errors import VideoError

# ffmpeg's "tty" demuxer renders .txt/.nfo/.asc files as ANSI-art video.
_NOT_VIDEO_FORMATS = frozenset({"tty"})
_NOT_VIDEO_CODECS = frozenset({"ansi"})
# Still images open as a one-frame "video" (image2, jpeg_pipe, png_pipe...).
_IMAGE_FORMATS = frozenset({"image2", "image2pipe"})

_EPS = 1e-6  # seconds; absorbs float noise between requested and frame times


def _av():
    try:
        import av
    except ImportError as exc:  # pragma: no cover - av is a dependency
        raise ImportError("video input needs PyAV: pip install av") from exc
    return av


# ----------------------------------------------------------------- probing


@dataclass(frozen=True)
class VideoInfo:
    """What `probe` learned from the container, without decoding it all."""

    path: str
    duration_s: float
    fps: Optional[float]  # average frame rate; None when the file has none
    n_frames: Optional[int]  # from the container; None when unknown
    width: int
    height: int
    codec: str
    has_audio: bool
    container: str
    start_s: float = 0.0  # video stream start; frame times are relative to it


def _check_file(path, what: str) -> str:
    p = os.fspath(path)
    if not os.path.exists(p):
        raise VideoError(f"{what} file not found: {p}")
    if os.path.isdir(p):
        raise VideoError(f"{p} is a directory, not a {what} file")
    if not os.access(p, os.R_OK):
        raise VideoError(f"{what} file {p} cannot be read (permission denied)")
    if os.path.getsize(p) == 0:
        raise VideoError(f"{what} file {p} is empty (0 bytes)")
    return p


def _reason(exc: BaseException) -> str:
    msg = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return msg.rstrip(".")


def _open(path):
    """Open `path` and return (container, first video stream) or raise."""
    av = _av()
    p = _check_file(path, "video")
    try:
        container = av.open(p, mode="r")
    except (av.error.FFmpegError, OSError, UnicodeDecodeError) as exc:
        raise VideoError(
            f"{p} is not a readable video ({_reason(exc)}): it is corrupt, truncated or not a video file"
        ) from exc
    try:
        fmt = container.format.name
        videos = [s for s in container.streams.video if s.codec_context.name not in _NOT_VIDEO_CODECS]
        if fmt in _NOT_VIDEO_FORMATS or not videos:
            only = " (it holds only audio)" if container.streams.audio else ""
            raise VideoError(f"{p} has no video stream{only}")
        if fmt in _IMAGE_FORMATS or fmt.endswith("_pipe"):
            raise VideoError(f"{p} is a still image ({fmt}), not a video; pass it as an image")
        return container, videos[0]
    except BaseException:
        container.close()
        raise


def _frame_rate(stream) -> Optional[float]:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate:
            r = float(rate)
            if math.isfinite(r) and r > 0:
                return r
    return None


def _demux_duration(path: str) -> Optional[float]:
    """Last packet end time of the first video stream, demuxing only."""
    container, stream = _open(path)
    try:
        tb, start, end = stream.time_base, stream.start_time or 0, None
        rate, counted = _frame_rate(stream), 0.0
        for pkt in container.demux(stream):
            if pkt.size == 0:
                continue
            if pkt.pts is None:  # raw streams: add up packet durations
                counted += float(pkt.duration * tb) if pkt.duration else 1.0 / (rate or 25.0)
                continue
            e = pkt.pts + (pkt.duration or 0)
            end = e if end is None else max(end, e)
        return counted if end is None else float((end - start) * tb)
    finally:
        container.close()


def probe(path) -> VideoInfo:
    """Read a video's metadata and decode its first frame (to prove it is
    decodable); raises VideoError for anything that is not a usable video."""
    av = _av()
    container, stream = _open(path)
    p = os.fspath(path)
    try:
        tb = stream.time_base
        start_pts = stream.start_time or 0
        try:
            first = next(iter(container.decode(stream)), None)
        except av.error.FFmpegError as exc:
            raise VideoError(f"{p} cannot be decoded ({_reason(exc)}): the video is corrupt") from exc
        if first is None:
            raise VideoError(f"{p} has a video stream but no decodable frame (zero-length or corrupt video)")
        fps = _frame_rate(stream)
        n_frames = stream.frames if stream.frames and stream.frames > 0 else None
        duration = None
        if stream.duration and tb:
            duration = float(stream.duration * tb)
        elif container.duration:
            duration = container.duration / av.time_base
        elif n_frames and fps:
            duration = n_frames / fps
        width = stream.codec_context.width or first.width
        height = stream.codec_context.height or first.height
        info = dict(
            path=p,
            fps=fps,
            n_frames=n_frames,
            width=int(width),
            height=int(height),
            codec=stream.codec_context.name,
            has_audio=bool(container.streams.audio),
            container=container.format.name,
            start_s=float(start_pts * tb) if tb else 0.0,
        )
    finally:
        container.close()
    if duration is None:
        duration = _demux_duration(p)
    if not duration or duration <= 0 or not math.isfinite(duration):
        raise VideoError(f"{p} is a zero-length video")
    if info["fps"] is None and n_frames:
        info["fps"] = n_frames / duration
    return VideoInfo(duration_s=float(duration), **info)


# ---------------------------------------------------------------- argument checks


def check_number(name: str, value) -> float:
    """`value` as a finite float, or VideoError naming `name`."""
    if isinstance(value, bool) or not isinstance(value, (int, float, Fraction, np.integer, np.floating)):
        raise VideoError(f"{name} must be a number, got {value!r}")
    v = float(value)
    if not math.isfinite(v):
        raise VideoError(f"{name} must be a finite number, got {value!r}")
    return v


def check_int(name: str, value, minimum: int = 1) -> int:
    """`value` as an int >= minimum, or VideoError naming `name`."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise VideoError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise VideoError(f"{name} must be an integer >= {minimum}, got {value}")
    return int(value)


# ---------------------------------------------------------------- decoding


@dataclass(frozen=True)
class Frame:
    index: int  # position in the requested times
    time_s: float  # timestamp of the decoded frame (from the video start)
    rgb: np.ndarray  # [H, W, 3] uint8
    requested_s: float = 0.0


@dataclass
class DecodeStats:
    """Filled in by `iter_frames` (progress bars, and tests of streaming)."""

    decoded: int = 0
    seeks: int = 0


def _check_times(times) -> list:
    out = []
    for i, t in enumerate(times):
        v = check_number(f"times[{i}]", t)
        if v < 0:
            raise VideoError(f"frame times must be >= 0 s, got {v:g} s")
        if out and v < out[-1]:
            raise VideoError("frame times must be in increasing order")
        out.append(v)
    return out


def _check_size(size):
    if size is None:
        return None
    try:
        w, h = size
    except (TypeError, ValueError):
        raise VideoError(f"size must be (width, height), got {size!r}") from None
    return (check_int("width", w), check_int("height", h))


def iter_frames(
    path,
    times: Sequence[float],
    size: Optional[Tuple[int, int]] = None,
    *,
    seek_gap: float = 2.0,
    stats: Optional[DecodeStats] = None,
    interpolation: str = "BICUBIC",
) -> Iterator[Frame]:
    """Yield one RGB frame per requested time (increasing), resized to
    size=(width, height) if given. Decodes forward, seeking to the keyframe
    before a time more than `seek_gap` s ahead; holds at most two decoded
    frames. Several times may get the same frame when sampling above the
    native rate. Arguments and the file's presence are checked at the call;
    decoding errors surface while iterating."""
    times = _check_times(times)
    size = _check_size(size)
    p = _check_file(path, "video")
    reader = _Reader(p, seek_gap, stats if stats is not None else DecodeStats())
    return reader.frames(times, size, interpolation)


class _Reader:
    """Forward decoding with seeks; times are seconds from the stream start."""

    def __init__(self, path: str, seek_gap: float, stats: DecodeStats):
        self.path, self.seek_gap, self.stats = path, seek_gap, stats
        self.container = self.stream = self.dec = None
        self.n_pulled = 0

    def open(self):
        self.close()
        self.container, self.stream = _open(self.path)
        self.stream.thread_type = "AUTO"
        self.tb = self.stream.time_base
        self.start_pts = self.stream.start_time or 0
        self.rate = _frame_rate(self.stream)
        d = self.stream.duration
        self.duration = float(d * self.tb) if d else None
        self.dec, self.n_pulled = None, 0

    def close(self):
        if self.container is not None:
            self.container.close()
            self.container = None

    def pull(self, near: float):
        """The next decoded (frame, time), or None at the end."""
        av = _av()
        if self.dec is None:
            self.dec = self.container.decode(self.stream)
        try:
            fr = next(self.dec, None)
        except av.error.FFmpegError as exc:
            raise VideoError(
                f"{self.path} cannot be decoded near {near:.2f} s ({_reason(exc)}): the file is truncated or corrupt"
            ) from exc
        if fr is None:
            return None
        self.stats.decoded += 1
        self.n_pulled += 1
        if fr.pts is not None:
            return fr, float((fr.pts - self.start_pts) * self.tb)
        # raw streams carry no timestamps (and cannot seek): count frames
        return fr, (self.n_pulled - 1) / (self.rate or 25.0)

    def seek(self, target: float):
        """Restart at a keyframe at or before `target`; returns the first
        (frame, time) there, or None after reopening the file from its start
        when it cannot seek (raw streams, no timestamps)."""
        av = _av()
        back = 0.0
        while True:
            goal = max(0.0, target - back)
            offset = self.start_pts + int(Fraction(goal).limit_denominator(10**6) / self.tb)
            try:
                self.container.seek(offset, stream=self.stream, backward=True)
            except av.error.FFmpegError:
                break
            self.stats.seeks += 1
            self.dec = None
            first = self.pull(goal)
            if first is not None and first[0].pts is None:
                break  # seeked, but times are lost: start over
            if goal == 0.0 or (first is not None and first[1] <= target + _EPS):
                return first
            back = max(1.0, 2 * back)  # landed after target: go further back
        self.seek_gap = math.inf
        self.open()
        return None

    def frames(self, times, size, interpolation) -> Iterator[Frame]:
        self.open()
        try:
            yield from self._frames(times, size, interpolation)
        finally:
            self.close()

    def _frames(self, times, size, interpolation):
        eof = False
        cur = nxt = None  # (frame, time): last one <= target, first one after
        for i, t in enumerate(times):
            if nxt is not None and nxt[1] <= t + _EPS:
                cur, nxt = nxt, None
            if nxt is None and not eof:
                here = cur[1] if cur is not None else 0.0
                started = self.dec is not None
                if t - here > self.seek_gap or (not started and t > self.seek_gap):
                    first = self.seek(t)
                    cur = nxt = None
                    if first is not None:
                        if first[1] <= t + _EPS:
                            cur = first
                        else:
                            nxt = first
                        if started and first[1] <= here + _EPS:
                            # keyframes are sparse here: that seek re-decoded
                            # frames already seen, so seek only further ahead
                            self.seek_gap = max(self.seek_gap, 2 * (t - first[1]))
                while nxt is None:
                    got = self.pull(t)
                    if got is None:
                        eof = True
                        break
                    if got[1] <= t + _EPS:
                        cur = got
                    else:
                        nxt = got
            chosen = cur if cur is not None else nxt
            if chosen is None:
                raise VideoError(f"{self.path} has no decodable video frame")
            tol = max(1.0, 3.0 / (self.rate or 25.0))
            if eof and self.duration is not None and t < self.duration and t - chosen[1] > tol:
                raise VideoError(
                    f"{self.path} stops at {chosen[1]:.2f} s although it claims "
                    f"{self.duration:.2f} s: the file is truncated or corrupt"
                )
            yield Frame(i, chosen[1], _to_rgb(chosen[0], size, interpolation), t)


def _to_rgb(frame, size, interpolation) -> np.ndarray:
    if size is None:
        rgb = frame.reformat(format="rgb24")
    else:
        rgb = frame.reformat(width=size[0], height=size[1], format="rgb24", interpolation=interpolation)
    # to_ndarray can be a strided view of a padded plane: make it compact
    return np.ascontiguousarray(rgb.to_ndarray(), dtype=np.uint8)


# ------------------------------------------------------------------ images


def read_image(path) -> np.ndarray:
    """An image file as [H, W, 3] uint8 RGB (EXIF orientation applied).
    Pillow decodes it; without Pillow (not a declared dependency), PyAV."""
    p = _check_file(path, "image")
    try:
        from PIL import Image, ImageOps
    except ImportError:
        return _read_image_av(p)
    try:
        with Image.open(p) as im:
            im = ImageOps.exif_transpose(im)
            return np.array(im.convert("RGB"), dtype=np.uint8)
    except Exception as exc:  # Pillow raises many types for bad files
        raise VideoError(f"{p} is not a decodable image ({_reason(exc)})") from exc


def _read_image_av(p: str) -> np.ndarray:
    av = _av()
    try:
        with av.open(p, mode="r") as container:
            stream = container.streams.video[0]
            frame = next(iter(container.decode(stream)))
            return np.ascontiguousarray(frame.to_ndarray(format="rgb24"))
    except (av.error.FFmpegError, OSError, IndexError, StopIteration) as exc:
        raise VideoError(f"{p} is not a decodable image ({_reason(exc)})") from exc


def sample_clip_path() -> Path:
    """The clip shipped in the package (data/clip.mp4; see data/README.md)."""
    from importlib import resources

    res = resources.files("htsparse_llama").joinpath("data").joinpath("clip.mp4")
    path = Path(str(res))
    if not path.is_file():
        raise VideoError(f"the packaged sample clip is missing ({path}); reinstall htsparse-llama")
    return path
