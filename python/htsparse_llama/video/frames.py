"""Video frame ingestion: probe a file, choose the times and the frame size
that fit a visual-token budget, and stream RGB frames to the vision encoder.

    >>> from htsparse_llama.video_frames import probe, plan_video, iter_frames
    >>> info = probe("clip.mp4")
    >>> times, plan = plan_video(info, max_visual_tokens=4096)   # Qwen-VL grid
    >>> print(plan.describe())
    21 frames at 728x364 (338 tokens per frame pair, 11 pairs) = 3718 visual tokens (budget 4096)
    >>> for f in iter_frames("clip.mp4", times, size=(plan.width, plan.height)):
    ...     encode(f.rgb)   # [H, W, 3] uint8, f.time_s = time of the decoded frame

Rules, and why:

- Sampling (`sample_times`): frame k is taken at start + k/fps for every such
  time in [start, end); when that is more than `max_frames`, exactly
  `max_frames` times start + k*(end-start)/max_frames are taken instead. The
  default rate is 2 fps (`DEFAULT_FPS`): Qwen2-VL / Qwen2.5-VL were trained
  at 2 fps (qwen-vl-utils' FPS), so one merged frame pair covers one second.
  SmolVLM2 samples at 1 fps (`default_fps("smolvlm")`). For long videos the
  budget, not the rate, decides how many frames are kept.
- Which frame (`iter_frames`): for a requested time t the frame shown at t,
  i.e. the last decoded frame whose timestamp is <= t (the first frame when t
  precedes it). Times are relative to the video stream's start.
- Budget (`plan_budget`): all requested frames are kept and the resolution is
  lowered until they fit (shorter side down to `min_side`); only then are
  frames dropped (spread evenly again). Qwen-VL sizes are multiples of 28 px
  inside libmtmd's 8..4096 tokens per image, so libmtmd's dynamic resize
  (`mtmd_image_preprocessor_dyn_size`, the smart-resize of transformers)
  leaves them unchanged: the planned token count is the one libmtmd produces.
  A Qwen-VL frame pair costs (W/28)*(H/28) tokens (temporal merge of 2); an
  odd last frame is encoded alone, which equals Qwen's processor repeating it.
- Timestamps (`frame_header`, `timestamp_text`): SmolVLM2 gets "\nFrame from
  00:12:" before each frame, as its processor writes. Qwen2-VL / Qwen2.5-VL
  get no text: their video is one block whose time lives in the M-RoPE
  temporal ids (video_qwen); the "<12.5 seconds>" format is Qwen3-VL's.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, replace
from fractions import Fraction
from pathlib import Path
from typing import Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from .errors import VideoError

__all__ = [
    "DEFAULT_FPS",
    "VideoInfo",
    "VisionGrid",
    "QWEN2_VL",
    "QWEN2_5_VL",
    "SMOLVLM2_VIDEO",
    "smolvlm_mtmd_grid",
    "FramePlan",
    "Frame",
    "DecodeStats",
    "probe",
    "sample_times",
    "plan_budget",
    "plan_video",
    "iter_frames",
    "read_image",
    "frame_units",
    "unit_times",
    "mtmd_dyn_size",
    "default_fps",
    "in_groups",
    "longest_edge_size",
    "model_family",
    "timestamp_text",
    "frame_header",
    "sample_clip_path",
]

DEFAULT_FPS = 2.0
_FAMILY_FPS = {"qwen": 2.0, "smolvlm": 1.0, "mtmd": 2.0, "none": 2.0}

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
            f"{p} is not a readable video ({_reason(exc)}): it is corrupt, "
            "truncated or not a video file"
        ) from exc
    try:
        fmt = container.format.name
        videos = [s for s in container.streams.video
                  if s.codec_context.name not in _NOT_VIDEO_CODECS]
        if fmt in _NOT_VIDEO_FORMATS or not videos:
            only = " (it holds only audio)" if container.streams.audio else ""
            raise VideoError(f"{p} has no video stream{only}")
        if fmt in _IMAGE_FORMATS or fmt.endswith("_pipe"):
            raise VideoError(
                f"{p} is a still image ({fmt}), not a video; pass it as an image")
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
                counted += (float(pkt.duration * tb) if pkt.duration
                            else 1.0 / (rate or 25.0))
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
            raise VideoError(
                f"{p} cannot be decoded ({_reason(exc)}): the video is corrupt"
            ) from exc
        if first is None:
            raise VideoError(
                f"{p} has a video stream but no decodable frame (zero-length "
                "or corrupt video)")
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
            path=p, fps=fps, n_frames=n_frames, width=int(width),
            height=int(height), codec=stream.codec_context.name,
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


# ---------------------------------------------------------------- sampling


def _number(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(
            value, (int, float, Fraction, np.integer, np.floating)):
        raise VideoError(f"{name} must be a number, got {value!r}")
    v = float(value)
    if not math.isfinite(v):
        raise VideoError(f"{name} must be a finite number, got {value!r}")
    return v


def _positive_int(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise VideoError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise VideoError(f"{name} must be an integer >= {minimum}, got {value}")
    return int(value)


def default_fps(family: str = "qwen2vl") -> float:
    """The sampling rate a model family was trained with (see module doc)."""
    return _FAMILY_FPS[model_family(family)]


def sample_times(info: VideoInfo, fps: Optional[float] = None,
                 max_frames: Optional[int] = None,
                 start: Optional[float] = None,
                 end: Optional[float] = None) -> list:
    """Times (s, from the video start) of the frames to take.

    Every 1/fps from `start` while < `end` (default: the whole video, `end`
    past the duration is clamped to it); if that is more than `max_frames`,
    `max_frames` times spread evenly over [start, end) instead."""
    fps = DEFAULT_FPS if fps is None else _number("fps", fps)
    if fps <= 0:
        raise VideoError(f"fps must be > 0 frames per second, got {fps:g}")
    if max_frames is not None:
        max_frames = _positive_int("max_frames", max_frames)
    duration = info.duration_s
    s = 0.0 if start is None else _number("start", start)
    if s < 0:
        raise VideoError(f"start must be >= 0 s, got {s:g} s")
    if s >= duration:
        raise VideoError(
            f"start {s:g} s is at or beyond the end of the video "
            f"({duration:.3f} s long)")
    e = duration if end is None else _number("end", end)
    if e <= s:
        raise VideoError(f"end ({e:g} s) must be after start ({s:g} s)")
    e = min(e, duration)
    span = e - s
    n = max(1, math.ceil(span * fps - 1e-9))
    step = 1.0 / fps
    if max_frames is not None and n > max_frames:
        n, step = max_frames, span / max_frames
    return [round(s + k * step, 6) for k in range(n)]


# ------------------------------------------------------------------ budget


def longest_edge_size(width: int, height: int, side: int) -> Tuple[int, int]:
    """(width, height) scaled so the longest side is `side`, the other made
    even: the idefics3 resize of libmtmd and of transformers' SmolVLM
    processors (get_resize_output_image_size), integer for integer; the
    runtime's own (video_layout.h), which squares the frames the C API gets."""
    from ._native_loader import native

    return tuple(native.longest_edge_size(int(width), int(height), int(side)))


