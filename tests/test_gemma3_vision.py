"""Gemma 3 images and video into a session, on the tiny converted Gemma 3 VLM
(support/tiny_vlms.py: a SigLIP tower pooled to 16 tokens per image, the
5-layer decoder with 16-token windows of test_tiny_models): libmtmd wraps the
image in <start_of_image> ... <end_of_image>, and the image's tokens see each
other both ways, as transformers' token_type_ids mask (and llama.cpp's
non-causal image decode) has them. A video is frames as images with
llama.cpp's timestamps (runtime/src/video_layout.h), since Gemma 3 has no
video processor of its own.

Tolerance: REL_TOL_TRANSFORMERS (support/tiny_vlms.py) against transformers'
whole VLM forward (measured 2.1e-3 at the last position), with controls that
the causal-only reading of the same prompt, and another picture, lie far
outside it. Against llama.cpp + libmtmd on the same files (its non-causal
image decode): test_vision.test_image_prompt_matches_llama_cpp_mtmd, equal.
"""

from __future__ import annotations

import re
from typing import List

import numpy as np
import pytest
import torch

from htsparse_llama import SparseConfig, Vision
from htsparse_llama._native_loader import native
from htsparse_llama.video import plan as vp
from htsparse_llama.video.turn import encode_video, vision_grid
from support.cli import cli
from support.parity import rel_l2
from support.tiny_vlms import CASES, REL_TOL_TRANSFORMERS, THREADS, pattern_image

pytestmark = pytest.mark.real_model  # the tiny models carry real vocabularies

# Enough text after the image that the question's window layers (16 tokens) no longer see it.
QUESTION = " What is in the picture? Say it in a few words, please.<end_of_turn>\n<start_of_turn>model\n"


def gemma_pixels(rgb: np.ndarray) -> torch.Tensor:
    from PIL import Image
    from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil as Processor

    pre = CASES["gemma3"].preprocessor
    h, w = rgb.shape[:2]
    proc = Processor(size={"height": h, "width": w}, image_mean=pre["image_mean"], image_std=pre["image_std"])
    return proc(images=[Image.fromarray(rgb)], return_tensors="pt")["pixel_values"]


def transformers_logits(model, ids: List[int], image_token: int, pixels: torch.Tensor, bidirectional: bool = True):
    """The last position's logits of the whole VLM; token_type_ids mark the image (bidirectional)."""
    input_ids = torch.tensor([ids])
    extra = {"token_type_ids": (input_ids == image_token).long()} if bidirectional else {}
    with torch.no_grad():
        out = model(input_ids=input_ids, pixel_values=pixels, use_cache=False, **extra)
    return out.logits[0, -1:].float().numpy()


def image_prompt(vision: Vision) -> str:
    return "<start_of_turn>user\nDescribe this: " + vision.marker + QUESTION


def test_image_prompt_matches_transformers(gemma3_vlm):
    m = gemma3_vlm
    model = m.model()
    vision = Vision(model, m.mmproj, n_threads=THREADS)
    assert not vision.uses_mrope and vision.frames_per_unit == 1
    rgb = pattern_image(*CASES["gemma3"].image_wh)
    s = model.session()
    chunks = vision.add(s, image_prompt(vision), [rgb])
    assert [c.kind for c in chunks] == ["text", "image", "text"]
    assert chunks[1].n_tokens == CASES["gemma3"].n_tokens
    assert model.detokenize(chunks[0].tokens, special=True).endswith("<start_of_image>")
    assert model.detokenize(chunks[2].tokens, special=True).startswith("<end_of_image>")

    image_token = m.torch_model.config.image_token_id
    ids = [t for c in chunks for t in (c.tokens if not c.is_image else [image_token] * c.n_tokens)]
    bos = s.tokens()[: len(s.tokens()) - len(ids)]
    assert bos == model.tokenize("", add_special=True)  # the session began with Gemma's <bos>
    ids = bos + ids
    pixels = gemma_pixels(rgb)
    ref = transformers_logits(m.torch_model, ids, image_token, pixels)
    err = rel_l2(s.logits()[None], ref).max()
    print(f"\ngemma3 image prompt vs transformers: last-position relative L2 error {err:.2e}")
    assert err < REL_TOL_TRANSFORMERS
    # Controls: the image read causally, and another picture, each move the answer far beyond that.
    causal = transformers_logits(m.torch_model, ids, image_token, pixels, bidirectional=False)
    assert rel_l2(causal, ref).max() > 10 * REL_TOL_TRANSFORMERS
    moved = transformers_logits(m.torch_model, ids, image_token, gemma_pixels(rgb[::-1].copy()))
    assert rel_l2(moved, ref).max() > 10 * REL_TOL_TRANSFORMERS


