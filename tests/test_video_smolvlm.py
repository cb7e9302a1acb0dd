"""SmolVLM2 video (the runtime's layout, runtime/src/video_layout.h) against transformers' video path, on the
tiny converted SmolVLM2 fixture of support/tiny_vlms.py (64 px tiles, 16
tokens per frame, the real SmolLM2 tokenizer plus SmolVLM2's added tokens):
4 frames of the packaged clip, each one tile, in transformers' text (intro with the count
in words and the duration, "\\nFrame from MM:SS:" per frame) give its token
ids and its logits.

transformers runs its own SmolVLMProcessor (chat template, replace_video_token,
tokenizer) with three stand-ins for what is not installed here: num2words
(a lookup for 4), the video processor's pixels (torchvision: its two resizes
are identities on frames already tile x tile, which torchvision returns
unchanged, so only rescale/normalize is left, done in torch) and the
processor's sub-processor class check (which looks the video processor up in
torchvision's registry).

Tolerance: REL_TOL_TRANSFORMERS of support/tiny_vlms.py (8e-3, 2.5x the
worst image case). Measured on the last position: 2.2e-3. Control: the frames in
another order move transformers' logits by far more than the bound.
"""

from __future__ import annotations

from typing import List

import numpy as np
import pytest
import torch

from htsparse_llama import SparseConfig, Vision
from htsparse_llama._native_loader import native
from htsparse_llama.video import frames as vf
from htsparse_llama.video import plan as vp
from htsparse_llama.video.plan import decode_size
from htsparse_llama.video.turn import encode_video, vision_grid
from htsparse_llama.vision import encode_video_frames
from support.hf_checkpoints import rebuilt_tokenizer
from support.parity import rel_l2
from support.tiny_vlms import CASES, REL_TOL_TRANSFORMERS, THREADS, WithImageTokens

pytestmark = pytest.mark.real_model  # the tiny model carries the real SmolLM2 vocabulary

TIMES = [0.0, 2.5, 5.0, 7.5]  # "00:00", "00:02", "00:05", "00:07"
QUESTION = "What happens in the video?"
# transformers' DEFAULT_CHAT_TEMPLATE for a first user turn [video, text] with
# add_generation_prompt (the template the processor uses whenever a video is in the chat).
USER_PREFIX = "<|im_start|>User: "
TURN_SUFFIX = "<end_of_utterance>\nAssistant:"


def encode_frames(vision, frames, n, progress=None, frames_per_group=16):
    """Each frame's visual tokens, one image chunk per frame (the runtime's VideoEncoder)."""
    return encode_video_frames(vision, frames, n, progress, frames_per_group).images()


def square_frame(rgb, grid):
    """The runtime's squaring of a frame to the grid's tile (transformers' two resizes)."""
    return native.square_frame(np.ascontiguousarray(rgb), grid.tile)


# -- the text ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "n,words",
    [
        (1, "one"),
        (4, "four"),
        (13, "thirteen"),
        (20, "twenty"),
        (21, "twenty-one"),
        (64, "sixty-four"),
        (100, "one hundred"),
        (101, "one hundred and one"),
        (115, "one hundred and fifteen"),
        (1000, "one thousand"),
        (1001, "one thousand and one"),
        (1234, "one thousand, two hundred and thirty-four"),
        (120000, "one hundred and twenty thousand"),
        (2000001, "two million and one"),
    ],
)
def test_number_words_as_num2words(n, words):
    assert native.number_words(n) == words


def test_prompt_text():
    text = native.smolvlm_video_prompt([0.0, 2.5, 65.9, 3599.99], 3725.4, "<M>")
    frame = "<fake_token_around_image><global-img><M><fake_token_around_image>"
    assert text == (
        "You are provided the following series of four frames from a 1:02:05 [H:MM:SS] video.\n"
        f"\nFrame from 00:00:{frame}\nFrame from 00:02:{frame}\nFrame from 01:05:{frame}"
        f"\nFrame from 59:59:{frame}\n\n"
    )
    # Without a duration (< 0), the last frame's time (transformers without metadata.duration).
    assert native.smolvlm_video_prompt([0.0, 1.0], -1.0, "<M>").startswith(
        "You are provided the following series of two frames from a 0:00:01 [H:MM:SS] video.\n"
    )


