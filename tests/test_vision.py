"""Vision (libmtmd) into a session, on the tiny converted Qwen2.5-VL and
SmolVLM2 fixtures (Gemma 3's against llama.cpp here too; its own tests:
test_gemma3_vision) (support/tiny_vlms.py): a prompt with an image gives
transformers' logits (whole VLM forward) and llama.cpp's own (libmtmd's
mtmd_helper_eval_chunks into llama.cpp's decoder); a mismatched mmproj is a
clear error; video frames merge in pairs on Qwen and enter a sparse span as
whole frames.

Tolerances (relative L2 error per position's logits):
- vs transformers: REL_TOL_TRANSFORMERS (8e-3), shared with the video tests:
  support/tiny_vlms.py says what it bounds, what was measured here (Qwen2.5-VL
  all 69 positions max 3.1e-3; SmolVLM2 last position 1.7e-3) and the
  controls below that make wrong positions or embeddings fail.
- vs llama.cpp: REL_TOL_LLAMA_CPP on the last position: same libmtmd, same
  ggml kernels; measured 0 (Qwen2.5-VL), 0 (SmolVLM2) and 0 (Gemma 3, its
  image read both ways on both sides). llama.cpp's qwen2vl
  ignores the RMS-norm epsilon (see test_tiny_models.llama_cpp_twin), so that
  comparison runs on a copy of the text GGUF with epsilon 0, on both sides.
- A sparse span with everything kept equals a dense session fed the same
  batches bit for bit; against the chunks added one by one (other micro-
  batches) it is within batching noise (measured 1.1e-3, bound 3e-3).
"""

from __future__ import annotations

from pathlib import Path
from typing import List

import numpy as np
import pytest
import torch

import htsparse_llama as hts
from htsparse_llama import Model, SparseConfig, Vision
from htsparse_llama.bench import llama_cpp as llama_cpp_mtmd
from support.parity import check_close, rel_l2
from support.tiny_vlms import CASES, REL_TOL_TRANSFORMERS, THREADS, TinyVLMFiles, pattern_image

pytestmark = pytest.mark.real_model  # the tiny models carry real vocabularies

REL_TOL_LLAMA_CPP = 1e-5
QUESTION = " What is in the picture?<|im_end|>\n<|im_start|>assistant\n"


def frames(n: int, w: int = 224, h: int = 168) -> List[np.ndarray]:
    """n different frames: the test pattern shifted a little each time."""
    return [np.roll(pattern_image(w, h), 9 * k, axis=1) for k in range(n)]


# -- (a) one image + text: transformers' whole VLM ----------------------------------------------


def qwen_pixels(rgb: np.ndarray):
    """pixel_values and image_grid_thw from transformers' Qwen2-VL image
    processor, with clip.cpp's pixel limits (as test_convert_mmproj)."""
    from PIL import Image
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil as Processor

    proc = Processor(
        size={"shortest_edge": 8 * 28 * 28, "longest_edge": 4096 * 28 * 28}, **CASES["qwen2_5_vl"].preprocessor
    )
    return proc(images=[Image.fromarray(rgb)], return_tensors="pt")


def test_image_prompt_matches_transformers(qwen_vl):
    m = qwen_vl
    model = m.model()
    vision = Vision(model, m.mmproj, n_threads=THREADS)
    assert vision.uses_mrope and vision.frames_per_unit == 2
    cfg = m.torch_model.config
    assert vision.image_token == cfg.image_token_id
    rgb = pattern_image(224, 168)
    prompt = "<|im_start|>user\nDescribe this: " + vision.marker + QUESTION
    chunks = vision.encode(prompt, [rgb])

    # libmtmd's layout: text ending in <|vision_start|>, 8x6 tokens, <|vision_end|> text.
    assert [c.kind for c in chunks] == ["text", "image", "text"]
    image = chunks[1]
    assert (image.n_tokens, image.nx, image.ny, image.n_pos) == (48, 8, 6, 8)
    assert chunks[0].tokens[-1] == cfg.vision_start_token_id and chunks[2].tokens[0] == cfg.vision_end_token_id

    # Ours, chunk by chunk with every position's logits.
    s = model.session()
    ours, ids = [], []
    for c in chunks:
        if not c.is_image:
            ours.append(s.add_tokens(c.tokens, all_logits=True))
            ids += c.tokens
        else:
            ours.append(
                s.add_embeddings(
                    c.embd, positions=c.positions_at(s.next_pos), placeholder=vision.image_token, all_logits=True
                )
            )
            ids += [vision.image_token] * c.n_tokens
    ours = np.concatenate(ours)

    inputs = qwen_pixels(rgb)
    assert inputs["image_grid_thw"].tolist() == [[1, 12, 16]]
    token_type = torch.tensor(
        [[int(t == cfg.image_token_id) for t in ids]]
    )  # without it transformers uses 1-D positions
    with torch.no_grad():
        ref = (
            m.torch_model(
                input_ids=torch.tensor([ids]),
                mm_token_type_ids=token_type,
                pixel_values=inputs["pixel_values"],
                image_grid_thw=inputs["image_grid_thw"],
                use_cache=False,
            )
            .logits[0]
            .float()
            .numpy()
        )
    check_close("qwen2.5-vl image prompt vs transformers", ours, ref, REL_TOL_TRANSFORMERS)

    # Vision.add (the API) gives the same last logits as the chunks by hand.
    s2 = model.session()
    vision.add(s2, prompt, [rgb])
    assert s2.tokens() == ids and s2.next_pos == len(ids) - 48 + 8
    assert rel_l2(s2.logits()[None], ours[-1:]).max() < 1e-6

    # Control: the image at sequential positions is far off, so positions are checked.
    s3 = model.session()
    s3.add_tokens(chunks[0].tokens)
    s3.add_embeddings(image.embd, placeholder=vision.image_token)
    s3.add_tokens(chunks[2].tokens)
    assert rel_l2(s3.logits()[None], ref[-1:]).max() > 20 * REL_TOL_TRANSFORMERS


