"""How many frames, at what size: the frame times and the frame size that fit
a visual-token budget for a model family's vision tower.

    >>> from htsparse_llama.video.frames import probe
    >>> from htsparse_llama.video.plan import plan_video
    >>> times, plan = plan_video(probe("clip.mp4"), max_visual_tokens=4096)   # Qwen-VL grid
    >>> print(plan.describe())
    21 frames at 728x364 (338 tokens per frame pair, 11 pairs) = 3718 visual tokens (budget 4096)

Rules, and why:

- Sampling (`sample_times`): frame k is taken at start + k/fps for every such
  time in [start, end); when that is more than `max_frames`, exactly
  `max_frames` times start + k*(end-start)/max_frames are taken instead. The
  default rate is the family's (`FAMILY_FPS`): Qwen2-VL / Qwen2.5-VL were
  trained at 2 fps (qwen-vl-utils' FPS), so one merged frame pair covers one
  second; SmolVLM2 samples at 1 fps. For long videos the budget, not the
  rate, decides how many frames are kept.
- Budget (`plan_budget`): all requested frames are kept and the resolution is
  lowered until they fit (shorter side down to `min_side`); only then are
  frames dropped (spread evenly again). Qwen-VL sizes are multiples of 28 px
  inside libmtmd's 8..4096 tokens per image, so libmtmd's dynamic resize
  (`mtmd_image_preprocessor_dyn_size`, the smart-resize of transformers)
  leaves them unchanged: the planned token count is the one libmtmd produces.
  A Qwen-VL frame pair costs (W/28)*(H/28) tokens (temporal merge of 2); an
  odd last frame is encoded alone, which equals Qwen's processor repeating it.
- SmolVLM2 frames cost one tile whatever their size; they are decoded at
  transformers' first resize (`decode_size`) and squared by the runtime.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Optional, Tuple

from .._native_loader import native
from ..errors import VideoError
from .frames import VideoInfo, check_int, check_number

# The sampling rate each video family was trained with (Vision.video_family);
# Qwen3-VL's is its transformers video processor's default fps.
# Gemma 3 has no video training; 1 fps, as for SmolVLM2: a frame costs 256 tokens.
FAMILY_FPS = {"qwen": 2.0, "qwen3vl": 2.0, "smolvlm": 1.0, "gemma3": 1.0}
DEFAULT_FPS = FAMILY_FPS["qwen"]
MAX_VIDEO_SIZE = 4096  # transformers' cap on SmolVLM's video_size


def sample_times(
    info: VideoInfo,
    fps: Optional[float] = None,
    max_frames: Optional[int] = None,
    start: Optional[float] = None,
    end: Optional[float] = None,
) -> list:
    """Times (s, from the video start) of the frames to take.

    Every 1/fps from `start` while < `end` (default: the whole video, `end`
    past the duration is clamped to it); if that is more than `max_frames`,
    `max_frames` times spread evenly over [start, end) instead."""
    fps = DEFAULT_FPS if fps is None else check_number("fps", fps)
    if fps <= 0:
        raise VideoError(f"fps must be > 0 frames per second, got {fps:g}")
    if max_frames is not None:
        max_frames = check_int("max_frames", max_frames)
    duration = info.duration_s
    s = 0.0 if start is None else check_number("start", start)
    if s < 0:
        raise VideoError(f"start must be >= 0 s, got {s:g} s")
    if s >= duration:
        raise VideoError(f"start {s:g} s is at or beyond the end of the video ({duration:.3f} s long)")
    e = duration if end is None else check_number("end", end)
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
    family: str = "qwen"  # the video family (Vision.video_family) whose tower this is
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


def qwen3vl_grid(patch_size: int) -> VisionGrid:
    """Qwen3-VL: a merged token is 2x2 patches of the mmproj's
    clip.vision.patch_size (16 px on released checkpoints: 32-px units, not
    Qwen2's 28), frame pairs, libmtmd's same 8..4096 tokens per image."""
    return replace(QWEN2_VL, name="qwen3vl", family="qwen3vl", patch=2 * patch_size)


# SmolVLM2-256M/500M: 512 px tiles, 16 px patches, pixel shuffle 4 -> 64 tokens.
SMOLVLM2_VIDEO = VisionGrid(
    "smolvlm2",
    family="smolvlm",
    kind="tiles",
    patch=16,
    temporal=1,
    min_tokens=0,
    max_tokens=0,
    tile=512,
    tokens_per_tile=64,
    longest_edge=0,
)


def smolvlm_mtmd_grid(image_size: int, patch_size: int, scale_factor: int, preproc_image_size: int) -> VisionGrid:
    """The grid libmtmd uses for an Idefics3/SmolVLM mmproj, from its GGUF keys
    clip.vision.image_size, clip.vision.patch_size,
    clip.vision.projector.scale_factor and clip.vision.preproc_image_size."""
    per_tile = (image_size // patch_size) ** 2 // (scale_factor**2)
    return VisionGrid(
        "smolvlm2",
        family="smolvlm",
        kind="tiles",
        patch=patch_size,
        temporal=1,
        min_tokens=0,
        max_tokens=0,
        tile=image_size,
        tokens_per_tile=per_tile,
        longest_edge=preproc_image_size,
    )


def gemma3_grid(image_size: int, patch_size: int, scale_factor: int) -> VisionGrid:
    """Gemma 3: one image per frame, whatever its size (libmtmd stretches it
    to image_size x image_size), the patch grid pooled by scale_factor (256
    tokens on released checkpoints). A one-tile grid like SmolVLM2's video."""
    return replace(smolvlm_mtmd_grid(image_size, patch_size, scale_factor, 0), name="gemma3", family="gemma3")


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
        cut = f"; {self.n_requested} frames requested" if self.frames_reduced else ""
        return (
            f"{self.n_frames} frames at {self.width}x{self.height} "
            f"({self.tokens_per_unit} tokens per {unit}{units}) = "
            f"{self.total_tokens} visual tokens ({budget}{cut})"
        )


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def _plan_patches(info, n, budget, grid, min_side, max_side):
    f = grid.patch
    short, long = sorted((info.width, info.height))
    landscape = info.width >= info.height

    def size(k):  # shorter side k patches, longer side keeps the aspect
        return k * f, max(1, _round_half_up(k * long / short)) * f

    def tokens(k):
        short_px, long_px = size(k)
        return (short_px // f) * (long_px // f)

    def fits_caps(k):
        return size(k)[1] <= max_side and (grid.max_tokens <= 0 or tokens(k) <= grid.max_tokens)

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
            "tokens per frame (aspect ratio too extreme); raise max_side"
        )
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
            short_px, long_px = size(k_lo)
            w, h = (long_px, short_px) if landscape else (short_px, long_px)
            what = "one frame pair" if grid.temporal > 1 else "one frame"
            raise VideoError(
                f"max_visual_tokens={budget} cannot hold {what} even at the "
                f"smallest size {w}x{h} ({t} tokens); raise it to at least "
                f"{t} or lower min_side"
            )
        n_out = min(n, fit * grid.temporal)
    short_px, long_px = size(k)
    w, h = (long_px, short_px) if landscape else (short_px, long_px)
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
                f"costs {t} tokens for this model; raise it to at least {t}"
            )
        n_out = min(n, fit)
    return n_out, w, h, t


