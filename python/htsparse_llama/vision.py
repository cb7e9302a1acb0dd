"""Images and video frames as session input, through libmtmd (the mmproj's
vision tower): a prompt with one marker per image is tokenized and encoded
into text chunks and image chunks (visual tokens with their rope positions),
which are then appended to a Session in order.

    model = Model("qwen2.5-vl.gguf")
    vision = Vision(model, "mmproj.gguf")
    s = model.session()
    vision.add_message(s, "user", f"{vision.marker}What is in the picture?", [rgb])  # rgb: (H, W, 3) uint8
    print("".join(s.generate(max_tokens=64)))

Encoded chunks are one opaque `Chunks` list the runtime owns (as libmtmd's
mtmd_input_chunks): len(chunks), and chunks[i] is a view with kind ("text" or
"image"), n_tokens, tokens (text), embd (n_tokens, n_embd) and positions
(rows, n_tokens) arrays that are views of the runtime's memory, nx, ny (token
grid), n_pos, first_image and n_images. They go back to a session without
being copied through Python.

Video frames go the same way with frames=True: libmtmd merges consecutive
frames of equal size into one temporal unit on models that do (Qwen-VL:
pairs, `frames_per_unit` 2), so put no text between the two frames of a pair.
A whole video in its model family's layout comes from video.encode_video.

Positions: libmtmd gives each image chunk's positions relative to its first
one; they are placed at the session's next position, and text after an image
resumes `n_pos` later (M-RoPE: max(grid height, width)), as llama.cpp's
mtmd_helper_decode_image_chunk does. The next image chunk also starts
`n_pos` later: a Qwen-VL video block gives its frame pairs n_pos 0 and time
offsets in t, so they share one start.

Sparse spans (sparse=True, in a session made with a SparseConfig): everything
from the first image chunk to the last one, the text between them included
(<|vision_end|><|vision_start|>, frame headers), is one sparse span of
embedding rows, with one segment per image (per frame pair on Qwen-VL) that
starts with the text before it. Text before the first and after the last
image is ordinary text. Kept tokens keep their positions; a dropped frame
drops its delimiters with it.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from ._native_loader import native
from .errors import InvalidArgumentError
from .model import Model, Session

ProgressFn = Callable[[int, int], Optional[bool]]
Chunks = native.Chunks  # the runtime's opaque list of encoded chunks
# Frames decoded and encoded together (the runtime's VideoEncoder::kFramesPerGroup): bounds the RGB
# frames held in memory while a long video streams through the vision tower.
FRAMES_PER_GROUP = int(native.FRAMES_PER_GROUP)


class Vision:
    """libmtmd's vision tower for a Model, from the mmproj GGUF made with it.

    Args:
        model: the text model (Model) the visual tokens are for.
        mmproj_path: the mmproj GGUF; its output width must be the model's
            n_embd (InvalidArgumentError naming both otherwise).
        n_threads: CPU threads of the tower; None: the model's.
        use_gpu: run the tower on the model's GPU, when the model has one.
        image_min_tokens, image_max_tokens: bounds on tokens per image for
            dynamic-resolution towers (None: the mmproj's).
    """

    def __init__(
        self,
        model: Model,
        mmproj_path: Union[str, os.PathLike],
        n_threads: Optional[int] = None,
        use_gpu: bool = True,
        image_min_tokens: Optional[int] = None,
        image_max_tokens: Optional[int] = None,
    ) -> None:
        self.model = model
        self.path = os.fspath(mmproj_path)
        self._native = native.Vision(
            model._native,
            self.path,
            int(n_threads or 0),
            bool(use_gpu),
            -1 if image_min_tokens is None else int(image_min_tokens),
            -1 if image_max_tokens is None else int(image_max_tokens),
        )

    @property
    def marker(self) -> str:
        """The text that stands for one image in a prompt."""
        return self._native.marker

    @property
    def uses_mrope(self) -> bool:
        """Visual tokens carry time/height/width positions (Qwen-VL)."""
        return self._native.uses_mrope

    @property
    def frames_per_unit(self) -> int:
        """Frames libmtmd merges into one chunk when marked as frames (2 on Qwen-VL, else 1)."""
        return self._native.frames_per_unit

    @property
    def projector(self) -> str:
        """The mmproj's projector type (clip.projector_type: qwen2vl_merger,
        qwen2.5vl_merger, idefics3, ...): how its tokens are laid out."""
        return str(self._native.layout["projector"])

    @property
    def tokens_per_second(self) -> int:
        """Qwen2.5-VL: M-RoPE time positions per second of video. Our converter
        writes it (htsparse.vision.tokens_per_second); upstream's mmproj lacks
        it, and every released Qwen2.5-VL checkpoint has 2."""
        return int(self._native.layout["tokens_per_second"])

    @property
    def layout(self) -> Dict[str, Any]:
        """What the mmproj says about its token layout: projector,
        tokens_per_second, image_size (the idefics3 tile), patch_size,
        scale_factor, tokens_per_tile (0 where it does not apply)."""
        return dict(self._native.layout)

    @property
    def video_family(self) -> str:
        """The video layout of the mmproj's model family: "qwen" (Qwen2-VL,
        Qwen2.5-VL: frame pairs in one block, time in the M-RoPE t ids),
        "qwen3vl" (Qwen3-VL: each frame pair an image after a "<t seconds>"
        timestamp) or "smolvlm" (SmolVLM2: a frame header and one tile per
        frame); decided by the runtime from the projector
        (UnsupportedModelError otherwise)."""
        return str(self._native.video_family)

    @property
    def image_token(self) -> int:
        """The model's image placeholder token, shown for visual tokens in Session.tokens()."""
        return self._native.image_token

    # -- encoding --------------------------------------------------------------------
    def encode(
        self, prompt: str, images: Sequence[np.ndarray], frames: bool = False, progress: Optional[ProgressFn] = None
    ) -> Chunks:
        """Tokenizes `prompt` (one `marker` per image) and encodes the images:
        the chunks in prompt order. images: (H, W, 3) uint8 RGB arrays.
        frames=True marks them as frames of one video (merged in pairs on
        Qwen-VL). progress(done, total) is called as image chunks are
        encoded; returning False stops (InvalidArgumentError)."""
        arrays = [_rgb(im, i) for i, im in enumerate(images)]
        return self._native.encode(prompt, arrays, bool(frames), False, progress)

    def encode_image(self, rgb: np.ndarray) -> Chunks:
        """One image alone: its image chunk(s) and the text libmtmd puts around them."""
        return self.encode(self.marker, [rgb])

    def encode_frames(self, frames: Sequence[np.ndarray], progress: Optional[ProgressFn] = None) -> Chunks:
        """Frames of one video with nothing between them (merged where the model merges)."""
        return self.encode(self.marker * len(frames), frames, frames=True, progress=progress)

    # -- into a session -----------------------------------------------------------
    def add(
        self,
        session: Session,
        prompt: str,
        images: Sequence[np.ndarray],
        frames: bool = False,
        sparse: bool = False,
        progress: Optional[ProgressFn] = None,
    ) -> Chunks:
        """Encodes `prompt` with its images and appends it to `session` (BOS
        first when the session is empty and the model wants it). Returns the
        chunks, which add_chunks() can append again without re-encoding."""
        chunks = self.encode(prompt, images, frames=frames, progress=progress)
        self.add_chunks(session, chunks, sparse=sparse)
        return chunks

    def add_message(
        self,
        session: Session,
        role: str,
        content: str,
        images: Sequence[np.ndarray],
        frames: bool = False,
        sparse: bool = False,
        progress: Optional[ProgressFn] = None,
    ) -> Chunks:
        """One chat turn whose content holds the images' markers, rendered
        with the GGUF's chat template (as Session.add_message)."""
        before, after = session.begin_turn(role)
        return self.add(session, before + content + after, images, frames=frames, sparse=sparse, progress=progress)

    def add_chunks(self, session: Session, chunks: Chunks, sparse: bool = False) -> None:
        """Appends encoded chunks in order (see the module's docstring for
        positions and sparse spans)."""
        self._check_session(session)
        session.add_chunks(chunks, sparse=sparse)

    def add_media_turn(
        self,
        session: Session,
        chunks: Chunks,
        question: str,
        sparse: bool = True,
        turn_text: Optional[Tuple[str, str]] = None,
    ) -> None:
        """A user turn holding the chunks and then the question (Session.add_media_turn)."""
        self._check_session(session)
        session.add_media_turn(chunks, question, sparse=sparse, turn_text=turn_text)

    def _check_session(self, session: Session) -> None:
        if session.model is not self.model:
            raise InvalidArgumentError("the session belongs to another model than this Vision")