def test_smolvlm_image_prompt_matches_transformers(smolvlm):
    """SmolVLM2 (llama decoder, sequential positions): libmtmd makes a 64x64
    image one tile and the overview (the same pixels), each wrapped in
    SmolVLM2's marker tokens; transformers gets the same ids with <image>
    where the visual tokens go and the image twice as pixel_values."""
    from PIL import Image
    from transformers.models.smolvlm.image_processing_pil_smolvlm import SmolVLMImageProcessorPil as Processor

    m = smolvlm
    model = m.model()
    vision = Vision(model, m.mmproj, n_threads=THREADS)
    assert not vision.uses_mrope and vision.frames_per_unit == 1
    image_id = model.tokenize("<image>")
    assert len(image_id) == 1 and vision.image_token == image_id[0]
    rgb = pattern_image(*CASES["smolvlm"].image_wh)
    prompt = "<|im_start|>user\nDescribe this: " + vision.marker + QUESTION
    s = model.session()
    chunks = vision.add(s, prompt, [rgb])
    assert [c.kind for c in chunks] == ["text", "image", "text", "image", "text"]
    assert [(c.first_image, c.n_images, c.n_tokens) for c in chunks[1::2]] == [(0, 1, 16), (0, 1, 16)]  # tile, overview
    assert model.detokenize(chunks[2].tokens, special=True) == "\n\n<fake_token_around_image><global-img>"
    ids = [t for c in chunks for t in (c.tokens if not c.is_image else [vision.image_token] * c.n_tokens)]
    assert s.tokens() == ids

    pre = CASES["smolvlm"].preprocessor
    size = {"longest_edge": rgb.shape[0]}
    proc = Processor(
        do_image_splitting=False,
        size=size,
        max_image_size=size,
        image_mean=pre["image_mean"],
        image_std=pre["image_std"],
    )
    pixels = proc(images=[[Image.fromarray(rgb)]], return_tensors="pt")["pixel_values"]
    m.torch_model.config.image_token_id = vision.image_token
    m.torch_model.model.image_token_id = vision.image_token
    with torch.no_grad():
        ref = (
            m.torch_model(input_ids=torch.tensor([ids]), pixel_values=pixels.repeat(1, 2, 1, 1, 1), use_cache=False)
            .logits[0, -1:]
            .float()
            .numpy()
        )
    err = rel_l2(s.logits()[None], ref).max()
    print(f"\nsmolvlm2 image prompt vs transformers: last-position relative L2 error {err:.2e}")
    assert err < REL_TOL_TRANSFORMERS
    # Control: another picture moves transformers' logits far beyond that.
    other = proc(images=[[Image.fromarray(rgb[::-1].copy())]], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        moved = (
            m.torch_model(input_ids=torch.tensor([ids]), pixel_values=other.repeat(1, 2, 1, 1, 1), use_cache=False)
            .logits[0, -1:]
            .float()
            .numpy()
        )
    assert rel_l2(moved, ref).max() > 10 * REL_TOL_TRANSFORMERS


# -- (a') llama.cpp's own mtmd path ------------------------------------------------------------------


def llama_cpp_mtmd_logits(
    text: Path, mmproj: Path, prompt: str, images: List[np.ndarray], add_special: bool = False
) -> np.ndarray:
    """The last logits of llama.cpp + libmtmd (mtmd_helper_eval_chunks) on the
    prompt, through llama-cpp-python; add_special: BOS first, as our session
    puts it on models that want one (Gemma)."""
    import ctypes

    llama_cpp = pytest.importorskip("llama_cpp")
    import llama_cpp.mtmd_cpp as mtmd

    llm = llama_cpp_mtmd.load_llama(
        str(text), n_ctx=512, n_threads=THREADS, n_threads_batch=THREADS, n_batch=512, flash_attn=True
    )
    ctx = llama_cpp_mtmd.init_context(mmproj, llm.model, THREADS)
    chunks = None
    try:
        chunks = llama_cpp_mtmd.tokenize(ctx, prompt, images, add_special=add_special)
        n_past = llama_cpp.llama_pos(0)
        assert mtmd.mtmd_helper_eval_chunks(ctx, llm._ctx.ctx, chunks, 0, 0, 512, True, ctypes.byref(n_past)) == 0
        n_vocab = llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(llm.model))
        return np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1), shape=(n_vocab,)).copy()
    finally:
        if chunks is not None:
            mtmd.mtmd_input_chunks_free(chunks)
        mtmd.mtmd_free(ctx)
        llm.close()


