"""Qwen2-VL / Qwen2.5-VL video, laid out as the models were trained on it
by the runtime (runtime/src/video_layout.h, shared with the C API)
(Qwen's reference code, transformers, vLLM): one <|vision_start|> ...
<|vision_end|> block holding every frame pair's visual tokens, no text
between the pairs, and time carried by the M-RoPE temporal ids.

Positions of the block starting at p0, for frame pair g (a token grid of
nx x ny, token i at row i // nx, column i % nx):

    t = p0 + floor(g * step)     h = p0 + row     w = p0 + column

step is 1 on Qwen2-VL. On Qwen2.5-VL it is tokens_per_second (2 in the
released checkpoints; Vision.tokens_per_second) x the seconds a pair spans
(2 frames x the sampling interval), so t counts half seconds of video time:
at 1 frame/s, pairs are 4 apart. Text after the
block resumes at p0 + (the block's largest position) + 1.

Why not llama.cpp's layout: libmtmd's video path (mergeable bitmaps) makes
each frame pair a separate image chunk with its own <|vision_start|> /
<|vision_end|> and a constant t, so the model sees N still images and no
time; our layout is what the model expects, and the embeddings are the same
(a pair is encoded alone either way: Qwen-VL's vision tower attends within
one temporal patch). transformers 5.23 resumes text at p0 + max(nx, ny)
instead of after the largest position (a 5.x refactor); both agree while the
last pair's t offset is below the grid size, and we keep the trained rule.
"""

from __future__ import annotations

from typing import Callable, Iterable, List, Optional, Sequence

import numpy as np

from ._native_loader import native
from .errors import InvalidArgumentError
from .vision import Chunk, ImageChunk, Vision, chunks_from_native, encode_video_frames

FRAMES_PER_PAIR = 2
# Frames decoded and encoded together: bounds the RGB frames held in memory
# while a long video streams through the vision tower.
FRAMES_PER_GROUP = 16


def temporal_step(projector: str, frame_interval_s: float, tokens_per_second: int = 2) -> float:
    """M-RoPE t distance between consecutive frame pairs."""
    return float(native.qwen_temporal_step(projector, float(frame_interval_s), int(tokens_per_second)))


def frame_interval(times: Sequence[float]) -> float:
    """Seconds between sampled frames (their mean spacing; 0 for one frame)."""
    return float(native.frame_interval([float(t) for t in times]))


def place_pairs(pairs: Sequence[ImageChunk], step: float) -> List[ImageChunk]:
    """The pairs' positions within one block (relative to its start): pair g
    shifted by floor(g * step) in t, every pair starting at the block's start
    (n_pos 0) but the last, after which text resumes past the largest position."""
    n_embd = pairs[0].embd.shape[1] if pairs else 1
    return chunks_from_native(native.qwen_place_pairs(list(pairs), float(step), n_embd))


def encode_pairs(vision: Vision, frames: Iterable[np.ndarray], n_frames: int,
                 progress: Callable[[int, int], None] = lambda done, total: None,
                 frames_per_group: int = FRAMES_PER_GROUP) -> List[ImageChunk]:
    """Frame pairs through the vision tower, FRAMES_PER_GROUP frames at a time
    as they are decoded (a long video is never in memory as pixels). The
    text libmtmd puts around each pair is dropped; first_image counts frames
    over the whole video."""
    encoder = encode_video_frames(vision, frames, n_frames, progress, _even(frames_per_group))
    return chunks_from_native(encoder.images(vision.model.info["n_embd"]))


def encode_video(vision: Vision, frames: Iterable[np.ndarray], times: Sequence[float],
                 progress: Optional[Callable[[int, int], None]] = None) -> List[Chunk]:
    """A Qwen-VL video block (chunks for Vision.add_chunks) from the frames
    sampled at `times` (s): <|vision_start|>, the placed pairs, <|vision_end|>."""
    encoder = encode_video_frames(vision, frames, len(times), progress, FRAMES_PER_GROUP)
    return chunks_from_native(encoder.finish([float(t) for t in times], -1.0, vision.model.info["n_embd"]))


def _even(frames_per_group: int) -> int:
    if frames_per_group % FRAMES_PER_PAIR:
        raise InvalidArgumentError(f"frames_per_group must be even, got {frames_per_group}")
    return frames_per_group
