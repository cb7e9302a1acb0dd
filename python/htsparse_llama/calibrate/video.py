"""Calibration on video (calibrate --mmproj): needle-in-a-video prompts.

Each prompt is a video's sampled frames with one frame pair replaced by a
"needle" picture (a five-digit code in large print), encoded by the mmproj
through libmtmd exactly as chat --video does, then the question "What code is
shown in the video?". The needle is that pair's segment of the visual span;
recall at a layer is whether the runtime's selection there keeps all of it.
Qwen-VL models (frame pairs) only, as for chat --video.
"""

from __future__ import annotations

from typing import Any, Callable, List, Optional, Sequence

import numpy as np

from .calibrate import Calibration, choose, recall_and_scores

QUESTION = "What code is shown in the video? Answer with the number only."


def needle_image(width: int, height: int, code: int) -> np.ndarray:
    """White (H, W, 3) uint8 picture with `code` in black, as large as fits."""
    from PIL import Image, ImageDraw, ImageFont

    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    text = str(code)
    font = ImageFont.load_default(size=max(8, int(min(height * 0.6, width / (0.7 * len(text))))))
    box = draw.textbbox((0, 0), text, font=font)
    x, y = (width - (box[2] - box[0])) // 2 - box[0], (height - (box[3] - box[1])) // 2 - box[1]
    draw.text((x, y), text, fill="black", font=font)
    return np.asarray(img, dtype=np.uint8)


def _frames_with_needle(path: str, vision, rng, max_visual_tokens: int, max_frames: int):
    from htsparse_llama import video_frames as vf

    info = vf.probe(path)
    times, plan = vf.plan_video(info, max_frames=max_frames, max_visual_tokens=max_visual_tokens,
                                grid=vf.QWEN2_5_VL)
    frames = [f.rgb for f in vf.iter_frames(path, times, size=(plan.width, plan.height))]
    per_unit = vision.frames_per_unit
    n_units = (len(frames) + per_unit - 1) // per_unit
    unit = int(rng.integers(1, max(2, n_units - 1))) if n_units > 2 else 0
    code = int(rng.integers(10000, 99999))
    needle = needle_image(plan.width, plan.height, code)
    for i in range(unit * per_unit, min(len(frames), (unit + 1) * per_unit)):
        frames[i] = needle
    return times, frames, unit


def _measure_video_prompt(model, vision, times, frames, unit: int, keep_ratio: float, q_window: int) -> tuple:
    from htsparse_llama.vision import ImageChunk, TextChunk
    from htsparse_llama.video_chat import encode_video

    chunks = encode_video(vision, frames, times)  # as chat --video lays the video out
    images = [i for i, c in enumerate(chunks) if isinstance(c, ImageChunk)]
    before, after = model.chat_turn("user", add_assistant=True)
    prefix = model.tokenize(before) + [t for c in chunks[:images[0]] for t in c.tokens]
    suffix = [t for c in chunks[images[-1] + 1:] for t in c.tokens] + model.tokenize(QUESTION + after)
    s = model.session(n_ctx=len(prefix) + sum(c.n_tokens for c in chunks if isinstance(c, ImageChunk))
                      + sum(len(c.tokens) for c in chunks if isinstance(c, TextChunk)) + len(suffix) + 64)
    native = s._native
    s.add_tokens(prefix)
    rows, positions, segments = vision.span(chunks[images[0]:images[-1] + 1], s.next_pos)
    begin = s.n_past
    s.add_embeddings(rows, positions=positions, placeholder=vision.image_token)
    native._set_query_capture(min(len(suffix), q_window))
    native.eval(suffix, False)
    native._set_query_capture(0)
    ends = segments[1:] + [len(rows)]
    needle = set(range(segments[unit], ends[unit]))
    spans = [(begin, begin + len(rows), segments)]
    return recall_and_scores(native, spans, needle, keep_ratio, q_window, model.n_layer), s.n_past


def measure_video(model, vision, videos: Sequence[str], *, n_samples: int = 4, keep_ratio: float = 0.1,
                  min_recall: float = 0.95, q_window: int = 64, max_visual_tokens: int = 2048,
                  max_frames: int = 16, seed: int = 0,
                  progress: Callable[[int, int], Any] = lambda i, n: None) -> Calibration:
    """Calibrates a VLM (Model + its Vision) on needle-frame prompts made from `videos`."""
    if not (vision.uses_mrope and vision.frames_per_unit == 2):
        raise ValueError("video calibration needs a Qwen2-VL / Qwen2.5-VL mmproj (frame pairs); "
                         "calibrate this model on text (without --mmproj)")
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    if not 0.0 < keep_ratio <= 1.0:
        raise ValueError(f"keep_ratio must be in (0, 1], got {keep_ratio}")
    if not videos:
        raise ValueError("video calibration needs at least one video")
    rng = np.random.default_rng(seed)
    results: List[tuple] = []
    n_tokens: Optional[int] = None
    for i in range(n_samples):
        times, frames, unit = _frames_with_needle(str(videos[i % len(videos)]), vision, rng, max_visual_tokens,
                                                  max_frames)
        result, n_tokens = _measure_video_prompt(model, vision, times, frames, unit, keep_ratio, q_window)
        results.append(result)
        progress(i + 1, n_samples)
    return choose(model, results, keep_ratio=keep_ratio, min_recall=min_recall, data="video:needle-frame",
                  n_tokens=int(n_tokens or 0))