def test_prompt_text_is_replace_video_token(monkeypatch):
    """transformers' own replace_video_token writes the same text (with <image>
    x image_seq_len where the marker is)."""
    from types import SimpleNamespace

    from transformers.models.smolvlm import processing_smolvlm
    from transformers.video_utils import VideoMetadata

    monkeypatch.setattr(processing_smolvlm, "num2words", {4: "four"}.__getitem__)
    me = SimpleNamespace(
        image_seq_len=64,
        image_token="<image>",
        fake_image_token="<fake_token_around_image>",
        global_image_token="<global-img>",
    )
    meta = VideoMetadata(total_num_frames=240, fps=2.0, duration=10.02, frames_indices=[0, 5, 10, 15])
    ref = processing_smolvlm.SmolVLMProcessor.replace_video_token(
        me, {"pixel_values": torch.zeros(1, 4, 3, 1, 1), "video_metadata": [meta]}, 0
    )
    assert native.smolvlm_video_prompt(TIMES, 10.02, "<image>" * 64) == ref


# -- the frames -------------------------------------------------------------------------------------


def test_square_frame_follows_transformers():
    """The runtime's squaring against transformers' video resizes, in numpy
    through its PIL resize: the longest side to video_size (its
    get_resize_output_image_size), then the tile x tile square, LANCZOS (the
    checkpoint's resample 1)."""
    from transformers.image_transforms import resize
    from transformers.image_utils import ChannelDimension, PILImageResampling
    from transformers.models.smolvlm.video_processing_smolvlm import get_resize_output_image_size

    grid = vp.SMOLVLM2_VIDEO
    rgb = np.random.default_rng(0).integers(0, 256, (358, 720, 3), dtype=np.uint8)
    h, w = get_resize_output_image_size(torch.zeros(1, 3, 358, 720), resolution_max_side=512)
    assert decode_size(720, 358, grid) == (w, h) == (512, 254)
    assert decode_size(358, 721, grid) == (254, 512)  # portrait; odd sides made even
    ref = rgb
    for size in ((h, w), (512, 512)):
        ref = resize(
            ref,
            size,
            resample=PILImageResampling.LANCZOS,
            data_format=ChannelDimension.LAST,
            input_data_format=ChannelDimension.LAST,
        )
    got = square_frame(rgb, grid)
    assert got.shape == (512, 512, 3) and got.dtype == np.uint8
    # The runtime's Lanczos is within one level of Pillow's per resize (test_runtime_squares_frames_like_pillow),
    # so within two after both; and all but a few pixels are exact.
    diff = np.abs(got.astype(int) - ref.astype(int))
    assert diff.max() <= 2 and (diff > 1).mean() < 1e-3
    # The two steps are not one: the short side goes through 254 rows.
    direct = resize(
        rgb,
        (512, 512),
        resample=PILImageResampling.LANCZOS,
        data_format=ChannelDimension.LAST,
        input_data_format=ChannelDimension.LAST,
    )
    assert np.abs(got.astype(int) - direct.astype(int)).max() > 8
    # A frame already one tile is left as it is.
    assert np.array_equal(square_frame(got, grid), got)


_TINY = vp.smolvlm_mtmd_grid(64, 8, 2, 0)  # the fixture's mmproj: 64 px tiles, 16 tokens


@pytest.fixture(scope="module")
def clip():
    """The clip's info and its frames at TIMES, decoded at the first resize's size (64 x 32)."""
    info = vf.probe(vf.sample_clip_path())
    return info, [f.rgb for f in vf.iter_frames(info.path, TIMES, size=decode_size(info.width, info.height, _TINY))]


def test_one_image_per_frame(smolvlm, clip):
    """libmtmd makes a tile and the overview of each frame (the same pixels,
    the same tokens); the overview is kept, one chunk per frame."""
    vision = Vision(smolvlm.model(), smolvlm.mmproj, n_threads=THREADS)
    assert vision_grid(vision) == _TINY and _TINY.tokens(64, 32) == 16
    _, frames = clip
    squared = [square_frame(f, _TINY) for f in frames]
    both = [c for c in vision.encode(vision.marker, squared[:1]) if c.is_image]
    assert len(both) == 2 and np.array_equal(both[0].embd, both[1].embd)
    progress = []
    images = encode_frames(vision, frames, 4, progress=lambda d, t: progress.append((d, t)), frames_per_group=3)
    assert [(c.first_image, c.n_images, c.n_tokens, c.n_pos) for c in images] == [(i, 1, 16, 16) for i in range(4)]
    assert progress == [(3, 4), (4, 4)]
    assert np.array_equal(images[0].embd, both[1].embd)


