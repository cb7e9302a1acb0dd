"""Needle-in-a-video prompts: a video's sampled frames with one frame pair
(Qwen2-VL, Qwen2.5-VL, Qwen3-VL) replaced by a "needle" picture, a five-digit code in large print,
and the question "What code is shown in the video?". Calibration on video
(calibrate/video.py) measures whether the runtime's selection keeps the
needle's segment."""

from __future__ import annotations

from typing import List, Tuple

import numpy as np

from ..video import frames as vf
from ..video import plan as vp

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


def frames_with_needle(
    path: str, grid: vp.VisionGrid, rng, max_visual_tokens: int, max_frames: int
) -> Tuple[List[float], List[np.ndarray], int, int]:
    """(frame times, frames, the unit replaced by the needle, its code): the
    video's frames planned for the tower `grid` describes (video.turn.vision_grid),
    one unit of grid.temporal frames (not the first or last when there are
    more than two) the needle."""
    info = vf.probe(path)
    times, plan = vp.plan_video(info, max_frames=max_frames, max_visual_tokens=max_visual_tokens, grid=grid)
    frames_per_unit = grid.temporal
    frames = [f.rgb for f in vf.iter_frames(path, times, size=(plan.width, plan.height))]
    n_units = (len(frames) + frames_per_unit - 1) // frames_per_unit
    unit = int(rng.integers(1, max(2, n_units - 1))) if n_units > 2 else 0
    code = int(rng.integers(10000, 99999))
    needle = needle_image(plan.width, plan.height, code)
    for i in range(unit * frames_per_unit, min(len(frames), (unit + 1) * frames_per_unit)):
        frames[i] = needle
    return times, frames, unit, code
