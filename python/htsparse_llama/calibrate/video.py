"""Calibration on video (calibrate --mmproj): needle-in-a-video prompts
(tasks/needle.py) encoded by the mmproj through libmtmd and laid out exactly
as chat --video does (video/turn.py), the question after them. The needle is
its frame pair's segment of the visual span; recall at a layer is whether the
runtime's selection there keeps all of it. Models whose tower merges frame
pairs: Qwen2-VL and Qwen2.5-VL (the pairs one block), Qwen3-VL (each pair an
image after its timestamp, the segment that timestamp's text and the pair)."""

from __future__ import annotations

from typing import Any, Callable, List, Optional, Sequence

import numpy as np

from ..model import Model
from ..sparse_config import SparseConfig
from ..tasks.needle import QUESTION, frames_with_needle
from ..video.turn import encode_video, vision_grid
from ..vision import Vision
from .result import Calibration, check_settings, choose, recall_and_scores

# The video families (Vision.video_family) whose frame pairs are the needle's unit.
PAIR_FAMILIES = ("qwen", "qwen3vl")


def measure_prompt(model: Model, vision: Vision, times, frames, unit: int, keep_ratio: float, q_window: int):
    """One needle video: (needle kept at each select layer, KV-head scores), and the prompt's tokens."""
    chunks = encode_video(vision, frames, times)
    probe = SparseConfig(keep_ratio=keep_ratio, select_layer=0, prune_layer=model.n_layer, q_window=q_window)
    s = model.session(n_ctx=chunks.n_tokens + len(model.tokenize(QUESTION)) + 128, sparse=probe)
    vision.add_media_turn(s, chunks, QUESTION)
    (begin, end), starts = s.sparse.spans[0], s.sparse.seg_starts[0]
    ends = starts[1:] + [end - begin]
    result = recall_and_scores(s, set(range(starts[unit], ends[unit])))
    return result, s.n_past


def measure_video(
    model: Model,
    vision: Vision,
    videos: Sequence[str],
    *,
    n_samples: int = 4,
    keep_ratio: float = 0.1,
    min_recall: float = 0.95,
    q_window: int = 64,
    max_visual_tokens: int = 2048,
    max_frames: int = 16,
    seed: int = 0,
    progress: Callable[[int, int], Any] = lambda i, n: None,
) -> Calibration:
    """Calibrates a VLM (Model + its Vision) on needle-frame prompts made from `videos`."""
    if vision.video_family not in PAIR_FAMILIES:
        raise ValueError(
            f"video calibration needs a Qwen2-VL, Qwen2.5-VL or Qwen3-VL mmproj (frame pairs); this one is "
            f"{vision.projector} (video family {vision.video_family}); calibrate this model on text (without --mmproj)"
        )
    check_settings(n_samples, keep_ratio)
    if not videos:
        raise ValueError("video calibration needs at least one video")
    rng = np.random.default_rng(seed)
    results: List[tuple] = []
    n_tokens: Optional[int] = None
    for i in range(n_samples):
        times, frames, unit, _ = frames_with_needle(
            str(videos[i % len(videos)]), vision_grid(vision), rng, max_visual_tokens, max_frames
        )
        result, n_tokens = measure_prompt(model, vision, times, frames, unit, keep_ratio, q_window)
        results.append(result)
        progress(i + 1, n_samples)
    return choose(
        model.n_layer,
        results,
        keep_ratio=keep_ratio,
        min_recall=min_recall,
        data="video:needle-frame",
        n_tokens=int(n_tokens or 0),
    )