def test_runtime_squares_frames_like_pillow(smolvlm, clip):
    """Frames an app hands to the C API at their own size are squared by the
    runtime (a Lanczos-3 filter written as Pillow's): the pixels agree with
    Pillow within one level, and the visual tokens with those of frames
    Pillow squared."""
    from PIL import Image

    _, frames = clip
    for size in ((64, 64), (40, 90), (200, 120)):  # stretch, shrink and grow
        ours = native.resize_rgb_lanczos(frames[0], *size).astype(int)
        pillow = np.asarray(Image.fromarray(frames[0]).resize(size, Image.Resampling.LANCZOS)).astype(int)
        assert ours.shape == pillow.shape and np.abs(ours - pillow).max() <= 1 and np.abs(ours - pillow).mean() < 1e-3
    vision = Vision(smolvlm.model(), smolvlm.mmproj, n_threads=THREADS)
    got = [c.embd for c in encode_frames(vision, frames, len(frames))]  # 64 x 32: not yet square
    pillow = [
        np.asarray(Image.fromarray(f).resize((_TINY.tile, _TINY.tile), Image.Resampling.LANCZOS)) for f in frames
    ]  # one resize: 64 x 32 frames are already longest side 64
    ref = encode_frames(vision, pillow, len(frames))
    assert len(got) == len(ref) == len(frames)
    assert max(float(rel_l2(a.ravel(), b.embd.ravel())) for a, b in zip(got, ref)) < 2e-2


def test_upscaling_mmproj_is_capped_at_one_tile(smolvlm, clip, tmp_path):
    """An mmproj whose preprocessor longest edge is above its tile (SmolVLM2:
    2048 vs 512; here 128 vs 64) has libmtmd upscale a frame and cut it into
    tiles; for video the runtime loads it capped at one tile's tokens, so
    each frame is one tile again, with the same tokens as an mmproj that never
    upscales, whether the Vision was capped by the caller or not."""
    from htsparse_convert.mmproj_gguf import write_mmproj_gguf

    m = smolvlm
    tensors = {k: v.detach().cpu().numpy() for k, v in m.torch_model.state_dict().items()}
    upscaling = write_mmproj_gguf(
        tmp_path / "mmproj-128.gguf",
        tensors,
        m.torch_model.config,
        dict(CASES["smolvlm"].preprocessor, size={"longest_edge": 128}),
        "f32",
    )
    _, frames = clip
    model = m.model()
    uncapped = Vision(model, upscaling, n_threads=THREADS)
    one_frame = [square_frame(frames[0], _TINY)]
    assert sum(c.is_image for c in uncapped.encode(uncapped.marker, one_frame)) == 5  # 4 tiles + overview
    ref = encode_frames(Vision(model, m.mmproj, n_threads=THREADS), frames, 4)
    for vision in (uncapped, Vision(model, upscaling, n_threads=THREADS, image_max_tokens=16)):
        got = encode_frames(vision, frames, 4)
        assert len(got) == 4 and all(np.array_equal(a.embd, b.embd) for a, b in zip(got, ref))


# -- against transformers ---------------------------------------------------------------------------


