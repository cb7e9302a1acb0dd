"""A video (or images) as the first user turn of a chat: frames sampled and
sized to a visual-token budget (plan, frames), encoded by the mmproj's
vision tower through libmtmd in the layout the model family was trained on
(the runtime's VideoEncoder: Qwen-VL one block with time in the M-RoPE ids,
Qwen3-VL a timestamp before each frame pair, SmolVLM2 a frame header and one
tile per frame), cached by content (cache), and put in the session as one
sparse span so that HT-Sparse keeps, per question, the frames the question
needs. Frames stream: they are decoded and
encoded a group at a time.

    turn = VideoTurn.load_video(vision, "clip.mp4", VideoOptions(max_visual_tokens=4096), cache)
    turn.ask(session, vision, "What happens at the end?")     # then session.generate()
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import VideoError
from ..model import Model, Session
from ..options import check_fields, option
from ..vision import Chunks, Vision, encode_video_frames
from . import frames as vf
from . import plan as vp
from .budget import auto_budget
from .cache import EmbeddingCache

Progress = Callable[[str, int, int], None]  # (stage, done, total)

# Bump when the chunks a video becomes change, so cached entries of the old layout are not reused.
LAYOUT_VERSION = 3


@dataclass
class VideoOptions:
    """Which frames of a video are taken, and how many visual tokens they may make."""

    fps: Optional[float] = option(
        None,
        "frames sampled per second (default: the model family's, 2 for Qwen-VL and Qwen3-VL, 1 for SmolVLM2)",
        lo=0,
        lo_open=True,
    )
    max_frames: Optional[int] = option(None, "most frames sampled", lo=1)
    start: Optional[float] = option(None, "start of the part to sample, in seconds", lo=0)
    end: Optional[float] = option(None, "end of the part to sample, in seconds", lo=0, lo_open=True)
    max_visual_tokens: Optional[int] = option(
        8192,
        "budget of visual tokens; frame count and size are chosen to fit (auto: the most whose peak KV under the "
        "session's plan fits the device's free memory)",
        lo=1,
        literals=("auto",),
    )

    def __post_init__(self) -> None:
        check_fields(self)

    def resolved(self, model: Model, settings: Optional[Dict[str, Any]]) -> Tuple["VideoOptions", Optional[str]]:
        """These options with an "auto" budget made a number for `model`
        under HT-Sparse `settings` (SparseConfig.resolve()'s; None: dense),
        and why (None when nothing was chosen)."""
        if self.max_visual_tokens != "auto":
            return self, None
        budget = auto_budget(model, settings)
        return replace(self, max_visual_tokens=budget.tokens), budget.reason


def vision_grid(vision: Vision) -> vp.VisionGrid:
    """How the model's tower turns frames into tokens, for its video family
    (which the runtime decides from the mmproj's projector): Qwen-VL 28-px
    patches merged in frame pairs, Qwen3-VL the same of its own patch size;
    SmolVLM2 one tile per frame; Gemma 3 one image per frame."""
    if vision.video_family == "qwen":
        return vp.QWEN2_5_VL
    layout = vision.layout
    if vision.video_family == "qwen3vl":
        if layout["patch_size"] <= 0:
            raise VideoError(f"mmproj '{vision.path}' has no clip.vision.patch_size: not a Qwen3-VL mmproj")
        return vp.qwen3vl_grid(layout["patch_size"])
    family = "Gemma 3" if vision.video_family == "gemma3" else "SmolVLM / Idefics3"
    for name in ("image_size", "patch_size", "scale_factor"):
        if layout[name] <= 0:
            raise VideoError(f"mmproj '{vision.path}' has no clip.vision.{name}: not a {family} mmproj")
    if vision.video_family == "gemma3":
        return vp.gemma3_grid(layout["image_size"], layout["patch_size"], layout["scale_factor"])
    return vp.smolvlm_mtmd_grid(layout["image_size"], layout["patch_size"], layout["scale_factor"], 0)


def encode_video(
    vision: Vision,
    frames: Iterable[np.ndarray],
    times: Sequence[float],
    progress: Optional[Callable[[int, int], None]] = None,
    duration: Optional[float] = None,
) -> Chunks:
    """The video's chunks (for Session.add_chunks / add_media_turn) in the
    layout its model family was trained on, from frames sampled at `times`
    (s) of a video `duration` s long (None: unknown); frames may be a
    generator (they are encoded as they come). Qwen-VL frames come sized by
    the plan; SmolVLM2 frames any size (the runtime squares them)."""
    encoder = encode_video_frames(vision, frames, len(times), progress)
    return encoder.finish([float(t) for t in times], -1.0 if duration is None else float(duration))


def plan_frames(vision: Vision, path: str, options: VideoOptions) -> Tuple[vf.VideoInfo, List[float], vp.FramePlan]:
    """The video's facts, the frame times and the plan (count and size) for
    this model's tower within the options' budget."""
    if options.max_visual_tokens == "auto":
        raise VideoError(
            "max_visual_tokens 'auto' is chosen for a session: VideoOptions.resolved(model, settings) first"
        )
    info = vf.probe(path)
    times, plan = vp.plan_video(
        info,
        fps=options.fps,
        max_frames=options.max_frames,
        start=options.start,
        end=options.end,
        max_visual_tokens=options.max_visual_tokens,
        grid=vision_grid(vision),
    )
    return info, times, plan


def frame_size(info: vf.VideoInfo, plan: vp.FramePlan) -> Tuple[int, int]:
    """The size frames are decoded at: the plan's (Qwen-VL), or the longest
    side to the tile (SmolVLM2's first resize, as transformers, the runtime
    squaring it; Gemma 3, which libmtmd stretches to its square)."""
    if plan.grid.kind == "tiles":
        return vp.decode_size(info.width, info.height, plan.grid)
    return plan.width, plan.height


# -- cache entries ---------------------------------------------------------------------------


def _cached(cache: EmbeddingCache, key: str, vision: Vision) -> Optional[Chunks]:
    """The chunks under `key`: the same Chunks from memory, or rebuilt from disk."""
    n_embd, image_token = vision.model.info["n_embd"], vision.image_token
    return cache.get(key, lambda items: Chunks.from_arrays(items, n_embd, image_token))


# -- the turn ------------------------------------------------------------------------------


@dataclass
class VideoTurn:
    """The encoded visual part of the first user turn."""

    chunks: Chunks
    source: str
    times: List[float] = field(default_factory=list)  # frame times (video)
    plan: Optional[vp.FramePlan] = None
    from_cache: bool = False

    @property
    def n_visual_tokens(self) -> int:
        return self.chunks.n_visual_tokens

    def describe(self) -> str:
        what = self.plan.describe() if self.plan is not None else f"{self.n_visual_tokens} visual tokens"
        return f"{self.source}: {what}" + (" (embeddings from the cache)" if self.from_cache else "")

    @classmethod
    def load_video(
        cls,
        vision: Vision,
        path: str,
        options: VideoOptions,
        cache: EmbeddingCache,
        progress: Progress = lambda *_: None,
    ) -> "VideoTurn":
        info, times, plan = plan_frames(vision, path, options)
        settings = {
            "times": [round(t, 6) for t in times],
            "size": [plan.width, plan.height],
            "layout": f"{vision.projector}-v{LAYOUT_VERSION}",
        }
        key = cache.key(path, settings, vision.path)
        cached = _cached(cache, key, vision)
        if cached is not None:
            return cls(cached, Path(path).name, times, plan, from_cache=True)
        decoded = (f.rgb for f in vf.iter_frames(path, times, size=frame_size(info, plan)))
        chunks = encode_video(
            vision,
            decoded,
            times,
            lambda done, total: progress("encoding frames", done, total),
            duration=info.duration_s,
        )
        cache.put(key, chunks)
        return cls(chunks, Path(path).name, times, plan)

    @classmethod
    def load_images(
        cls, vision: Vision, paths: Sequence[str], cache: EmbeddingCache, progress: Progress = lambda *_: None
    ) -> "VideoTurn":
        images = [vf.read_image(p) for p in paths]
        key = cache.key(paths[0], {"images": [cache.file_hash(p) for p in paths]}, vision.path)
        cached = _cached(cache, key, vision)
        names = ", ".join(Path(p).name for p in paths)
        if cached is not None:
            return cls(cached, names, from_cache=True)
        chunks = vision.encode(
            vision.marker * len(images), images, progress=lambda done, total: progress("encoding", done, total)
        )
        cache.put(key, chunks)
        return cls(chunks, names)

    def ask(self, session: Session, vision: Vision, question: str, sparse: bool = True) -> None:
        """The first user turn: the visual span (sparse), then the question
        (the query window), rendered with the chat template."""
        vision.add_media_turn(session, self.chunks, question, sparse=sparse)  # generate() then opens the reply

    def summary(self) -> Dict[str, object]:
        """What --json and the server report about the visual input."""
        out: Dict[str, object] = {
            "source": self.source,
            "visual_tokens": self.n_visual_tokens,
            "from_cache": self.from_cache,
        }
        if self.plan is not None:
            out.update(
                frames=len(self.times),
                width=self.plan.width,
                height=self.plan.height,
                times=[round(t, 3) for t in self.times],
            )
        return out
