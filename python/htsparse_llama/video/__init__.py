"""Video and images as a conversation's visual span: frames (probe and
decode), plan (how many frames at what size fit a visual-token budget), turn
(the encoded video as the first user turn), cache (embeddings kept between
questions and runs) and explain (a picture of what an answer came from)."""

from .cache import EmbeddingCache
from .frames import iter_frames, probe, read_image, sample_clip_path
from .plan import plan_video
from .turn import VideoOptions, VideoTurn, encode_video

__all__ = [
    "EmbeddingCache",
    "VideoOptions",
    "VideoTurn",
    "encode_video",
    "iter_frames",
    "plan_video",
    "probe",
    "read_image",
    "sample_clip_path",
]