# -- HT-Sparse over images --------------------------------------------------------------------------

THREE_IMAGES = "<start_of_turn>user\nFirst: {m} then: {m} and last: {m}" + QUESTION


def three_images(vision):
    rgb = pattern_image(*CASES["gemma3"].image_wh)
    return THREE_IMAGES.format(m=vision.marker), [np.roll(rgb, 11 * k, axis=1) for k in range(3)]


def test_sparse_span_keeping_everything_matches_transformers(gemma3_vlm):
    """Three images as one sparse span, selection at the global layer 3 (the
    window layers 1 and 2 before it, 4 after), every token kept: the span
    waits at layer 3 and runs the pruned zone in the compacted cache, each
    image still read both ways, so the answer is transformers'."""
    m = gemma3_vlm
    model = m.model()
    vision = Vision(model, m.mmproj, n_threads=THREADS)
    prompt, images = three_images(vision)
    config = SparseConfig(keep_ratio=1.0, full_head_ratio=1.0, select_layer=3, prune_layer=3)
    s = model.session(sparse=config)
    chunks = vision.add(s, prompt, images, sparse=True)
    assert [c.kind for c in chunks].count("image") == 3
    logits = s.logits()
    assert s.stats().n_kept == s.stats().n_sparse > 48

    image_token = m.torch_model.config.image_token_id
    ids = [t for c in chunks for t in (c.tokens if not c.is_image else [image_token] * c.n_tokens)]
    ids = model.tokenize("", add_special=True) + ids
    pixels = torch.cat([gemma_pixels(im) for im in images])
    ref = transformers_logits(m.torch_model, ids, image_token, pixels)
    err = rel_l2(logits[None], ref).max()
    print(f"\ngemma3 sparse span of 3 images, all kept, vs transformers: relative L2 error {err:.2e}")
    assert err < REL_TOL_TRANSFORMERS
    assert rel_l2(transformers_logits(m.torch_model, ids, image_token, pixels, False), ref).max() > err * 10


def image_starts(chunks) -> List[int]:
    """Span-relative starts of the image chunks (the span runs from the first image chunk to the last)."""
    starts, at = [], None
    for c in chunks:
        at = 0 if at is None and c.is_image else at
        if at is None:
            continue
        if c.is_image:
            starts.append(at)
        at += c.n_tokens if c.is_image else len(c.tokens)
    return starts


def test_sparse_span_keeps_whole_images_read_both_ways(gemma3_vlm):
    """Keep half of three images (S = P = 3): whole images are kept, and the
    pruned zone reads each kept image both ways among its own tokens: the
    answer is a dense pass over every token whose layers from 3 on hide the
    dropped ones (set_hidden_cells), within rounding (the span runs as one
    stream of rows in blocks, the reference chunk by chunk)."""
    m = gemma3_vlm
    model = m.model()
    vision = Vision(model, m.mmproj, n_threads=THREADS)
    prompt, images = three_images(vision)
    s = model.session(sparse=SparseConfig(keep_ratio=0.5, select_layer=3, prune_layer=3))
    chunks = vision.add(s, prompt, images, sparse=True)
    logits = s.logits()
    begin, end = s._sparse.span
    kept = {begin + v for v in s.selection["kept_in_span"]}
    dropped = [c for c in range(begin, end) if c not in kept]
    assert 0 < len(dropped) < end - begin
    n = CASES["gemma3"].n_tokens
    image_cells = [set(range(begin + a, begin + a + n)) for a in image_starts(chunks)]
    assert len(image_cells) == 3
    assert all(im <= kept or not im & kept for im in image_cells)  # whole images, kept or dropped

    ref = model.session()
    ref._context._hold_from_layer(3)
    vision.add(ref, prompt, images)
    ref._context._set_hidden_cells(dropped)
    ref._context._finish_held()
    err = rel_l2(logits[None], ref.logits()[None]).max()
    print(f"\ngemma3 sparse span keeping {len(kept)} of {end - begin}: vs hidden-cell reference {err:.2e}")
    assert err < 1e-4  # measured 2.7e-7
    # Control: the dropped tokens mattered.
    dense = model.session()
    vision.add(dense, prompt, images)
    assert rel_l2(dense.logits()[None], ref.logits()[None]).max() > 10 * err