def hf_processor(monkeypatch, tokenizer, pixel_values: torch.Tensor, duration: float):
    """transformers' SmolVLMProcessor with the stand-ins of the module doc."""
    from transformers import BatchFeature
    from transformers.models.smolvlm import processing_smolvlm
    from transformers.models.smolvlm.image_processing_pil_smolvlm import SmolVLMImageProcessorPil
    from transformers.models.smolvlm.video_processing_smolvlm import SmolVLMVideoProcessor
    from transformers.processing_utils import ProcessorMixin
    from transformers.video_utils import VideoMetadata

    class GivenPixels(SmolVLMVideoProcessor):
        def __call__(self, videos, **kwargs):
            # Timestamps are frames_indices / fps: 2 "fps" makes them TIMES exactly.
            meta = VideoMetadata(
                total_num_frames=240, fps=2.0, duration=duration, frames_indices=[round(t * 2) for t in TIMES]
            )
            return BatchFeature({"pixel_values": pixel_values, "video_metadata": [meta]})

    monkeypatch.setattr(processing_smolvlm, "num2words", {4: "four"}.__getitem__)
    monkeypatch.setattr(ProcessorMixin, "check_argument_for_proper_class", lambda *a, **k: None)
    return processing_smolvlm.SmolVLMProcessor(
        image_processor=SmolVLMImageProcessorPil(), tokenizer=tokenizer, video_processor=GivenPixels(), image_seq_len=16
    )