@pytest.mark.parametrize("fixture", ["qwen_vl", "smolvlm", "gemma3_vlm"])
def test_image_prompt_matches_llama_cpp_mtmd(fixture, request):
    m: TinyVLMFiles = request.getfixturevalue(fixture)
    model = m.model(m.llama_cpp_text)
    vision = Vision(model, m.mmproj, n_threads=THREADS)
    rgb = pattern_image(*CASES[m.model_type].image_wh)
    prompt = "<|im_start|>user\nDescribe this: " + vision.marker + QUESTION
    s = model.session()
    chunks = vision.add(s, prompt, [rgb])
    images = [c for c in chunks if c.is_image]
    assert len(images) == CASES[m.model_type].n_images  # SmolVLM2: the overview and one tile
    bos = bool(model.tokenize("", add_special=True))
    ref = llama_cpp_mtmd_logits(m.llama_cpp_text, m.mmproj, prompt, [rgb], add_special=bos)
    err = rel_l2(s.logits()[None], ref[None]).max()
    print(f"\n{m.model_type} vs llama.cpp + libmtmd: last-position relative L2 error {err:.2e}")
    assert err < REL_TOL_LLAMA_CPP


# -- (b) files that do not fit ---------------------------------------------------------------------


def test_mismatched_mmproj_is_a_clear_error(qwen_vl, smolvlm, tiny_llama, demo_model, tmp_path):
    # The same family (qwen2vl), another width: the demo model is 128 wide.
    other = Model(str(demo_model[0]), n_ctx=64, n_threads=THREADS, device="cpu")
    with pytest.raises(hts.InvalidArgumentError, match=r"does not match.*64 wide.*n_embd is 128"):
        Vision(other, qwen_vl.mmproj)
    # Another family is refused by name before its width (test_bad_input: the families as wide).
    # As wide, but SmolLM2's vocabulary lacks the tokens SmolVLM2's images come wrapped in.
    plain = Model(str(tiny_llama.gguf_path), n_ctx=64, n_threads=THREADS, device="cpu")
    with pytest.raises(hts.InvalidArgumentError, match="does not match.*not in the model's vocabulary"):
        Vision(plain, smolvlm.mmproj)
    model = qwen_vl.model()
    with pytest.raises(hts.InvalidModelFileError, match="not an mmproj"):
        Vision(model, qwen_vl.text)  # the arguments swapped
    with pytest.raises(hts.ModelNotFoundError):
        Vision(model, tmp_path / "missing.gguf")
    vision = Vision(model, qwen_vl.mmproj)
    rgb = pattern_image(224, 168)
    with pytest.raises(hts.InvalidArgumentError, match="2 image markers.*1 image"):
        vision.encode(vision.marker * 2, [rgb])
    with pytest.raises(hts.InvalidArgumentError, match=r"\(height, width, 3\) uint8"):
        vision.encode(vision.marker, [rgb[..., :2]])
    with pytest.raises(hts.InvalidArgumentError, match="stopped"):
        vision.encode(vision.marker, [rgb], progress=lambda done, total: False)
    with pytest.raises(ZeroDivisionError):  # the callback's own exception comes through
        vision.encode(vision.marker, [rgb], progress=lambda done, total: 1 / 0)


# -- (c) video frames --------------------------------------------------------------------------------


