"""A video (or images) as the first user turn of a chat: frames sampled and
sized to a visual-token budget (video_frames), encoded by the mmproj's vision
tower through libmtmd (vision) in the layout the model family was trained on
(video_qwen: one block, time in the M-RoPE ids), cached by content
(embedding_cache), and put in the session as one sparse span so that
HT-Sparse keeps, per question, the frames the question needs. Frames stream:
they are decoded and encoded a group at a time.

    turn = VideoTurn.load(vision, "clip.mp4", VideoOptions(max_visual_tokens=4096), cache)
    turn.ask(session, "What happens at the end?")     # then session.generate()
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from . import video_frames as vf
from . import video_qwen, video_smolvlm
from .embedding_cache import EmbeddingCache
from .errors import InvalidArgumentError
from .model import Session
from .vision import Chunk, ImageChunk, TextChunk, Vision

Progress = Callable[[str, int, int], None]  # (stage, done, total)


@dataclass
class VideoOptions:
    fps: Optional[float] = None
    max_frames: Optional[int] = None
    start: Optional[float] = None
    end: Optional[float] = None
    max_visual_tokens: Optional[int] = 8192


QWEN_PROJECTORS = ("qwen2vl_merger", "qwen2.5vl_merger")
SMOLVLM_PROJECTOR = "idefics3"
# Bump when the chunks a video becomes change, so cached entries of the old layout are not reused.
LAYOUT_VERSION = 2


def _grid(vision: Vision) -> vf.VisionGrid:
    """How the model's tower turns frames into tokens (Qwen-VL: 28-px patches,
    pairs; SmolVLM2: one tile per frame)."""
    if vision.projector in QWEN_PROJECTORS:
        return vf.QWEN2_5_VL
    if vision.projector == SMOLVLM_PROJECTOR:
        return video_smolvlm.video_grid(vision)
    raise InvalidArgumentError(f"video input is supported for Qwen2-VL, Qwen2.5-VL and SmolVLM2 models (this "
                               f"mmproj's projector is '{vision.projector}'); use --image for this model")


def encode_video(vision: Vision, frames: Iterable[np.ndarray], times: Sequence[float],
                 progress: Optional[Callable[[int, int], None]] = None,
                 duration: Optional[float] = None) -> List[Chunk]:
    """The video's chunks (for Vision.add_chunks) in the layout its model
    family was trained on, from frames sampled at `times` (s) of a video
    `duration` s long; frames may be a generator (they are encoded as they
    come). Qwen-VL frames come sized by the plan; SmolVLM2 frames any size."""
    if _grid(vision).kind == "tiles":
        return video_smolvlm.encode_smolvlm_video(vision, frames, times, duration, progress)
    return video_qwen.encode_video(vision, frames, times, progress)


def plan_frames(vision: Vision, path: str, options: VideoOptions) -> Tuple[vf.VideoInfo, List[float], vf.FramePlan]:
    """The video's facts, the frame times and the plan (count and size) for
    this model's tower within the options' budget."""
    info = vf.probe(path)
    times, plan = vf.plan_video(info, fps=options.fps, max_frames=options.max_frames, start=options.start,
                                end=options.end, max_visual_tokens=options.max_visual_tokens, grid=_grid(vision))
    return info, times, plan


def frame_size(info: vf.VideoInfo, plan: vf.FramePlan) -> Tuple[int, int]:
    """The size frames are decoded at: the plan's (Qwen-VL), or SmolVLM2's first
    resize (longest side to the tile, as transformers; the encoder squares it)."""
    if plan.grid.kind == "tiles":
        return video_smolvlm.decode_size(info.width, info.height, plan.grid)
    return plan.width, plan.height


# -- cache entries ---------------------------------------------------------------------------


def chunks_to_items(chunks: Sequence[Chunk]) -> List[Dict[str, np.ndarray]]:
    items = []
    for c in chunks:
        if isinstance(c, TextChunk):
            items.append({"tokens": np.asarray(c.tokens, dtype=np.int32)})
        else:
            meta = np.array([c.nx, c.ny, c.n_pos, c.first_image, c.n_images], dtype=np.int32)
            items.append({"embd": c.embd, "positions": c.positions, "meta": meta})
    return items


def items_to_chunks(items: Sequence[Dict[str, np.ndarray]]) -> List[Chunk]:
    chunks: List[Chunk] = []
    for it in items:
        if "tokens" in it:
            chunks.append(TextChunk([int(t) for t in it["tokens"]]))
        else:
            nx, ny, n_pos, first, n_images = (int(v) for v in it["meta"])
            chunks.append(ImageChunk(it["embd"], it["positions"], nx, ny, n_pos, first, n_images))
    return chunks


# -- the turn ------------------------------------------------------------------------------


@dataclass
class VideoTurn:
    """The encoded visual part of the first user turn."""

    chunks: List[Chunk]
    source: str
    times: List[float] = field(default_factory=list)  # frame times (video)
    plan: Optional[vf.FramePlan] = None
    from_cache: bool = False

    @property
    def n_visual_tokens(self) -> int:
        return sum(c.n_tokens for c in self.chunks if isinstance(c, ImageChunk))

    def describe(self) -> str:
        what = self.plan.describe() if self.plan is not None else f"{self.n_visual_tokens} visual tokens"
        return f"{self.source}: {what}" + (" (embeddings from the cache)" if self.from_cache else "")

    @classmethod
    def load_video(cls, vision: Vision, path: str, options: VideoOptions, cache: EmbeddingCache,
                   progress: Progress = lambda *_: None) -> "VideoTurn":
        info, times, plan = plan_frames(vision, path, options)
        settings = {"times": [round(t, 6) for t in times], "size": [plan.width, plan.height],
                    "layout": f"{vision.projector}-v{LAYOUT_VERSION}"}
        key = cache.key(path, settings, vision.path)
        cached = cache.get(key)
        if cached is not None:
            return cls(items_to_chunks(cached), Path(path).name, times, plan, from_cache=True)
        frames = (f.rgb for f in vf.iter_frames(path, times, size=frame_size(info, plan)))
        chunks = encode_video(vision, frames, times, lambda done, total: progress("encoding frames", done, total),
                              duration=info.duration_s)
        cache.put(key, chunks_to_items(chunks))
        return cls(chunks, Path(path).name, times, plan)

    @classmethod
    def load_images(cls, vision: Vision, paths: Sequence[str], cache: EmbeddingCache,
                    progress: Progress = lambda *_: None) -> "VideoTurn":
        images = [vf.read_image(p) for p in paths]
        key = cache.key(paths[0], {"images": [cache.file_hash(p) for p in paths]}, vision.path)
        cached = cache.get(key)
        if cached is not None:
            return cls(items_to_chunks(cached), ", ".join(Path(p).name for p in paths), from_cache=True)
        chunks = vision.encode(vision.marker * len(images), images,
                               progress=lambda done, total: progress("encoding", done, total))
        cache.put(key, chunks_to_items(chunks))
        return cls(chunks, ", ".join(Path(p).name for p in paths))

    def ask(self, session: Session, vision: Vision, question: str, sparse: bool = True) -> None:
        """The first user turn: the visual span (sparse), then the question
        (the query window), rendered with the chat template."""
        vision.add_media_turn(session, self.chunks, question, sparse=sparse)  # generate() then opens the reply


def plan_summary(turn: VideoTurn) -> Dict[str, object]:
    """What --json reports about the visual input."""
    out: Dict[str, object] = {"source": turn.source, "visual_tokens": turn.n_visual_tokens,
                              "from_cache": turn.from_cache}
    if turn.plan is not None:
        out.update(frames=len(turn.times), width=turn.plan.width, height=turn.plan.height,
                   times=[round(t, 3) for t in turn.times])
    return out
