"""Qwen-VL video (the runtime's layout, runtime/src/video_layout.h) against transformers' video path, on the tiny
converted Qwen2.5-VL, Qwen2-VL and Qwen3-VL of support/tiny_vlms.py: 4 frames
of the packaged clip, sampled 0.5 s apart, encoded through libmtmd in pairs.
Qwen2-VL / Qwen2.5-VL lay them out as one block with time in the M-RoPE t ids
and give transformers' logits (pixel_values_videos, video_grid_thw,
second_per_grid_ts); Qwen3-VL puts a "<t seconds>" timestamp before each pair,
each pair placed as an image, inside the chat template's own
<|vision_start|>/<|vision_end|> (transformers 5.23 keeps them: nested), and
gives transformers' logits on the prompt that Qwen3VLProcessor's own
replacement code writes.

Tolerance: REL_TOL_TRANSFORMERS of support/tiny_vlms.py (8e-3, 2.5x the
worst image case). Measured here on the last position: Qwen2.5-VL 2.5e-3, Qwen2-VL
3.5e-3, Qwen3-VL 1.6e-3. Controls: the same embeddings in llama.cpp's video layout
(each pair a still image, its own <|vision_start|>/<|vision_end|>) are off by
far more (Qwen3-VL: 0.31), and on Qwen3-VL so are the Qwen2.5-VL block (0.28)
and the timestamps without the template's outer markers (transformers 4.57's
layout, 0.12), so the layout is what is checked.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import List

import numpy as np
import pytest
import torch

from htsparse_llama import Chunks, SparseConfig, Vision
from htsparse_llama._native_loader import native
from htsparse_llama.video import frames as vf
from htsparse_llama.video import plan as vp
from htsparse_llama.video.turn import encode_video, vision_grid
from htsparse_llama.vision import encode_video_frames
from support.cli import cli
from support.parity import rel_l2
from support.tiny_vlms import CASES, REL_TOL_TRANSFORMERS, THREADS, build

pytestmark = pytest.mark.real_model  # the tiny models carry real vocabularies

TIMES = [1.0, 1.5, 2.0, 2.5]  # 4 frames, 0.5 s apart: 2 pairs
WIDTH, HEIGHT = 224, 168  # 8 x 6 tokens per pair
QUESTION = "What happens in the video?<|im_end|>\n<|im_start|>assistant\n"
BEFORE = "<|im_start|>user\n"


@pytest.fixture(scope="module")
def clip_frames() -> List[np.ndarray]:
    return [f.rgb for f in vf.iter_frames(vf.sample_clip_path(), TIMES, size=(WIDTH, HEIGHT))]


@pytest.fixture(scope="module", params=["qwen2_5_vl", "qwen2_vl"])
def tiny_vlm(request, qwen_vocab, tiny_dir):
    return build(request.param, qwen_vocab, tiny_dir / f"vision-{request.param}")


def video_pixels(frames: List[np.ndarray], preprocessor, patch: int = 14) -> torch.Tensor:
    """pixel_values_videos as Qwen2VLVideoProcessor (and Qwen3VLVideoProcessor's
    patchify, the same order) makes them for frames already at a multiple of
    2 patches (no resize): rescaled, normalized, cut in `patch`-px patches of
    2 frames, in its order (its view/permute, in numpy: the processor itself
    needs torchvision, absent here)."""
    x = np.stack(frames).astype(np.float32) / 255.0  # T, H, W, C
    x = (x - np.array(preprocessor["image_mean"], np.float32)) / np.array(preprocessor["image_std"], np.float32)
    x = x.transpose(0, 3, 1, 2)  # T, C, H, W
    t, c, h, w = x.shape
    gt, gh, gw = t // 2, h // patch, w // patch
    x = x.reshape(gt, 2, c, gh // 2, 2, patch, gw // 2, 2, patch)
    x = x.transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)
    return torch.from_numpy(np.ascontiguousarray(x.reshape(gt * gh * gw, c * 2 * patch * patch)))


def transformers_logits(files, ids: List[int], frames: List[np.ndarray], seconds_per_pair: float) -> np.ndarray:
    """Last-position logits of transformers' whole VLM, the frames given as one video."""
    grid = torch.tensor([[len(frames) // 2, HEIGHT // 14, WIDTH // 14]])
    cfg = files.torch_model.config
    token_type = torch.tensor([[2 if t == cfg.video_token_id else 0 for t in ids]])
    extra = {"second_per_grid_ts": torch.tensor([seconds_per_pair])} if files.model_type == "qwen2_5_vl" else {}
    with torch.no_grad():
        out = files.torch_model(
            input_ids=torch.tensor([ids]),
            mm_token_type_ids=token_type,
            pixel_values_videos=video_pixels(frames, CASES[files.model_type].preprocessor),
            video_grid_thw=grid,
            use_cache=False,
            **extra,
        )
    return out.logits[0, -1].float().numpy()


def with_text(model, before: str, chunks, after: str):
    """The chunks with text chunks of `before` and `after` around them."""
    items = [
        {"tokens": np.asarray(model.tokenize(before), np.int32)},
        *chunks.to_arrays(),
        {"tokens": np.asarray(model.tokenize(after), np.int32)},
    ]
    return Chunks.from_arrays(items, chunks.n_embd, chunks.image_token)


def ours(model, vision, chunks, sparse_config=None):
    s = model.session(sparse=sparse_config) if sparse_config else model.session()
    vision.add_chunks(s, with_text(model, BEFORE, chunks, QUESTION), sparse=sparse_config is not None)
    return s, s.logits()


def test_video_matches_transformers(tiny_vlm, clip_frames):
    files = tiny_vlm
    model = files.model()
    vision = Vision(model, files.mmproj, n_threads=THREADS)
    chunks = encode_video(vision, clip_frames, TIMES)
    cfg = files.torch_model.config

    # One block: <|vision_start|>, 2 pairs of 8x6 tokens, <|vision_end|>.
    assert [c.kind for c in chunks] == ["text", "image", "image", "text"]
    assert chunks[0].tokens == [cfg.vision_start_token_id] and chunks[-1].tokens == [cfg.vision_end_token_id]
    # Qwen2.5-VL: tokens_per_second (the tiny config's: transformers' default 4) x 2 frames x 0.5 s; Qwen2-VL: 1.
    step = cfg.vision_config.tokens_per_second * 2 * 0.5 if files.model_type == "qwen2_5_vl" else 1.0
    assert vision.tokens_per_second == (4 if files.model_type == "qwen2_5_vl" else 2)
    assert [int(chunks[i].positions[0].min()) for i in (1, 2)] == [0, int(step)]

    s, logits = ours(model, vision, chunks)
    n_visual = chunks.n_visual_tokens
    ids = [cfg.video_token_id if t == vision.image_token else t for t in s.tokens()]
    assert ids.count(cfg.video_token_id) == n_visual == 96
    assert s.next_pos == len(ids) - n_visual + 8  # the block spans max(8, 6, step + 1) positions
    assert step + 1 <= 8  # where transformers 5.23 (text after max(nx, ny)) agrees (video_layout.h)

    ref = transformers_logits(files, ids, clip_frames, seconds_per_pair=2 * 0.5)
    err = rel_l2(logits[None], ref[None]).max()
    print(f"\n{files.model_type} 4-frame video vs transformers: last-position relative L2 error {err:.2e}")
    assert err < REL_TOL_TRANSFORMERS

    # Control: llama.cpp's layout of the same embeddings (pairs as still images) is far off.
    pairs = [c for c in chunks if c.is_image]
    mtmd = vision.encode(vision.marker * len(clip_frames), clip_frames, frames=True)
    assert [c.embd.tobytes() for c in mtmd if c.is_image] == [c.embd.tobytes() for c in pairs]
    _, mtmd_logits = ours(model, vision, mtmd)
    assert rel_l2(mtmd_logits[None], ref[None]).max() > 5 * REL_TOL_TRANSFORMERS


def keeping_everything_is_dense(files, frames):
    """A video's chunks as a sparse span that keeps every token with full
    heads (S = 1, P = 3): the answer is the dense one within batching noise.
    Returns (model, vision, chunks, the number of span tokens kept)."""
    model = files.model()
    vision = Vision(model, files.mmproj, n_threads=THREADS)
    chunks = encode_video(vision, frames, TIMES)
    _, dense = ours(model, vision, chunks)
    s_all, all_kept = ours(
        model, vision, chunks, SparseConfig(keep_ratio=1.0, full_head_ratio=1.0, select_layer=1, prune_layer=3)
    )
    assert rel_l2(all_kept[None], dense[None]).max() < 3e-3
    return model, vision, chunks, len(s_all.selection["kept_in_span"])


def test_sparse_video_block(tiny_vlm, clip_frames):
    """keep_ratio 1 equals dense within batching noise; keep 0.5 keeps one
    of the two pairs (one segment per pair)."""
    model, vision, chunks, n_kept = keeping_everything_is_dense(tiny_vlm, clip_frames)
    assert n_kept == 96
    s_half, _ = ours(model, vision, chunks, SparseConfig(keep_ratio=0.5, select_layer=1, prune_layer=1))
    kept = s_half.selection["kept_in_span"]
    assert len(kept) == 48 and (kept == list(range(48)) or kept == list(range(48, 96)))


def test_time_positions_follow_the_sampling_interval():
    """Qwen2.5-VL: t = floor(g x 2 tokens/s x 2 frames x interval); text resumes
    after the largest position (here the last t, past the 2x3 grid)."""
    grid = np.array([[0] * 6, [0, 0, 0, 1, 1, 1], [0, 1, 2, 0, 1, 2]], dtype=np.int32)  # nx 3, ny 2

    def pairs(n):
        items = [
            {"embd": np.zeros((6, 4), np.float32), "positions": grid, "meta": np.array([3, 2, 3, 2 * i, 2], np.int32)}
            for i in range(n)
        ]  # nx ny n_pos first n_images
        return Chunks.from_arrays(items, 4, 0)

    step = native.qwen_temporal_step("qwen2.5vl_merger", 0.75)  # 3 positions per pair at 2 tokens/s
    assert step == 3.0 and native.qwen_temporal_step("qwen2vl_merger", 0.75) == 1.0
    assert native.qwen_temporal_step("qwen2.5vl_merger", 0.75, tokens_per_second=4) == 6.0
    placed = native.qwen_place_pairs(pairs(4), step)
    assert [int(p.positions[0, 0]) for p in placed] == [0, 3, 6, 9]
    assert [p.n_pos for p in placed] == [0, 0, 0, 10]
    assert all((p.positions[1:] == grid[1:]).all() for p in placed)
    assert [int(p.positions[0, 0]) for p in native.qwen_place_pairs(pairs(3), 1.5)] == [0, 1, 3]
    with pytest.raises(Exception, match="projector type"):
        native.qwen_temporal_step("idefics3", 1.0)


def test_frames_stream_through_the_tower_in_groups(qwen_vocab, tiny_dir, clip_frames):
    files = build("qwen2_5_vl", qwen_vocab, tiny_dir / "vision-qwen2_5_vl")
    vision = Vision(files.model(), files.mmproj, n_threads=THREADS)
    six = clip_frames + clip_frames[:2]
    seen = []
    pairs = encode_video_frames(
        vision, iter(six), len(six), lambda d, n: seen.append((d, n)), frames_per_group=2
    ).images()
    whole = encode_video_frames(vision, six, len(six)).images()
    assert seen == [(2, 6), (4, 6), (6, 6)]
    assert [p.first_image for p in pairs] == [0, 2, 4] and all(p.n_images == 2 for p in pairs)
    assert all(np.array_equal(a.embd, b.embd) for a, b in zip(pairs, whole))
    with pytest.raises(Exception, match="expected 8 frames"):
        encode_video_frames(vision, six, 8)


# -- Qwen3-VL ----------------------------------------------------------------------------------

Q3_WIDTH, Q3_HEIGHT = 112, 80  # the tiny tower's 8-px patches: 14 x 10, 7 x 5 tokens per pair
# The user turn as Qwen3-VL's chat template renders [video, text] content.
Q3_TEMPLATE = "<|im_start|>user\n<|vision_start|><|video_pad|><|vision_end|>" + QUESTION


@pytest.fixture(scope="module")
def qwen3_vlm(qwen_vocab, tiny_dir):
    return build("qwen3_vl", qwen_vocab, tiny_dir / "vision-qwen3_vl")


@pytest.fixture(scope="module")
def q3_frames() -> List[np.ndarray]:
    return [f.rgb for f in vf.iter_frames(vf.sample_clip_path(), TIMES, size=(Q3_WIDTH, Q3_HEIGHT))]


def qwen3_processor_text(text: str, times: List[float], grid: List[int]) -> str:
    """`text` as transformers' Qwen3VLProcessor expands its <|video_pad|> for
    frames sampled at `times` (s) with this video_grid_thw: its own
    replace_video_token and ProcessorMixin.get_text_with_replacements, on a
    processor holding only what they read (its tokenizer and video processor
    need files and torchvision that are not here)."""
    from transformers.models.qwen3_vl.processing_qwen3_vl import Qwen3VLProcessor
    from transformers.video_utils import VideoMetadata

    fps = 2.0  # frame k of a 2 fps video is at k / 2 s
    assert all(t * fps == int(t * fps) for t in times)
    proc = Qwen3VLProcessor.__new__(Qwen3VLProcessor)
    proc.image_token, proc.video_token = "<|image_pad|>", "<|video_pad|>"
    proc.vision_start_token, proc.vision_end_token = "<|vision_start|>", "<|vision_end|>"
    proc.video_processor = SimpleNamespace(merge_size=2, temporal_patch_size=2)
    indices = [int(t * fps) for t in times]
    metadata = VideoMetadata(total_num_frames=indices[-1] + 1, fps=fps, frames_indices=indices)
    videos = {"video_grid_thw": torch.tensor([grid]), "video_metadata": [metadata]}
    expanded, _ = proc.get_text_with_replacements([text], [], [proc.replace_video_token(videos, 0)], [])
    return expanded[0]


def qwen3_logits(files, ids: List[int], frames: List[np.ndarray]) -> np.ndarray:
    """Last-position logits of transformers' Qwen3VLForConditionalGeneration, the frames given as one video."""
    cfg = files.torch_model.config
    with torch.no_grad():
        out = files.torch_model(
            input_ids=torch.tensor([ids]),
            mm_token_type_ids=torch.tensor([[2 if t == cfg.video_token_id else 0 for t in ids]]),
            pixel_values_videos=video_pixels(frames, CASES["qwen3_vl"].preprocessor, patch=8),
            video_grid_thw=torch.tensor([[len(frames) // 2, Q3_HEIGHT // 8, Q3_WIDTH // 8]]),
            use_cache=False,
        )
    return out.logits[0, -1].float().numpy()


def test_qwen3_video_matches_transformers(qwen3_vlm, q3_frames):
    files = qwen3_vlm
    model = files.model()
    vision = Vision(model, files.mmproj, n_threads=THREADS)
    assert vision.video_family == "qwen3vl"
    chunks = encode_video(vision, q3_frames, TIMES)
    cfg = files.torch_model.config
    start, end = cfg.vision_start_token_id, cfg.vision_end_token_id

    # Each pair an image after its timestamp, inside the template's markers.
    assert [c.kind for c in chunks] == ["text", "image", "text", "image", "text"]
    assert chunks[0].tokens == [start, *model.tokenize("<1.2 seconds>"), start]
    assert chunks[2].tokens == [end, *model.tokenize("<2.2 seconds>"), start]
    assert chunks[4].tokens == [end, end]
    pairs = [c for c in chunks if c.is_image]
    assert all((p.positions[0] == 0).all() and p.n_pos == 7 for p in pairs)  # t constant; text after: max(7, 5)

    s, logits = ours(model, vision, chunks)
    ids = [cfg.video_token_id if t == vision.image_token else t for t in s.tokens()]
    text = qwen3_processor_text(Q3_TEMPLATE, TIMES, [2, Q3_HEIGHT // 8, Q3_WIDTH // 8])
    assert text.startswith("<|im_start|>user\n<|vision_start|><1.2 seconds><|vision_start|><|video_pad|>")
    assert model.tokenize(text) == ids  # our tokens are those of transformers' prompt
    assert ids.count(cfg.video_token_id) == chunks.n_visual_tokens == 70
    assert s.next_pos == len(ids) - 70 + 2 * 7  # each pair spans max(7, 5) positions

    ref = qwen3_logits(files, ids, q3_frames)
    err = rel_l2(logits[None], ref[None]).max()
    print(f"\nqwen3_vl 4-frame video vs transformers: last-position relative L2 error {err:.2e}")
    assert err < REL_TOL_TRANSFORMERS

    # Controls, the same embeddings: llama.cpp's layout (no timestamps), the
    # Qwen2.5-VL block, and transformers 4.57's (no outer markers).
    mtmd = vision.encode(vision.marker * len(q3_frames), q3_frames, frames=True)
    assert [c.embd.tobytes() for c in mtmd if c.is_image] == [p.embd.tobytes() for p in pairs]
    items = chunks.to_arrays()
    pair_list = Chunks.from_arrays([it for it in items if "embd" in it], chunks.n_embd, chunks.image_token)
    block = Chunks.from_arrays(
        [
            {"tokens": np.array([start], np.int32)},
            *native.qwen_place_pairs(pair_list, 1.0).to_arrays(),
            {"tokens": np.array([end], np.int32)},
        ],
        chunks.n_embd,
        chunks.image_token,
    )
    items[0]["tokens"], items[-1]["tokens"] = items[0]["tokens"][1:], items[-1]["tokens"][:1]
    unnested = Chunks.from_arrays(items, chunks.n_embd, chunks.image_token)
    for name, wrong in (("llama.cpp", mtmd), ("Qwen2.5-VL block", block), ("4.57, unnested", unnested)):
        off = rel_l2(ours(model, vision, wrong)[1][None], ref[None]).max()
        print(f"  control {name}: {off:.2e}")
        assert off > 5 * REL_TOL_TRANSFORMERS


def test_qwen3_timestamps_follow_transformers(qwen3_vlm, q3_frames):
    """Three frames: a pair and a lone last frame (transformers repeats it, so
    its own time); t written as Python's :.1f writes it, ties included."""
    vision = Vision(qwen3_vlm.model(), qwen3_vlm.mmproj, n_threads=THREADS)
    times = TIMES[:3]
    chunks = encode_video(vision, q3_frames[:3], times)
    text = "".join(
        vision.marker if c.is_image else qwen3_vlm.model().detokenize(c.tokens, special=True) for c in chunks
    )
    video = "<|vision_start|><|video_pad|><|vision_end|>"
    expected = qwen3_processor_text(video, times, [2, Q3_HEIGHT // 8, Q3_WIDTH // 8])
    assert (
        text
        == expected.replace("<|video_pad|>" * 35, vision.marker)
        == native.qwen3_video_prompt([1.25, 2.0], vision.marker)
    )
    for t in (0.0, 0.05, 0.15, 0.25, 0.35, 1.25, 2.25, 2.75, 9.95, 59.95, 3600.45, 1e6 + 0.05):
        assert native.qwen3_timestamp(t) == f"<{t:.1f} seconds>"


def test_qwen3_sparse_video(qwen3_vlm, q3_frames):
    """One segment per pair, the second with the text before it
    (<|vision_end|><2.2 seconds><|vision_start|>): keep_ratio 1 equals dense
    within batching noise; keep 0.4 (a budget of 32 tokens, below either
    segment) keeps one pair."""
    model, vision, chunks, n_kept = keeping_everything_is_dense(qwen3_vlm, q3_frames)
    n_between = len(chunks[2].tokens)  # <|vision_end|><2.2 seconds><|vision_start|>
    n_span = 70 + n_between
    assert n_kept == n_span
    s_one, _ = ours(model, vision, chunks, SparseConfig(keep_ratio=0.4, select_layer=1, prune_layer=1))
    kept = s_one.selection["kept_in_span"]
    assert kept == list(range(35)) or kept == list(range(35, n_span))


def test_qwen3_chat_video_plans_its_own_grid(qwen3_vlm):
    """`chat --video` on Qwen3-VL: frames sized in units of 2 of its patches
    (16 px on the tiny tower, 32 on released ones, not Qwen2's 28) at its 2 fps,
    so libmtmd leaves them as planned."""
    vision = Vision(qwen3_vlm.model(), qwen3_vlm.mmproj, n_threads=THREADS)
    grid = vision_grid(vision)
    assert (grid.family, grid.patch, grid.temporal) == ("qwen3vl", 16, 2) and vp.FAMILY_FPS[grid.family] == 2.0
    r = cli(
        "chat", "--video", "packaged:clip", "-m", str(qwen3_vlm.text), "--mmproj", str(qwen3_vlm.mmproj),
        "--prompt", "What happens?", "--max-frames", "4", "--max-visual-tokens", "512", "-t", "2", "-n", "2",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "2 frames at 448x224 (392 tokens per frame pair, 1 pair)" in r.stderr
    assert "kept 392 of 392 sparse tokens" in r.stderr  # libmtmd made the planned tokens