@dataclass(frozen=True)
class VisionGrid:
    """How a vision encoder turns a frame into tokens.

    kind "patches" (Qwen-VL): one token per `patch` x `patch` px (14 px ViT
    patches merged 2x2 = 28), sizes are multiples of `patch`, `temporal`
    consecutive frames share one set of tokens, and libmtmd keeps an image
    between `min_tokens` and `max_tokens` (clip.cpp: set_limit_image_tokens(8,
    4096) for qwen2vl/qwen2.5vl).

    kind "tiles" (SmolVLM2 / Idefics3): a frame costs whole tiles of
    `tokens_per_tile` whatever its resolution. With `longest_edge` > 0 this is
    libmtmd's idefics3 preprocessor: the frame is resized to that longest
    side, cut into `tile` px tiles, plus one overview tile. With 0, one tile
    per frame (transformers' SmolVLM2 video path).
    """

    name: str
    kind: str = "patches"
    patch: int = 28
    temporal: int = 2
    min_tokens: int = 8
    max_tokens: int = 4096
    tile: int = 0
    tokens_per_tile: int = 0
    longest_edge: int = 0

    @property
    def mergeable(self) -> bool:
        """Consecutive frames are merged in time (mark bitmaps mergeable)."""
        return self.temporal > 1

    def tokens(self, width: int, height: int) -> int:
        """Tokens of one unit (a frame pair for Qwen-VL) at width x height."""
        if self.kind == "patches":
            return (width // self.patch) * (height // self.patch)
        if self.longest_edge <= 0:
            return self.tokens_per_tile
        # mtmd_image_preprocessor_idefics3::preprocess, integer for integer
        rw, rh = longest_edge_size(width, height, self.longest_edge)
        gx, gy = -(-rw // self.tile), -(-rh // self.tile)
        return (gx * gy + 1) * self.tokens_per_tile


QWEN2_VL = VisionGrid("qwen2vl")
QWEN2_5_VL = replace(QWEN2_VL, name="qwen2.5vl")
# SmolVLM2-256M/500M: 512 px tiles, 16 px patches, pixel shuffle 4 -> 64 tokens.
SMOLVLM2_VIDEO = VisionGrid("smolvlm2", kind="tiles", patch=16, temporal=1,
                            min_tokens=0, max_tokens=0, tile=512,
                            tokens_per_tile=64, longest_edge=0)


def smolvlm_mtmd_grid(image_size: int, patch_size: int, scale_factor: int,
                      preproc_image_size: int) -> VisionGrid:
    """The grid libmtmd uses for an Idefics3/SmolVLM mmproj, from its GGUF keys
    clip.vision.image_size, clip.vision.patch_size,
    clip.vision.projector.scale_factor and clip.vision.preproc_image_size."""
    per_tile = (image_size // patch_size) ** 2 // (scale_factor ** 2)
    return VisionGrid("smolvlm2", kind="tiles", patch=patch_size, temporal=1,
                      min_tokens=0, max_tokens=0, tile=image_size,
                      tokens_per_tile=per_tile, longest_edge=preproc_image_size)


def mtmd_dyn_size(width: int, height: int, grid: VisionGrid = QWEN2_VL):
    """The size libmtmd resizes a width x height image to for a "patches"
    grid (clip's calc_size_preserved_ratio, i.e. transformers' smart_resize
    with libmtmd's min/max pixels). A planned Qwen-VL frame size is a fixed
    point of this, so libmtmd encodes exactly what was planned."""
    f = grid.patch
    min_px, max_px = grid.min_tokens * f * f, grid.max_tokens * f * f
    w_bar = max(f, int(round(width / f)) * f)
    h_bar = max(f, int(round(height / f)) * f)
    if max_px > 0 and w_bar * h_bar > max_px:
        beta = math.sqrt(height * width / max_px)
        h_bar = max(f, math.floor(height / beta / f) * f)
        w_bar = max(f, math.floor(width / beta / f) * f)
    elif min_px > 0 and w_bar * h_bar < min_px:
        beta = math.sqrt(min_px / (height * width))
        h_bar = math.ceil(height * beta / f) * f
        w_bar = math.ceil(width * beta / f) * f
    return w_bar, h_bar


@dataclass(frozen=True)
class FramePlan:
    """Frame count and size chosen for a visual-token budget."""

    n_frames: int
    width: int
    height: int
    tokens_per_unit: int  # per frame pair for Qwen-VL, per frame otherwise
    frames_per_unit: int  # grid.temporal
    n_units: int
    total_tokens: int
    budget: Optional[int]
    n_requested: int  # frames asked for before the budget
    grid: VisionGrid = field(repr=False, default=QWEN2_VL)

    @property
    def pairs_mergeable(self) -> bool:
        """Consecutive frames form one unit (Qwen-VL temporal merge): mark
        every frame's mtmd bitmap mergeable and put no text between the two
        frames of a pair."""
        return self.frames_per_unit > 1

    @property
    def odd_last_frame(self) -> bool:
        """The last unit has a single frame. libmtmd encodes a lone frame with
        both temporal kernels, the same as Qwen's processor repeating it."""
        return self.n_frames % self.frames_per_unit != 0

    @property
    def tokens_per_frame(self) -> float:
        return self.tokens_per_unit / self.frames_per_unit

    @property
    def frames_reduced(self) -> bool:
        return self.n_frames < self.n_requested

    def describe(self) -> str:
        unit = "frame pair" if self.pairs_mergeable else "frame"
        units = ""
        if self.pairs_mergeable:
            units = f", {self.n_units} pair{'s' if self.n_units != 1 else ''}"
        budget = "no budget" if self.budget is None else f"budget {self.budget}"
        cut = (f"; {self.n_requested} frames requested"
               if self.frames_reduced else "")
        return (f"{self.n_frames} frames at {self.width}x{self.height} "
                f"({self.tokens_per_unit} tokens per {unit}{units}) = "
                f"{self.total_tokens} visual tokens ({budget}{cut})")


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def _plan_patches(info, n, budget, grid, min_side, max_side):
    f = grid.patch
    short, long = sorted((info.width, info.height))
    landscape = info.width >= info.height

    def size(k):  # shorter side k patches, longer side keeps the aspect
        return k * f, max(1, _round_half_up(k * long / short)) * f

    def tokens(k):
        s, l = size(k)
        return (s // f) * (l // f)

    def fits_caps(k):
        return size(k)[1] <= max_side and (grid.max_tokens <= 0
                                           or tokens(k) <= grid.max_tokens)

    k_nat = max(1, _round_half_up(short / f))  # no upscaling past libmtmd's
    k_min_tok = 1
    while grid.min_tokens > 0 and tokens(k_min_tok) < grid.min_tokens:
        k_min_tok += 1
    k_hi = max(k_nat, k_min_tok)
    while k_hi >= 1 and not fits_caps(k_hi):
        k_hi -= 1
    if k_hi < k_min_tok:
        raise VideoError(
            f"a {info.width}x{info.height} video cannot be sized within "
            f"max_side={max_side} px and {grid.min_tokens}..{grid.max_tokens} "
            "tokens per frame (aspect ratio too extreme); raise max_side")
    k_lo = min(max(-(-min_side // f), k_min_tok), k_hi)
    units = -(-n // grid.temporal)
    k = k_hi
    if budget is not None:
        while k >= k_lo and units * tokens(k) > budget:
            k -= 1
    n_out = n
    if k < k_lo:  # even the smallest size is too big for all frames
        k, t = k_lo, tokens(k_lo)
        fit = budget // t
        if fit < 1:
            s, l = size(k_lo)
            w, h = (l, s) if landscape else (s, l)
            what = "one frame pair" if grid.temporal > 1 else "one frame"
            raise VideoError(
                f"max_visual_tokens={budget} cannot hold {what} even at the "
                f"smallest size {w}x{h} ({t} tokens); raise it to at least "
                f"{t} or lower min_side")
        n_out = min(n, fit * grid.temporal)
    s, l = size(k)
    w, h = (l, s) if landscape else (s, l)
    return n_out, w, h, tokens(k)


def _plan_tiles(info, n, budget, grid, max_side):
    long = max(info.width, info.height)
    target = min(long, grid.longest_edge or grid.tile, max_side)
    scale = target / long
    w = max(2, 2 * _round_half_up(info.width * scale / 2))
    h = max(2, 2 * _round_half_up(info.height * scale / 2))
    t = grid.tokens(w, h)
    n_out = n
    if budget is not None:
        fit = budget // t
        if fit < 1:
            raise VideoError(
                f"max_visual_tokens={budget} cannot hold one frame, which "
                f"costs {t} tokens for this model; raise it to at least {t}")
        n_out = min(n, fit)
    return n_out, w, h, t


def plan_budget(info: VideoInfo, n_frames: int,
                max_visual_tokens: Optional[int] = None,
                grid: VisionGrid = QWEN2_VL, min_side: int = 224,
                max_side: int = 896) -> FramePlan:
    """Choose how many of `n_frames` to keep and at what size so that the
    visual tokens fit `max_visual_tokens` (None: no budget, full size within
    `max_side`). Resolution goes down first (shorter side not below
    `min_side`, ~Qwen's 128-token video floor), then frames are dropped.
    Sizes keep the aspect ratio (to half a patch) and never exceed the
    source's own (28-rounded) size or `max_side` on the longer side."""
    n = _positive_int("n_frames", n_frames)
    budget = None
    if max_visual_tokens is not None:
        budget = _positive_int("max_visual_tokens", max_visual_tokens)
    min_side = _positive_int("min_side", min_side)
    max_side = _positive_int("max_side", max_side)
    if min_side > max_side:
        raise VideoError(
            f"min_side ({min_side} px) must not exceed max_side ({max_side} px)")
    if grid.kind == "patches":
        n_out, w, h, t = _plan_patches(info, n, budget, grid, min_side, max_side)
    elif grid.kind == "tiles":
        n_out, w, h, t = _plan_tiles(info, n, budget, grid, max_side)
    else:
        raise VideoError(f"unknown vision grid kind {grid.kind!r}")
    units = -(-n_out // grid.temporal)
    return FramePlan(n_frames=n_out, width=w, height=h, tokens_per_unit=t,
                     frames_per_unit=grid.temporal, n_units=units,
                     total_tokens=units * t, budget=budget, n_requested=n,
                     grid=grid)


def plan_video(info: VideoInfo, *, fps: Optional[float] = None,
               max_frames: Optional[int] = None, start: Optional[float] = None,
               end: Optional[float] = None,
               max_visual_tokens: Optional[int] = None,
               grid: VisionGrid = QWEN2_VL, min_side: int = 224,
               max_side: int = 896) -> Tuple[list, FramePlan]:
    """`sample_times` then `plan_budget`; when the budget drops frames, the
    kept ones are re-spread evenly over [start, end). fps defaults to the
    grid family's rate."""
    if fps is None:
        fps = default_fps(grid.name)
    times = sample_times(info, fps, max_frames, start, end)
    plan = plan_budget(info, len(times), max_visual_tokens, grid, min_side,
                       max_side)
    if plan.n_frames < len(times):
        times = sample_times(info, fps, plan.n_frames, start, end)
    return times, plan


def frame_units(n_frames: int, temporal: int = 2) -> list:
    """Frame indices encoded together: (0, 1), (2, 3)... for Qwen-VL; an odd
    last frame is (n-1, n-1), as Qwen's processor repeats it."""
    n = _positive_int("n_frames", n_frames)
    out = []
    for i in range(0, n, temporal):
        unit = tuple(range(i, min(i + temporal, n)))
        out.append(unit + (unit[-1],) * (temporal - len(unit)))
    return out


def unit_times(times: Sequence[float], temporal: int = 2) -> list:
    """One time per unit: the mean of its frames' times (Qwen3-VL's rule)."""
    if not times:
        return []
    return [float(np.mean([times[j] for j in u]))
            for u in frame_units(len(times), temporal)]


# ------------------------------------------------------------- timestamps


def model_family(name: str) -> str:
    """'qwen' (Qwen2-VL, Qwen2.5-VL, Qwen3-VL), 'smolvlm' (SmolVLM2,
    Idefics3), 'mtmd' (llama.cpp's own video helper) or 'none'."""
    key = "".join(ch for ch in str(name).lower() if ch.isalnum())
    if key.startswith("qwen"):
        return "qwen"
    if key.startswith(("smolvlm", "idefics")):
        return "smolvlm"
    if key in ("mtmd", "llamacpp"):
        return "mtmd"
    if key in ("none", "off", ""):
        return "none"
    raise VideoError(f"no timestamp format for model family {name!r}")


def timestamp_text(t: float, family: str = "qwen2vl") -> str:
    """A frame's time as the model family writes it.

    qwen: "<12.5 seconds>", Qwen3-VL's processor format (one per frame pair,
      at the pair's mean time). Qwen2/2.5-VL write no text: chat --video puts
      their time into the M-RoPE temporal ids (video_qwen).
    smolvlm: "00:12", minutes:seconds, seconds truncated (SmolVLM2 processor).
    mtmd: "[0m12.50s]", libmtmd's video helper.
    none: "".
    """
    t = _number("t", t)
    fam = model_family(family)
    if fam == "qwen":
        return f"<{t:.1f} seconds>"
    if fam == "smolvlm":
        return f"{int(t // 60):02d}:{int(t % 60):02d}"
    if fam == "mtmd":
        m = int(t // 60)
        return f"[{m}m{t - 60 * m:.2f}s]"
    return ""


def frame_header(t: float, family: str = "qwen2vl") -> str:
    """The text put right before a frame (SmolVLM2) or a frame pair (Qwen):
    SmolVLM2's "\\nFrame from 00:12:" or the bare timestamp otherwise."""
    if model_family(family) == "smolvlm":
        return f"\nFrame from {timestamp_text(t, family)}:"
    return timestamp_text(t, family)


def in_groups(frames: Iterable[np.ndarray], size: int) -> Iterator[List[np.ndarray]]:
    """Consecutive lists of `size` frames (the last may be shorter), taken
    from `frames` as they come: frames are encoded a group at a time while
    the video is still being decoded, never all held at once."""
    group: List[np.ndarray] = []
    for frame in frames:
        group.append(frame)
        if len(group) == size:
            yield group
            group = []
    if group:
        yield group


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
        v = _number(f"times[{i}]", t)
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
    return (_positive_int("width", w), _positive_int("height", h))


def iter_frames(path, times: Sequence[float],
                size: Optional[Tuple[int, int]] = None, *,
                seek_gap: float = 2.0, stats: Optional[DecodeStats] = None,
                interpolation: str = "BICUBIC") -> Iterator[Frame]:
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
                f"{self.path} cannot be decoded near {near:.2f} s "
                f"({_reason(exc)}): the file is truncated or corrupt") from exc
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
            offset = self.start_pts + int(
                Fraction(goal).limit_denominator(10**6) / self.tb)
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
            if (eof and self.duration is not None and t < self.duration
                    and t - chosen[1] > tol):
                raise VideoError(
                    f"{self.path} stops at {chosen[1]:.2f} s although it claims "
                    f"{self.duration:.2f} s: the file is truncated or corrupt")
            yield Frame(i, chosen[1], _to_rgb(chosen[0], size, interpolation), t)


def _to_rgb(frame, size, interpolation) -> np.ndarray:
    if size is None:
        rgb = frame.reformat(format="rgb24")
    else:
        rgb = frame.reformat(width=size[0], height=size[1], format="rgb24",
                             interpolation=interpolation)
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
        raise VideoError(
            f"{p} is not a decodable image ({_reason(exc)})") from exc


def _read_image_av(p: str) -> np.ndarray:
    av = _av()
    try:
        with av.open(p, mode="r") as container:
            stream = container.streams.video[0]
            frame = next(iter(container.decode(stream)))
            return np.ascontiguousarray(frame.to_ndarray(format="rgb24"))
    except (av.error.FFmpegError, OSError, IndexError, StopIteration) as exc:
        raise VideoError(
            f"{p} is not a decodable image ({_reason(exc)})") from exc


def sample_clip_path() -> Path:
    """The clip shipped in the package (data/clip.mp4; see data/README.md)."""
    from importlib import resources

    res = resources.files(__package__).joinpath("data").joinpath("clip.mp4")
    path = Path(str(res))
    if not path.is_file():
        raise VideoError(
            f"the packaged sample clip is missing ({path}); reinstall htsparse-llama")
    return path