def qwen_pair_reference(m: TinyVLMFiles, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """transformers' vision tower on frames a, b as one temporal patch (a
    2-frame video): each image's patches hold its frame twice (temporal patch
    size 2); the video's take a in the first slot and b in the second."""
    pa, pb = qwen_pixels(a), qwen_pixels(b)
    shape = (-1, 3, 2, 14, 14)  # patch rows: (channel, time, y, x)
    video = pa["pixel_values"].reshape(shape).clone()
    video[:, :, 1] = pb["pixel_values"].reshape(shape)[:, :, 1]
    with torch.no_grad():
        out = m.torch_model.model.visual(video.reshape(len(video), -1), grid_thw=pa["image_grid_thw"])
    return out.pooler_output.float().numpy()


def test_frames_merge_in_pairs(qwen_vl):
    m = qwen_vl
    vision = Vision(m.model(), m.mmproj, n_threads=THREADS)
    clip = frames(4)
    progress = []
    merged = [c for c in vision.encode_frames(clip, progress=lambda d, t: progress.append((d, t))) if c.is_image]
    assert [(c.first_image, c.n_images, c.n_tokens, c.n_pos) for c in merged] == [(0, 2, 48, 8), (2, 2, 48, 8)]
    assert progress[-1] == (2, 2)
    assert (merged[0].positions[0] == 0).all()  # one temporal unit: one time position
    # Each pair is the two frames through the tower as one temporal patch
    # (measured 2.9e-4, as single images in test_convert_mmproj; bound 1e-3).
    for c in merged:
        ref = qwen_pair_reference(m, clip[c.first_image], clip[c.first_image + 1])
        assert rel_l2(c.embd, ref).max() < 1e-3, "a merged pair differs from transformers' 2-frame video"
    # Not frames: four images, each on its own.
    single = [c for c in vision.encode(vision.marker * 4, clip) if c.is_image]
    assert [(c.first_image, c.n_images) for c in single] == [(0, 1), (1, 1), (2, 1), (3, 1)]
    assert rel_l2(single[0].embd, merged[0].embd).max() > 1e-2


def test_frames_as_a_sparse_span(qwen_vl):
    """Four frames (two pairs, timestamps between) as one sparse span with a
    segment per pair: keep 1 with every head full gives the dense logits; keep
    0.5 keeps one whole pair and its delimiters."""
    m = qwen_vl
    model = m.model()
    vision = Vision(model, m.mmproj, n_threads=THREADS)
    mk = vision.marker
    prompt = "<|im_start|>user\n<0.0 seconds>" + mk + mk + "<1.0 seconds>" + mk + mk
    clip = frames(4)
    question = "What happens in the video?<|im_end|>\n<|im_start|>assistant\n"

    chunks = vision.encode(prompt, clip, frames=True)  # encoded once, added to each session

    def run(config):
        s = model.session(sparse=config)
        vision.add_chunks(s, chunks, sparse=True)
        s.add_text(question)
        return s, s.logits()

    s, full = run(SparseConfig(keep_ratio=1.0, full_head_ratio=1.0, select_layer=1, prune_layer=3))
    # The span: pair 0 (48), "<|vision_end|><1.0 seconds><|vision_start|>", pair 1 (48).
    before, pair0, between, pair1, after = chunks
    assert between.tokens[0] == m.torch_model.config.vision_end_token_id
    n_span = 96 + len(between.tokens)
    assert s.stats().n_sparse == n_span

    # Bit for bit what a dense session computes from the same batches: the
    # span as rows (the text's own embedding rows) at the positions libmtmd
    # and the text give them, the question after it.
    pos = len(before.tokens)
    text_pos = np.arange(pos + 8, pos + 8 + len(between.tokens))
    table = m.torch_model.get_input_embeddings().weight.detach().numpy()  # the f32 GGUF's token_embd
    rows = np.concatenate([pair0.embd, table[between.tokens], pair1.embd])
    positions = np.concatenate(
        [pair0.positions_at(pos), np.tile(text_pos, (3, 1)), pair1.positions_at(text_pos[-1] + 1)], axis=1
    )
    same = model.session()
    same.add_tokens(before.tokens)
    same.add_embeddings(rows, positions=positions)
    same.add_tokens(after.tokens + model.tokenize(question))
    assert np.array_equal(full, same.logits())
    # And within batching noise of the chunks added one by one (measured 1.1e-3).
    dense = model.session()
    vision.add_chunks(dense, chunks)
    dense.add_text(question)
    assert rel_l2(full[None], dense.logits()[None]).max() < 3e-3

    s, _ = run(SparseConfig(keep_ratio=0.5, select_layer=1, prune_layer=1))
    kept = s.selection["kept_in_span"]
    assert kept in (list(range(0, 48)), list(range(48, n_span)))  # a whole pair with its delimiters
    assert s.stats().n_kept == len(kept)
