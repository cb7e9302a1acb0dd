"""SmolVLM2 video, laid out as transformers' SmolVLM processor writes it
(processing_smolvlm.replace_video_token, video_processing_smolvlm), by the
runtime (runtime/src/video_layout.h, shared with the C API):

    You are provided the following series of four frames from a 0:00:10 [H:MM:SS] video.\\n
    \\nFrame from 00:00:<fake_token_around_image><global-img>{64 visual tokens}<fake_token_around_image>
    \\nFrame from 00:02:<fake_token_around_image><global-img>{64 visual tokens}<fake_token_around_image>
    ...\\n\\n

The count is in words (num2words), the duration is str(timedelta) of the
whole seconds, each timestamp is minutes:seconds truncated. Each frame is one
image, never split into tiles: transformers resizes it to `video_size` on its
longest side (aspect kept, odd sides made even), then stretches that to the
tower's square tile (512 px on SmolVLM2-256M/500M, whose video_size is 512 as
well), with the checkpoint's LANCZOS (torchvision >= 0.27; older ones fall
back to BICUBIC); `square_frame` does the same with Pillow's LANCZOS, and a
frame already tile x tile is left alone on both sides. Positions are
sequential (a llama decoder): a frame's tokens take one position each.

    grid = video_grid(vision)                  # tile and tokens per frame, from the mmproj
    frames = (f.rgb for f in iter_frames(path, times))   # native size: both resizes here
    chunks = encode_smolvlm_video(vision, frames, times, info.duration_s)
    vision.add_chunks(session, with_turn_text(model, USER_PREFIX, chunks, question + TURN_SUFFIX))

(iter_frames(..., size=decode_size(info.width, info.height, grid)) lets PyAV
do the first resize instead: faster, with its own filter.)

Why the text is ours, not libmtmd's: libmtmd cuts every idefics3 image into
tiles plus an overview, each with its own markers ("<fake_token_around_image>
<row_1_col_1>", "\\n\\n<fake_token_around_image><global-img>"). A frame of
exactly one tile gives one tile and the overview, both the frame's own
pixels; only the overview's tokens are kept and the text around them is
tokenized here. So the tower runs twice per frame (libmtmd has no way to ask
for the overview alone). An mmproj whose preprocessor longest edge is larger
than its tile (SmolVLM2's 2048 vs 512) would have libmtmd upscale the frame
and cut it into 16 tiles, so the runtime loads the mmproj capped at one tile
(image_max_tokens = tokens per tile) for video when the Vision is not.

transformers tokenizes the whole prompt as one string, so text that touches
the video block ("User: " before it, the question after its "\\n\\n") must be
tokenized together with the block's first and last text: vision.with_turn_text.
"""

from __future__ import annotations

from typing import Callable, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from . import video_frames as vf
from ._native_loader import native
from .errors import InvalidArgumentError
from .vision import Chunk, ImageChunk, Vision, chunks_from_native, encode_video_frames

# transformers' DEFAULT_CHAT_TEMPLATE for a first user turn [video, text] with
# add_generation_prompt (the template the processor uses whenever a video is in the chat).
USER_PREFIX = "<|im_start|>User: "
TURN_SUFFIX = "<end_of_utterance>\nAssistant:"
MAX_IMAGE_SIZE = 4096  # transformers' cap on video_size
# Frames sent to libmtmd per call: bounds the RGB frames held while a long video streams through.
FRAMES_PER_GROUP = 16


# -- the text ---------------------------------------------------------------------------------

def number_words(n: int) -> str:
    """num2words(n) in English (transformers needs the num2words package for
    this one call; it is not a dependency here): 21 "twenty-one", 101 "one
    hundred and one", 1234 "one thousand, two hundred and thirty-four"."""
    return native.number_words(int(n))


def smolvlm_video_prompt(times: Sequence[float], duration: Optional[float], marker: str) -> str:
    """The video block's text with `marker` where each frame's visual tokens
    go. times: each frame's time (s); duration: the video's length (s; None:
    the last frame's time, as transformers without metadata.duration)."""
    return native.smolvlm_video_prompt([float(t) for t in times], -1.0 if duration is None else float(duration),
                                       marker)


