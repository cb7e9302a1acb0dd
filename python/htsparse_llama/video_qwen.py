"""Qwen2-VL / Qwen2.5-VL video, laid out as the models were trained on it
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

from dataclasses import replace
from typing import Callable, Iterable, List, Optional, Sequence

import numpy as np

from . import video_frames as vf
from .errors import InvalidArgumentError
from .vision import Chunk, ImageChunk, TextChunk, Vision

FRAMES_PER_PAIR = 2
# Frames decoded and encoded together: bounds the RGB frames held in memory
# while a long video streams through the vision tower.
FRAMES_PER_GROUP = 16


def temporal_step(projector: str, frame_interval_s: float, tokens_per_second: int = 2) -> float:
    """M-RoPE t distance between consecutive frame pairs."""
    if projector == "qwen2.5vl_merger":
        return tokens_per_second * FRAMES_PER_PAIR * float(frame_interval_s)
    if projector == "qwen2vl_merger":
        return 1.0
    raise InvalidArgumentError(f"no Qwen-VL video layout for an mmproj of projector type '{projector}'")


def frame_interval(times: Sequence[float]) -> float:
    """Seconds between sampled frames (their mean spacing; 0 for one frame)."""
    return float((times[-1] - times[0]) / (len(times) - 1)) if len(times) > 1 else 0.0


def place_pairs(pairs: Sequence[ImageChunk], step: float) -> List[ImageChunk]:
    """The pairs' positions within one block (relative to its start): pair g
    shifted by floor(g * step) in t, every pair starting at the block's start
    (n_pos 0) but the last, after which text resumes past the largest position."""
    if not pairs:
        raise InvalidArgumentError("a video needs at least one frame")
    out, top = [], 0
    for g, pair in enumerate(pairs):
        if pair.positions.shape[0] != 3:
            raise InvalidArgumentError("Qwen-VL video needs M-RoPE (t/h/w) positions")
        positions = pair.positions.copy()
        positions[0] += np.int32(int(np.floor(g * step)))
        top = max(top, int(positions.max()))
        out.append(replace(pair, positions=positions, n_pos=0))
    out[-1] = replace(out[-1], n_pos=top + 1)
    return out


def video_block(vision: Vision, pairs: Sequence[ImageChunk], step: float) -> List[Chunk]:
    """<|vision_start|>, the placed pairs, <|vision_end|>."""
    start, end = (_special_token(vision, name) for name in ("<|vision_start|>", "<|vision_end|>"))
    return [TextChunk([start])] + place_pairs(pairs, step) + [TextChunk([end])]


def encode_pairs(vision: Vision, frames: Iterable[np.ndarray], n_frames: int,
                 progress: Callable[[int, int], None] = lambda done, total: None,
                 frames_per_group: int = FRAMES_PER_GROUP) -> List[ImageChunk]:
    """Frame pairs through the vision tower, FRAMES_PER_GROUP frames at a time
    as they are decoded (a long video is never in memory as pixels). The
    text libmtmd puts around each pair is dropped; first_image counts frames
    over the whole video."""
    if frames_per_group % FRAMES_PER_PAIR:
        raise InvalidArgumentError(f"frames_per_group must be even, got {frames_per_group}")
    pairs: List[ImageChunk] = []
    done = 0
    for group in vf.in_groups(frames, frames_per_group):
        for c in vision.encode_frames(group):
            if isinstance(c, ImageChunk):
                pairs.append(replace(c, first_image=c.first_image + done))
        done += len(group)
        progress(done, n_frames)
    if done != n_frames:
        raise InvalidArgumentError(f"expected {n_frames} frames, the video gave {done}")
    return pairs


def encode_video(vision: Vision, frames: Iterable[np.ndarray], times: Sequence[float],
                 progress: Optional[Callable[[int, int], None]] = None) -> List[Chunk]:
    """A Qwen-VL video block (chunks for Vision.add_chunks) from the frames
    sampled at `times` (s)."""
    step = temporal_step(vision.projector, frame_interval(times), vision.tokens_per_second)
    pairs = encode_pairs(vision, frames, len(times), progress or (lambda done, total: None))
    return video_block(vision, pairs, step)


def _special_token(vision: Vision, text: str) -> int:
    ids = vision.model.tokenize(text, special=True)
    if len(ids) != 1:
        raise InvalidArgumentError(f"the model's vocabulary has no single token for {text}: not a Qwen-VL model")
    return ids[0]