def encode_video_frames(
    vision: Vision,
    frames: Iterable[np.ndarray],
    n_frames: int,
    progress: Optional[Callable[[int, int], None]] = None,
    frames_per_group: int = FRAMES_PER_GROUP,
):
    """Frames of one video through the runtime's VideoEncoder (the layout of
    the mmproj's model family), a group at a time as they come (a long video
    is never in memory as pixels); progress(done, total) counts frames.
    Returns the encoder: .images() (the frame pairs or frames) and
    .finish(times, duration_s) (the video in its family's layout) give Chunks."""
    encoder = native.VideoEncoder(vision._native)
    done = 0
    for group in in_groups(frames, frames_per_group):
        encoder.add_frames([_rgb(f, done + i) for i, f in enumerate(group)])
        done += len(group)
        if progress is not None:
            progress(done, n_frames)
    if done != n_frames:
        raise InvalidArgumentError(f"expected {n_frames} frames, the video gave {done}")
    return encoder


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


def _rgb(image: np.ndarray, i: int) -> np.ndarray:
    a = np.asarray(image)
    if a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] != 3 or a.shape[0] == 0 or a.shape[1] == 0:
        raise InvalidArgumentError(
            f"image {i} must be a non-empty (height, width, 3) uint8 RGB array, got {a.dtype} of shape {a.shape}"
        )
    return np.ascontiguousarray(a)
