"""Qwen-VL video (the runtime's layout, runtime/src/video_layout.h) against transformers' video path, on the tiny
converted Qwen2.5-VL and Qwen2-VL of support/tiny_vlms.py: 4 frames of the
packaged clip, sampled 0.5 s apart, encoded through libmtmd in pairs and laid
out as one block with time in the M-RoPE t ids, give transformers' logits
(pixel_values_videos, video_grid_thw, second_per_grid_ts).

Tolerance: REL_TOL_TRANSFORMERS of support/tiny_vlms.py (8e-3, 2.5x the
worst image case). Measured here on the last position: Qwen2.5-VL 2.5e-3, Qwen2-VL
3.5e-3. Control: the same embeddings in llama.cpp's video layout (each pair
a still image, its own <|vision_start|>/<|vision_end|>) are off by far more,
so the layout is what is checked.
"""

from __future__ import annotations

from typing import List

import numpy as np
import pytest
import torch

from htsparse_llama import Chunks, SparseConfig, Vision
from htsparse_llama._native_loader import native
from htsparse_llama.video import frames as vf
from htsparse_llama.video.turn import encode_video
from htsparse_llama.vision import encode_video_frames
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


def video_pixels(frames: List[np.ndarray], preprocessor) -> torch.Tensor:
    """pixel_values_videos as Qwen2VLVideoProcessor makes them for frames
    already at a multiple of 28 px (no resize): rescaled, normalized, cut in
    14-px patches of 2 frames, in its order (its _preprocess's view/permute,
    in numpy: the processor itself needs torchvision, absent here)."""
    x = np.stack(frames).astype(np.float32) / 255.0  # T, H, W, C
    x = (x - np.array(preprocessor["image_mean"], np.float32)) / np.array(preprocessor["image_std"], np.float32)
    x = x.transpose(0, 3, 1, 2)  # T, C, H, W
    t, c, h, w = x.shape
    gt, gh, gw = t // 2, h // 14, w // 14
    x = x.reshape(gt, 2, c, gh // 2, 2, 14, gw // 2, 2, 14)
    x = x.transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)
    return torch.from_numpy(np.ascontiguousarray(x.reshape(gt * gh * gw, c * 2 * 14 * 14)))


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


def test_sparse_video_block(tiny_vlm, clip_frames):
    """keep_ratio 1 equals dense within batching noise; keep 0.5 keeps one
    of the two pairs (one segment per pair)."""
    files = tiny_vlm
    model = files.model()
    vision = Vision(model, files.mmproj, n_threads=THREADS)
    chunks = encode_video(vision, clip_frames, TIMES)
    _, dense = ours(model, vision, chunks)
    s_all, all_kept = ours(
        model, vision, chunks, SparseConfig(keep_ratio=1.0, full_head_ratio=1.0, select_layer=1, prune_layer=3)
    )
    assert len(s_all.selection["kept_in_span"]) == 96
    assert rel_l2(all_kept[None], dense[None]).max() < 3e-3
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