# -- the frames ---------------------------------------------------------------------------------


def video_grid(vision: Vision) -> vf.VisionGrid:
    """The mmproj's tile (clip.vision.image_size) and tokens per tile, one tile per frame."""
    layout = vision.layout
    for name in ("image_size", "patch_size", "scale_factor"):
        if layout[name] <= 0:
            raise InvalidArgumentError(f"mmproj '{vision.path}' has no clip.vision.{name}: not a SmolVLM / "
                                       "Idefics3 mmproj")
    return vf.smolvlm_mtmd_grid(layout["image_size"], layout["patch_size"], layout["scale_factor"], 0)


def decode_size(width: int, height: int, grid: vf.VisionGrid = vf.SMOLVLM2_VIDEO,
                video_size: Optional[int] = None) -> Tuple[int, int]:
    """(width, height) of transformers' first resize of a width x height
    frame: longest side video_size (default: the tile), the other scaled and
    made even (video_processing_smolvlm.get_resize_output_image_size)."""
    w, h = vf.longest_edge_size(width, height, min(MAX_IMAGE_SIZE, int(video_size or grid.tile)))
    return max(w, 1), max(h, 1)


def square_frame(rgb: np.ndarray, grid: vf.VisionGrid = vf.SMOLVLM2_VIDEO,
                 video_size: Optional[int] = None) -> np.ndarray:
    """transformers' two resizes of a video frame (to decode_size, then to the
    tile x tile square), with Pillow's LANCZOS (the processor's resample);
    each is skipped when the frame already has that size, as torchvision does."""
    from PIL import Image

    h, w = rgb.shape[:2]
    for size in (decode_size(w, h, grid, video_size), (grid.tile, grid.tile)):
        if (rgb.shape[1], rgb.shape[0]) != size:
            rgb = np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.LANCZOS))
    return np.ascontiguousarray(rgb, dtype=np.uint8)


def encode_frames(vision: Vision, frames: Iterable[np.ndarray], n_frames: int,
                  progress: Optional[Callable[[int, int], None]] = None, video_size: Optional[int] = None,
                  frames_per_group: int = FRAMES_PER_GROUP) -> List[ImageChunk]:
    """Each frame's visual tokens (one ImageChunk per frame, first_image its
    index), FRAMES_PER_GROUP frames per libmtmd call as they are decoded."""
    return chunks_from_native(_encoder(vision, frames, n_frames, progress, video_size, frames_per_group)
                              .images(vision.model.info["n_embd"]))


def encode_smolvlm_video(vision: Vision, frames: Iterable[np.ndarray], times: Sequence[float],
                         duration: Optional[float], progress: Optional[Callable[[int, int], None]] = None,
                         video_size: Optional[int] = None) -> List[Chunk]:
    """The video block (chunks for Vision.add_chunks, through with_turn_text):
    text, frame, text, ..., frame, text. frames: (H, W, 3) uint8 RGB of any
    size (square_frame makes them one tile; decode at decode_size for speed),
    taken at `times` (s) of a video `duration` s long. progress(done, total)
    counts frames."""
    encoder = _encoder(vision, frames, len(times), progress, video_size, FRAMES_PER_GROUP)
    return chunks_from_native(encoder.finish([float(t) for t in times], -1.0 if duration is None else float(duration),
                                             vision.model.info["n_embd"]))


def _encoder(vision: Vision, frames: Iterable[np.ndarray], n_frames: int,
             progress: Optional[Callable[[int, int], None]], video_size: Optional[int], frames_per_group: int):
    """The runtime's VideoEncoder over the frames squared as transformers does
    (the runtime encodes each one tile, capping the mmproj at one tile)."""
    grid = video_grid(vision)
    squared = (square_frame(rgb, grid, video_size) for rgb in frames)
    return encode_video_frames(vision, squared, n_frames, progress, frames_per_group)