# -- video ------------------------------------------------------------------------------------------


def test_video_text_is_llama_cpps():
    """mtmd_helper_video's layout: "Video:", each frame an image, and after a
    frame at or past the next 5 s mark its time as "[XmY.YYs]" (the stamp
    follows the frame it dates; a gap moves the mark on by one interval)."""
    one = "<start_of_image>M<end_of_image>"
    got = native.gemma3_video_prompt([0.0, 2.5, 5.0, 7.5, 30.0, 65.25], "M")
    assert got == "Video:" + one + "[0m0.00s]" + one + one + "[0m5.00s]" + one + one + "[0m30.00s]" + one + "[1m5.25s]"
    assert native.gemma3_video_prompt([0.0, 1.0], "M", interval_s=0) == "Video:" + one + one


def test_video_matches_transformers(gemma3_vlm):
    """Three frames (the tower's size, so neither side resizes) through the
    video path: the frames are the images of that text, each read both ways,
    as transformers reads the same ids and pixels."""
    m = gemma3_vlm
    model = m.model()
    vision = Vision(model, m.mmproj, n_threads=THREADS)
    assert vision.video_family == "gemma3"
    grid = vision_grid(vision)
    assert (grid.tile, grid.tokens_per_tile, grid.temporal) == (64, CASES["gemma3"].n_tokens, 1)
    rgb = pattern_image(*CASES["gemma3"].image_wh)
    frames = [np.roll(rgb, 7 * k, axis=0) for k in range(3)]
    chunks = encode_video(vision, frames, [0.0, 2.5, 5.0])
    assert model.detokenize(chunks[0].tokens, special=True) == "Video:<start_of_image>"
    s = model.session()
    vision.add_chunks(s, chunks)
    image_token = m.torch_model.config.image_token_id
    ids = [t for c in chunks for t in (c.tokens if not c.is_image else [image_token] * c.n_tokens)]
    ids = model.tokenize("", add_special=True) + ids
    assert s.tokens()[-len(ids) + 1 :] == [t if t != image_token else vision.image_token for t in ids[1:]]
    pixels = torch.cat([gemma_pixels(f) for f in frames])
    err = rel_l2(s.logits()[None], transformers_logits(m.torch_model, ids, image_token, pixels)).max()
    print(f"\ngemma3 video of 3 frames vs transformers: last-position relative L2 error {err:.2e}")
    assert err < REL_TOL_TRANSFORMERS


def test_chat_video_on_gemma3(gemma3_vlm):
    """`chat --video` on Gemma 3: one image per frame at 1 fps, the plan in
    whole frames, and a sparse selection that keeps whole frames."""
    assert vp.FAMILY_FPS["gemma3"] == 1.0
    n = CASES["gemma3"].n_tokens
    r = cli(
        "chat", "--video", "packaged:clip", "-m", str(gemma3_vlm.text), "--mmproj", str(gemma3_vlm.mmproj),
        "--prompt", "What happens?", "--max-frames", "4", "--max-visual-tokens", str(3 * n), "-t", "2", "-n", "2",
        "--keep-ratio", "0.5", "--select-layer", "3", "--prune-layer", "3",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert f"3 frames at 64x32 ({n} tokens per frame) = {3 * n} visual tokens" in r.stderr, r.stderr
    kept, n_sparse = map(int, re.search(r"kept (\d+) of (\d+) sparse tokens", r.stderr).groups())
    assert n_sparse > 3 * n and 0 < kept < n_sparse