def normalized(frames: List[np.ndarray], mean, std) -> torch.Tensor:
    """The video processor's rescale and normalize: (1, frames, 3, H, W)."""
    x = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float() / 255.0
    x = (x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    return x[None]


def test_video_matches_transformers(smolvlm, smollm_gguf, clip, monkeypatch):
    m = smolvlm
    model = m.model()
    vision = Vision(model, m.mmproj, n_threads=THREADS)
    info, frames = clip
    chunks = encode_video(vision, iter(frames), TIMES, duration=info.duration_s)
    s = model.session()
    vision.add_media_turn(s, chunks, QUESTION, sparse=False, turn_text=(USER_PREFIX, TURN_SUFFIX))

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(rebuilt_tokenizer(smollm_gguf)))
    tokenizer.add_special_tokens({"additional_special_tokens": WithImageTokens.EXTRA})
    pre = {"image_mean": [0.5] * 3, "image_std": [0.5] * 3}  # CASES["smolvlm"].preprocessor's
    squared = [square_frame(f, _TINY) for f in frames]
    proc = hf_processor(
        monkeypatch, tokenizer, normalized(squared, pre["image_mean"], pre["image_std"]), info.duration_s
    )
    conversation = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": QUESTION}]}]
    text = proc.apply_chat_template(conversation, add_generation_prompt=True)
    assert text == USER_PREFIX + "<video>" + QUESTION + TURN_SUFFIX
    inputs = proc(text=text, videos=[np.stack(squared)], return_tensors="pt")
    ids = inputs["input_ids"][0].tolist()

    # The same ids, the visual tokens where transformers has <image>.
    assert vision.image_token == tokenizer.convert_tokens_to_ids("<image>")
    assert s.tokens() == ids
    assert chunks.n_visual_tokens == ids.count(vision.image_token) == 4 * 16
    # Tokenized apart, the text at the block's ends would differ ("User: " + "You", "\n\n" + "What").
    apart = model.tokenize(USER_PREFIX) + chunks[0].tokens
    assert apart != s.tokens()[: len(apart)]

    m.torch_model.config.image_token_id = vision.image_token
    m.torch_model.model.image_token_id = vision.image_token
    with torch.no_grad():
        ref = (
            m.torch_model(
                input_ids=inputs["input_ids"],
                attention_mask=inputs["attention_mask"],
                pixel_values=inputs["pixel_values"],
                use_cache=False,
            )
            .logits[0, -1:]
            .float()
            .numpy()
        )
    err = rel_l2(s.logits()[None], ref).max()
    print(f"\nsmolvlm2 4-frame video vs transformers: last-position relative L2 error {err:.2e}")
    assert err < REL_TOL_TRANSFORMERS
    # Control: the frames in another order move transformers' logits far beyond that.
    with torch.no_grad():
        moved = (
            m.torch_model(
                input_ids=inputs["input_ids"], pixel_values=inputs["pixel_values"][:, [3, 2, 1, 0]], use_cache=False
            )
            .logits[0, -1:]
            .float()
            .numpy()
        )
    assert rel_l2(moved, ref).max() > 10 * REL_TOL_TRANSFORMERS
    # Control: libmtmd's own wrapping of the frames (a tile and the overview
    # each, with their markers) in the same text is far off too.
    intro = native.smolvlm_video_prompt(TIMES, info.duration_s, "").split("\n\nFrame")[0] + "\n"
    header = "\nFrame from {:02d}:{:02d}:"  # SmolVLM2's frame header, minutes:seconds
    naive_prompt = (
        USER_PREFIX
        + intro
        + "".join(header.format(int(t // 60), int(t % 60)) + vision.marker for t in TIMES)
        + "\n\n"
        + QUESTION
        + TURN_SUFFIX
    )
    naive = model.session()
    vision.add(naive, naive_prompt, [square_frame(f, _TINY) for f in frames])
    assert naive.tokens() != ids
    err_naive = rel_l2(naive.logits()[None], ref).max()
    print(f"libmtmd's own layout vs transformers: {err_naive:.2e}")
    assert err_naive > 10 * REL_TOL_TRANSFORMERS


def test_sparse_span_keeps_whole_frames(smolvlm, clip):
    """The frames from the first to the last are one sparse span, one segment
    per frame (the text before it included); keep_ratio 0.5 keeps whole
    frames adding up to half the span."""
    m = smolvlm
    model = m.model()
    vision = Vision(model, m.mmproj, n_threads=THREADS)
    info, frames = clip
    chunks = encode_video(vision, frames, TIMES, duration=info.duration_s)
    # Segment starts in the span: frame 0 at 0, frame k after the text before it.
    starts, n_span, text = [], 0, 0
    for c in list(chunks)[1:-1]:
        if not c.is_image:
            n_span, text = n_span + len(c.tokens), len(c.tokens)
        else:
            starts.append(n_span - text if starts else 0)
            n_span, text = n_span + c.n_tokens, 0
    segments = [range(a, b) for a, b in zip(starts, starts[1:] + [n_span])]

    s = model.session(sparse=SparseConfig(keep_ratio=0.5, select_layer=1, prune_layer=1))
    vision.add_media_turn(s, chunks, QUESTION, sparse=True, turn_text=(USER_PREFIX, TURN_SUFFIX))
    s.logits()
    assert s.stats().n_sparse == n_span
    kept = s.selection["kept_in_span"]
    whole = [seg for seg in segments if set(seg) <= set(kept)]
    assert sorted(v for seg in whole for v in seg) == kept  # whole frames only
    budget = int(np.ceil(0.5 * n_span))
    assert len(kept) >= budget and len(kept) - min(len(seg) for seg in whole) < budget
    assert s.stats().n_kept == len(kept)
    print(f"\nsparse span of {n_span} (segments {[len(seg) for seg in segments]}): kept {len(kept)}, budget {budget}")


def test_chat_video_turn_on_smolvlm(smolvlm, tmp_path):
    """What chat --video does (VideoTurn.load_video, ask) on a SmolVLM2 model:
    frames sampled to the budget, one tile each through a Vision capped at
    one tile, the block in transformers' text inside the chat template, and
    a sparse selection over whole frames; a second load comes from the cache."""
    from htsparse_llama.video.cache import EmbeddingCache
    from htsparse_llama.video.turn import VideoOptions, VideoTurn

    model = smolvlm.model()
    vision = Vision(model, smolvlm.mmproj, n_threads=THREADS)
    cache = EmbeddingCache(tmp_path)
    options = VideoOptions(max_frames=6, max_visual_tokens=4 * 16)  # the budget allows 4 of the 6 frames
    turn = VideoTurn.load_video(vision, vf.sample_clip_path(), options, cache)
    assert len(turn.times) == 4 and turn.n_visual_tokens == 4 * 16
    dense = model.session()
    turn.ask(dense, vision, QUESTION, sparse=False)
    prompt = model.detokenize(dense.tokens(), special=True)
    assert prompt.count("\nFrame from ") == 4 and "series of four frames" in prompt
    assert prompt.endswith("\n\n" + QUESTION + model.chat_turn("user")[1])  # the tiny model's template: chatml
    s = model.session(sparse=SparseConfig(keep_ratio=0.5, select_layer=1, prune_layer=1))
    turn.ask(s, vision, QUESTION)
    selection = s.select()
    assert 0 < len(selection["kept_in_span"]) < s.stats().n_sparse
    again = VideoTurn.load_video(vision, vf.sample_clip_path(), options, cache)
    assert again.from_cache and [c.n_tokens for c in again.chunks if c.is_image] == [16] * 4