def plan_budget(
    info: VideoInfo,
    n_frames: int,
    max_visual_tokens: Optional[int] = None,
    grid: VisionGrid = QWEN2_VL,
    min_side: int = 224,
    max_side: int = 896,
) -> FramePlan:
    """Choose how many of `n_frames` to keep and at what size so that the
    visual tokens fit `max_visual_tokens` (None: no budget, full size within
    `max_side`). Resolution goes down first (shorter side not below
    `min_side`, ~Qwen's 128-token video floor), then frames are dropped.
    Sizes keep the aspect ratio (to half a patch) and never exceed the
    source's own (28-rounded) size or `max_side` on the longer side."""
    n = check_int("n_frames", n_frames)
    budget = None
    if max_visual_tokens is not None:
        budget = check_int("max_visual_tokens", max_visual_tokens)
    min_side = check_int("min_side", min_side)
    max_side = check_int("max_side", max_side)
    if min_side > max_side:
        raise VideoError(f"min_side ({min_side} px) must not exceed max_side ({max_side} px)")
    if grid.kind == "patches":
        n_out, w, h, t = _plan_patches(info, n, budget, grid, min_side, max_side)
    elif grid.kind == "tiles":
        n_out, w, h, t = _plan_tiles(info, n, budget, grid, max_side)
    else:
        raise VideoError(f"unknown vision grid kind {grid.kind!r}")
    units = -(-n_out // grid.temporal)
    return FramePlan(
        n_frames=n_out,
        width=w,
        height=h,
        tokens_per_unit=t,
        frames_per_unit=grid.temporal,
        n_units=units,
        total_tokens=units * t,
        budget=budget,
        n_requested=n,
        grid=grid,
    )


def plan_video(
    info: VideoInfo,
    *,
    fps: Optional[float] = None,
    max_frames: Optional[int] = None,
    start: Optional[float] = None,
    end: Optional[float] = None,
    max_visual_tokens: Optional[int] = None,
    grid: VisionGrid = QWEN2_VL,
    min_side: int = 224,
    max_side: int = 896,
) -> Tuple[list, FramePlan]:
    """`sample_times` then `plan_budget`; when the budget drops frames, the
    kept ones are re-spread evenly over [start, end). fps defaults to the
    grid family's rate."""
    if fps is None:
        fps = FAMILY_FPS[grid.family]
    times = sample_times(info, fps, max_frames, start, end)
    plan = plan_budget(info, len(times), max_visual_tokens, grid, min_side, max_side)
    if plan.n_frames < len(times):
        times = sample_times(info, fps, plan.n_frames, start, end)
    return times, plan


def decode_size(
    width: int, height: int, grid: VisionGrid = SMOLVLM2_VIDEO, video_size: Optional[int] = None
) -> Tuple[int, int]:
    """(width, height) of transformers' first resize of a SmolVLM2 video
    frame: longest side video_size (default: the tile), the other scaled and
    made even (video_processing_smolvlm.get_resize_output_image_size). Frames
    decoded at this size are squared to the tile by the runtime."""
    w, h = longest_edge_size(width, height, min(MAX_VIDEO_SIZE, int(video_size or grid.tile)))
    return max(w, 1), max(h, 1)
