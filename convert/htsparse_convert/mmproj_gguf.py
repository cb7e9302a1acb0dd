"""Hugging Face vision towers -> llama.cpp mmproj GGUF files (read by libmtmd).

    from htsparse_convert.mmproj_gguf import write_mmproj_gguf

    write_mmproj_gguf("mmproj.gguf", tensors, config, preprocessor={"image_mean": ..., "image_std": ...})

`tensors` maps Hugging Face parameter names to arrays (a model's state_dict or
a checkpoint's safetensors), `config` is the HF config (dict or transformers
object), `preprocessor` the dict of preprocessor_config.json. Only the vision
tower and its projector are written; the decoder is write_text_gguf's job.

libmtmd's clip.cpp reads the result, so upstream convert_hf_to_gguf.py
(MmprojModel and its Qwen2VLVisionModel / Qwen3VLVisionModel / SmolVLMModel /
Gemma3VisionModel subclasses) decides every choice here: tensor names, the
clip.* keys and their types, the split of Qwen2's fused QKV (Qwen3-VL's stays
fused) and of the 3D patch convolution into two 2D kernels, the numbering of
Qwen3-VL's DeepStack mergers by the layer they tap, which tensors stay f32
(Gemma 3's input projection is f16 in every file type), Gemma 3's 1 + w
soft-embedding norm and its pooling factor (written only when not clip.cpp's 4). Where clip.cpp
hard-codes a value that a config could set otherwise (Qwen's 2x2 merge, 2.5-VL's
112-pixel window, Qwen3-VL's rope base), a config that differs is refused
instead of written into a file that would compute something else.

One value differs from upstream on purpose: Qwen3-VL's
clip.vision.attention.layer_norm_epsilon. Upstream writes the text decoder's
rms_norm_eps there, but every LayerNorm of the tower (blocks, merger,
DeepStack mergers) is built with eps 1e-6 in transformers, whatever the
decoder's is; this writes 1e-6. The two agree on every released Qwen3-VL
checkpoint (decoder rms_norm_eps 1e-6).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import gguf
import numpy as np

from .atomic import write_gguf
from .text_gguf import OUT_TYPES, config_dict, encode_tensor

PathLike = Union[str, "os.PathLike[str]"]

_K = gguf.Keys.ClipVision
# Qwen2.5-VL's vision_config.tokens_per_second, which upstream's mmproj lacks.
TOKENS_PER_SECOND_KEY = "htsparse.vision.tokens_per_second"
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# --------------------------------------------------------------------------------------
# Architectures
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Split:
    """One HF tensor written as several GGUF tensors: equal chunks along `axis`
    (squeezed away when `squeeze`, for the temporal axis of a 3D conv)."""

    names: Tuple[str, ...]
    axis: int = 0
    squeeze: bool = False


Target = Union[str, Split]


@dataclass(frozen=True)
class VisionHParams:
    """What the clip.vision.* keys say, read from an HF config."""

    n_embd: int
    n_ff: int
    n_layer: int
    n_head: int
    patch_size: int
    image_size: int
    projection_dim: int  # the text decoder's width
    eps: float
    image_mean: Tuple[float, ...]
    image_std: Tuple[float, ...]
    # Per-architecture keys, in upstream's types: bool -> bool, int -> uint32,
    # a tuple of bools -> an array of bool.
    extra: Tuple[Tuple[str, Union[bool, int, Tuple[bool, ...]]], ...] = ()
    # Qwen3-VL: the tower layer the i-th DeepStack merger taps
    # (deepstack_visual_indexes), in the order of the HF merger list.
    deepstack_layers: Tuple[int, ...] = ()


@dataclass(frozen=True)
class VisionSpec:
    """How one Hugging Face VLM's vision side becomes one clip projector."""

    projector_type: str
    # Parameter names, after an optional leading "model." (transformers 5 keeps
    # the tower at model.visual. in memory, checkpoints save it at visual.):
    # those starting with `prefixes` belong here, the rest is the decoder.
    prefixes: Tuple[str, ...]
    block_prefix: str  # then "{N}." and a key of block_tensors
    global_tensors: Mapping[str, Target]
    block_tensors: Mapping[str, Target]
    hparams: Callable[[Dict[str, Any], Dict[str, Any], Mapping[str, Any]], VisionHParams]
    # GGUF name fragments that stay f32 whatever the file type.
    f32_fragments: Tuple[str, ...] = ("v.position_embd.",)
    # Qwen3-VL's DeepStack mergers: "{prefix}{i}." and a key of `tensors`,
    # written as "v.deepstack.{layer}." + the target, where layer is
    # hparams.deepstack_layers[i] (clip.cpp looks a merger up by the layer
    # whose output it reads, not by its place in the list).
    deepstack_prefix: str = ""
    deepstack_tensors: Mapping[str, Target] = field(default_factory=dict)
    # HF biases clip.cpp cannot do without (its graph adds them unchecked),
    # checked like the weights; the other biases are optional there.
    required_biases: Tuple[str, ...] = ()
    # GGUF name fragments that are f16 whatever the file type (f32 included).
    f16_fragments: Tuple[str, ...] = ()
    # GGUF names written as 1 + w: HF's Gemma RMSNorm scales by 1 + weight, clip.cpp's by the weight.
    plus_one: Tuple[str, ...] = ()
    # (old, new) name prefixes read as one: the hub's files and transformers 5's save differ.
    aliases: Tuple[Tuple[str, str], ...] = ()
    # Parameters that are not part of the mmproj (a pooling head clip.cpp never runs).
    skipped: Tuple[str, ...] = ()


def _names(target: Target) -> Tuple[str, ...]:
    return target.names if isinstance(target, Split) else (target,)


_QWEN_GLOBAL: Dict[str, Target] = {
    # clip.cpp adds two 2D convolutions, one per frame of a temporal pair.
    "visual.patch_embed.proj.weight": Split(("v.patch_embd.weight", "v.patch_embd.weight.1"), axis=2, squeeze=True),
    "visual.merger.ln_q.weight": "v.post_ln.weight",
    "visual.merger.ln_q.bias": "v.post_ln.bias",
    "visual.merger.mlp.0.weight": "mm.0.weight",
    "visual.merger.mlp.0.bias": "mm.0.bias",
    "visual.merger.mlp.2.weight": "mm.2.weight",
    "visual.merger.mlp.2.bias": "mm.2.bias",
}
_QWEN_BLOCK: Dict[str, Target] = {
    "norm1.weight": "ln1.weight",
    "norm1.bias": "ln1.bias",  # Qwen2-VL's LayerNorm; 2.5-VL's RMSNorm has none
    "norm2.weight": "ln2.weight",
    "norm2.bias": "ln2.bias",
    "attn.qkv.weight": Split(("attn_q.weight", "attn_k.weight", "attn_v.weight")),
    "attn.qkv.bias": Split(("attn_q.bias", "attn_k.bias", "attn_v.bias")),
    "attn.proj.weight": "attn_out.weight",
    "attn.proj.bias": "attn_out.bias",
}
_QWEN2_MLP: Dict[str, Target] = {
    "mlp.fc1.weight": "ffn_up.weight",
    "mlp.fc1.bias": "ffn_up.bias",
    "mlp.fc2.weight": "ffn_down.weight",
    "mlp.fc2.bias": "ffn_down.bias",
}
_QWEN25_MLP: Dict[str, Target] = {
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.gate_proj.bias": "ffn_gate.bias",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.up_proj.bias": "ffn_up.bias",
    "mlp.down_proj.weight": "ffn_down.weight",
    "mlp.down_proj.bias": "ffn_down.bias",
}

# Qwen3-VL: the same patch split, a bias on the patch convolution, learned
# position embeddings (clip.cpp resamples the square grid to each image), the
# QKV kept fused (clip.cpp's qwen3vl graph slices it), and the merger's
# linear_fc1/linear_fc2 at Qwen2's mm.0/mm.2.
_QWEN3_GLOBAL: Dict[str, Target] = {
    "visual.patch_embed.proj.weight": _QWEN_GLOBAL["visual.patch_embed.proj.weight"],
    "visual.patch_embed.proj.bias": "v.patch_embd.bias",
    "visual.pos_embed.weight": "v.position_embd.weight",
    "visual.merger.norm.weight": "v.post_ln.weight",
    "visual.merger.norm.bias": "v.post_ln.bias",
    "visual.merger.linear_fc1.weight": "mm.0.weight",
    "visual.merger.linear_fc1.bias": "mm.0.bias",
    "visual.merger.linear_fc2.weight": "mm.2.weight",
    "visual.merger.linear_fc2.bias": "mm.2.bias",
}
_QWEN3_BLOCK: Dict[str, Target] = {
    "norm1.weight": "ln1.weight",
    "norm1.bias": "ln1.bias",
    "norm2.weight": "ln2.weight",
    "norm2.bias": "ln2.bias",
    "attn.qkv.weight": "attn_qkv.weight",
    "attn.qkv.bias": "attn_qkv.bias",
    "attn.proj.weight": "attn_out.weight",
    "attn.proj.bias": "attn_out.bias",
    "mlp.linear_fc1.weight": "ffn_up.weight",
    "mlp.linear_fc1.bias": "ffn_up.bias",
    "mlp.linear_fc2.weight": "ffn_down.weight",
    "mlp.linear_fc2.bias": "ffn_down.bias",
}
_QWEN3_DEEPSTACK: Dict[str, Target] = {
    "norm.weight": "norm.weight",
    "norm.bias": "norm.bias",
    "linear_fc1.weight": "fc1.weight",
    "linear_fc1.bias": "fc1.bias",
    "linear_fc2.weight": "fc2.weight",
    "linear_fc2.bias": "fc2.bias",
}

_IDEFICS3_GLOBAL: Dict[str, Target] = {
    "vision_model.embeddings.patch_embedding.weight": "v.patch_embd.weight",
    "vision_model.embeddings.patch_embedding.bias": "v.patch_embd.bias",
    "vision_model.embeddings.position_embedding.weight": "v.position_embd.weight",
    "vision_model.post_layernorm.weight": "v.post_ln.weight",
    "vision_model.post_layernorm.bias": "v.post_ln.bias",
    "connector.modality_projection.proj.weight": "mm.model.fc.weight",
}
_IDEFICS3_BLOCK: Dict[str, Target] = {
    "layer_norm1.weight": "ln1.weight",
    "layer_norm1.bias": "ln1.bias",
    "layer_norm2.weight": "ln2.weight",
    "layer_norm2.bias": "ln2.bias",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.out_proj.weight": "attn_out.weight",
    "self_attn.out_proj.bias": "attn_out.bias",
    "mlp.fc1.weight": "ffn_up.weight",
    "mlp.fc1.bias": "ffn_up.bias",
    "mlp.fc2.weight": "ffn_down.weight",
    "mlp.fc2.bias": "ffn_down.bias",
}


# --------------------------------------------------------------------------------------
# Hyper-parameters
# --------------------------------------------------------------------------------------


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def _int(vcfg: Mapping[str, Any], key: str) -> int:
    _require(key in vcfg, f"vision_config has no {key!r}")
    return int(vcfg[key])


def _text_width(cfg: Mapping[str, Any]) -> int:
    # As upstream: text_config over the top level (older checkpoints are flat).
    width = {**cfg, **config_dict(cfg.get("text_config") or {})}.get("hidden_size")
    _require(bool(width), "the config names no text hidden_size (the projector's output width)")
    return int(width)


def _mean_std(spec_mean: Sequence[float], spec_std: Sequence[float], pre: Mapping[str, Any]) -> Tuple[tuple, tuple]:
    mean = tuple(float(v) for v in pre.get("image_mean", spec_mean))
    std = tuple(float(v) for v in pre.get("image_std", spec_std))
    _require(len(mean) == 3 and len(std) == 3, f"image_mean/image_std need 3 values each, got {mean} / {std}")
    return mean, std


def _check_mlp(n_embd: int, n_ff: int) -> None:
    # clip.cpp swaps ffn_up/ffn_down of these projector types when ffn_down's
    # input is n_embd wide (a fix for old exports): a square MLP would be read
    # backwards.
    _require(n_ff != n_embd, f"clip.cpp cannot load a vision MLP as wide as the tower ({n_ff}); it reads it swapped")


def _check_qwen_common(vcfg: Mapping[str, Any], n_embd: int, n_ff: int, swaps_square_mlp: bool = True) -> None:
    # clip.cpp splits the 3D conv into exactly two frames and merges 2x2 patches
    # with a fixed stride (clip_n_output_tokens_x divides by 2).
    _require(vcfg.get("temporal_patch_size", 2) == 2, "clip.cpp supports temporal_patch_size 2 only")
    _require(vcfg.get("spatial_merge_size", 2) == 2, "clip.cpp supports spatial_merge_size 2 only")
    _require(vcfg.get("in_channels", 3) == 3, "clip.cpp supports RGB (in_channels 3) only")
    if swaps_square_mlp:  # qwen3vl_merger is not among the types clip.cpp swaps
        _check_mlp(n_embd, n_ff)


def _qwen2vl_hparams(cfg: Dict[str, Any], vcfg: Dict[str, Any], pre: Mapping[str, Any]) -> VisionHParams:
    n_embd = _int(vcfg, "embed_dim")
    n_ff = int(n_embd * float(vcfg.get("mlp_ratio", 4)))
    _check_qwen_common(vcfg, n_embd, n_ff)
    act = vcfg.get("hidden_act", "quick_gelu")
    _require(act == "quick_gelu", f"clip.cpp runs Qwen2-VL's MLP with quick_gelu, the config says {act!r}")
    mean, std = _mean_std(OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, pre)
    return VisionHParams(
        n_embd=n_embd,
        # As upstream: Qwen2-VL's vision `hidden_size` is the merger's output
        # width, which upstream writes as feed_forward_length. clip.cpp sizes
        # the MLP from its tensors, so the value is unused; kept for parity.
        n_ff=_int(vcfg, "hidden_size"),
        n_layer=_int(vcfg, "depth"),
        n_head=_int(vcfg, "num_heads"),
        patch_size=_int(vcfg, "patch_size"),
        image_size=int(vcfg.get("image_size", 560)),
        projection_dim=_text_width(cfg),
        # HF builds every vision norm with eps 1e-6. Upstream writes the
        # top-level rms_norm_eps (the decoder's) when a config has one: 1e-6
        # in the released checkpoints too.
        eps=1e-6,
        image_mean=mean,
        image_std=std,
    )


def _wa_pattern(vcfg: Mapping[str, Any]) -> int:
    """clip.vision.n_wa_pattern: clip.cpp gives layer il full attention when
    (il + 1) % n == 0, so the full layers must be exactly n-1, 2n-1, ..."""
    full = [int(i) for i in vcfg.get("fullatt_block_indexes") or []]
    _require(bool(full), "Qwen2.5-VL needs fullatt_block_indexes")
    n = full[0] + 1
    depth = _int(vcfg, "depth")
    expected = [il for il in range(depth) if (il + 1) % n == 0]
    _require(
        full == expected,
        f"fullatt_block_indexes {full} is not every {n}th layer of {depth} ({expected}); clip.cpp cannot express it",
    )
    return n


def _qwen25vl_hparams(cfg: Dict[str, Any], vcfg: Dict[str, Any], pre: Mapping[str, Any]) -> VisionHParams:
    n_embd, n_ff = _int(vcfg, "hidden_size"), _int(vcfg, "intermediate_size")
    _check_qwen_common(vcfg, n_embd, n_ff)
    act = vcfg.get("hidden_act", "silu")
    _require(act == "silu", f"clip.cpp runs Qwen2.5-VL's MLP with silu, the config says {act!r}")
    # clip.cpp does not read the window size for qwen2.5vl: it is 112 pixels.
    _require(int(vcfg.get("window_size", 112)) == 112, "clip.cpp supports a window_size of 112 only")
    mean, std = _mean_std(OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, pre)
    return VisionHParams(
        n_embd=n_embd,
        n_ff=n_ff,
        n_layer=_int(vcfg, "depth"),
        n_head=_int(vcfg, "num_heads"),
        patch_size=_int(vcfg, "patch_size"),
        image_size=int(vcfg.get("image_size", 560)),
        projection_dim=_text_width(cfg),
        eps=1e-6,  # as Qwen2-VL above
        image_mean=mean,
        image_std=std,
        extra=(
            (_K.USE_SILU, True),
            (_K.N_WA_PATTERN, _wa_pattern(vcfg)),
            # Ours, not clip.cpp's: video M-RoPE time steps (runtime/src/video_layout.h). Default as transformers'.
            (TOKENS_PER_SECOND_KEY, int(vcfg.get("tokens_per_second", 4))),
        ),
    )


def _deepstack_layers(vcfg: Mapping[str, Any], depth: int) -> Tuple[int, ...]:
    """deepstack_visual_indexes, checked: distinct tower layers (a layer
    tapped twice would write two mergers under one v.deepstack.N)."""
    layers = tuple(int(il) for il in vcfg.get("deepstack_visual_indexes") or ())
    _require(
        len(set(layers)) == len(layers) and all(0 <= il < depth for il in layers),
        f"deepstack_visual_indexes {list(layers)} must be distinct layers of the {depth}-layer tower",
    )
    return layers


def _qwen3vl_hparams(cfg: Dict[str, Any], vcfg: Dict[str, Any], pre: Mapping[str, Any]) -> VisionHParams:
    n_embd, n_ff, depth = _int(vcfg, "hidden_size"), _int(vcfg, "intermediate_size"), _int(vcfg, "depth")
    patch = vcfg.get("patch_size")
    # transformers allows a [h, w] patch; clip.cpp has one square size.
    _require(isinstance(patch, int), f"clip.cpp supports a square (int) patch_size only, the config says {patch!r}")
    _check_qwen_common(vcfg, n_embd, n_ff, swaps_square_mlp=False)
    act = vcfg.get("hidden_act", "gelu_pytorch_tanh")
    _require(act in ("gelu_pytorch_tanh", "gelu"), f"clip.cpp runs Qwen3-VL's MLP with gelu, the config says {act!r}")
    # clip.cpp's qwen3vl graph hard-codes the vision rope's base.
    theta = float((vcfg.get("rope_parameters") or {}).get("rope_theta", 10000.0))
    _require(theta == 10000.0, f"clip.cpp runs Qwen3-VL's vision rope with base 10000, the config says {theta}")
    # clip.cpp reads the learned positions as a square grid (sqrt of the rows).
    n_pos = _int(vcfg, "num_position_embeddings")
    _require(round(n_pos**0.5) ** 2 == n_pos, f"num_position_embeddings {n_pos} is not a square grid as clip.cpp needs")
    width = _text_width(cfg)
    out = int(vcfg.get("out_hidden_size", width))
    _require(out == width, f"the merger's out_hidden_size {out} is not the text model's hidden_size {width}")
    taps = _deepstack_layers(vcfg, depth)
    # Every released Qwen3-VL preprocessor_config.json says 0.5 / 0.5.
    mean, std = _mean_std((0.5, 0.5, 0.5), (0.5, 0.5, 0.5), pre)
    return VisionHParams(
        n_embd=n_embd,
        n_ff=n_ff,
        n_layer=depth,
        n_head=_int(vcfg, "num_heads"),
        patch_size=patch,
        # As upstream: the config's image_size, else the side of the learned
        # position grid in pixels.
        image_size=int(vcfg["image_size"]) if "image_size" in vcfg else int(n_pos**0.5 * patch),
        projection_dim=width,
        # transformers builds all of the tower's LayerNorms with eps 1e-6;
        # upstream writes the decoder's rms_norm_eps (see the module docstring).
        eps=1e-6,
        image_mean=mean,
        image_std=std,
        extra=(
            (_K.USE_GELU, True),
            (_K.SPATIAL_MERGE_SIZE, 2),  # checked above
            # One flag per tower layer: whether a DeepStack merger taps it.
            (_K.IS_DEEPSTACK_LAYERS, tuple(il in taps for il in range(depth))),
        ),
        deepstack_layers=taps,
    )


# SmolVLM2's config.json leaves some vision sizes out. Upstream reads the
# config through transformers' AutoConfig, which fills in these defaults
# (SmolVLMVisionConfig), so a raw config.json dict gets them here too.
_IDEFICS3_DEFAULTS = dict(
    hidden_size=1152,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=16,
    image_size=224,
    patch_size=32,
    layer_norm_eps=1e-6,
    hidden_act="gelu_pytorch_tanh",
)


def _siglip_hparams(
    cfg: Dict[str, Any], vcfg: Dict[str, Any], pre: Mapping[str, Any], extra: Tuple[Tuple[str, Any], ...]
) -> VisionHParams:
    """A SigLIP tower's keys (SmolVLM2's and Gemma 3's; vcfg with SmolVLM's defaults filled in), with the
    projector's `extra` ones."""
    n_embd, n_ff = _int(vcfg, "hidden_size"), _int(vcfg, "intermediate_size")
    _check_mlp(n_embd, n_ff)
    mean, std = _mean_std((0.5, 0.5, 0.5), (0.5, 0.5, 0.5), pre)
    return VisionHParams(
        n_embd=n_embd,
        n_ff=n_ff,
        n_layer=_int(vcfg, "num_hidden_layers"),
        n_head=_int(vcfg, "num_attention_heads"),
        patch_size=_int(vcfg, "patch_size"),
        image_size=_int(vcfg, "image_size"),
        projection_dim=_text_width(cfg),
        eps=float(vcfg["layer_norm_eps"]),
        image_mean=mean,
        image_std=std,
        extra=extra,
    )


def _idefics3_hparams(cfg: Dict[str, Any], vcfg: Dict[str, Any], pre: Mapping[str, Any]) -> VisionHParams:
    vcfg = {**_IDEFICS3_DEFAULTS, **vcfg}
    act = vcfg["hidden_act"]
    _require(act in ("gelu_pytorch_tanh", "gelu"), f"clip.cpp runs idefics3's MLP with gelu, the config says {act!r}")
    extra = (
        (_K.Projector.SCALE_FACTOR, int(cfg.get("scale_factor", 2))),
        (_K.USE_GELU, True),
        # The longest edge libmtmd resizes to before cutting tiles.
        (_K.PREPROC_IMAGE_SIZE, int((pre.get("size") or {}).get("longest_edge", vcfg["image_size"]))),
    )
    return _siglip_hparams(cfg, vcfg, pre, extra)


# Gemma 3's SigLIP tower as SmolVLM's, under vision_tower.; its projector
# pools each side of the patch grid by the factor that leaves
# mm_tokens_per_image tokens, then RMS-norms and projects them.
_GEMMA3_GLOBAL: Dict[str, Target] = {
    **{"vision_tower." + k.partition(".")[2]: v for k, v in _IDEFICS3_GLOBAL.items() if k.startswith("vision_model.")},
    "multi_modal_projector.mm_input_projection_weight": "mm.input_projection.weight",
    "multi_modal_projector.mm_soft_emb_norm.weight": "mm.soft_emb_norm.weight",
}
GEMMA3_POOL = 4  # clip.cpp's default n_merge for Gemma 3: written only when another


def _gemma3_hparams(cfg: Dict[str, Any], vcfg: Dict[str, Any], pre: Mapping[str, Any]) -> VisionHParams:
    vcfg = {**_IDEFICS3_DEFAULTS, **vcfg}
    # Upstream takes the token count from the preprocessor (default 256); the
    # model's own mm_tokens_per_image must agree or the file pools wrongly.
    n_tokens = int(pre.get("image_seq_length", cfg.get("mm_tokens_per_image", 256)))
    _require(
        n_tokens == int(cfg.get("mm_tokens_per_image", n_tokens)),
        f"preprocessor image_seq_length {n_tokens} differs from the model's mm_tokens_per_image "
        f"{cfg.get('mm_tokens_per_image')}",
    )
    side = int(round(n_tokens**0.5))
    patches = _int(vcfg, "image_size") // _int(vcfg, "patch_size")
    _require(
        side * side == n_tokens and side > 0 and patches % side == 0,
        f"clip.cpp pools a square patch grid ({patches} per side) to a square of tokens; "
        f"{n_tokens} tokens per image is not one that divides it",
    )
    pool = patches // side
    extra = ((_K.USE_GELU, True),) + (((_K.Projector.SCALE_FACTOR, pool),) if pool != GEMMA3_POOL else ())
    return _siglip_hparams(cfg, vcfg, pre, extra)


_QWEN2VL = VisionSpec(
    gguf.VisionProjectorType.QWEN2VL,
    ("visual.",),
    "visual.blocks.",
    _QWEN_GLOBAL,
    {**_QWEN_BLOCK, **_QWEN2_MLP},
    _qwen2vl_hparams,
)
_QWEN25VL = VisionSpec(
    gguf.VisionProjectorType.QWEN25VL,
    ("visual.",),
    "visual.blocks.",
    _QWEN_GLOBAL,
    {**_QWEN_BLOCK, **_QWEN25_MLP},
    _qwen25vl_hparams,
)
_QWEN3VL = VisionSpec(
    gguf.VisionProjectorType.QWEN3VL,
    ("visual.",),
    "visual.blocks.",
    _QWEN3_GLOBAL,
    _QWEN3_BLOCK,
    _qwen3vl_hparams,
    deepstack_prefix="visual.deepstack_merger_list.",
    deepstack_tensors=_QWEN3_DEEPSTACK,
    # clip.cpp's qwen3vl graph asserts the patch bias and adds the QKV bias.
    required_biases=("visual.patch_embed.proj.bias", "attn.qkv.bias"),
)
# SmolVLM's embeddings stay f32 in every file type (upstream SmolVLMModel).
_IDEFICS3 = VisionSpec(
    gguf.VisionProjectorType.IDEFICS3,
    ("vision_model.", "connector."),
    "vision_model.encoder.layers.",
    _IDEFICS3_GLOBAL,
    _IDEFICS3_BLOCK,
    _idefics3_hparams,
    f32_fragments=("v.patch_embd.", "v.position_embd."),
)

# Upstream's Gemma3VisionModel: embeddings f32, the input projection f16 in every file type.
_GEMMA3 = VisionSpec(
    gguf.VisionProjectorType.GEMMA3,
    ("vision_tower.", "multi_modal_projector."),
    "vision_tower.encoder.layers.",
    _GEMMA3_GLOBAL,
    _IDEFICS3_BLOCK,
    _gemma3_hparams,
    f32_fragments=("v.patch_embd.", "v.position_embd."),
    f16_fragments=("mm.input_projection.",),
    plus_one=("mm.soft_emb_norm.weight",),
    aliases=(("vision_tower.vision_model.", "vision_tower."),),
    skipped=("vision_tower.head.",),
)

# Keyed by the config's top-level model_type.
VISION_ARCHITECTURES: Dict[str, VisionSpec] = {
    "qwen2_vl": _QWEN2VL,
    "qwen2_5_vl": _QWEN25VL,
    "qwen3_vl": _QWEN3VL,
    "smolvlm": _IDEFICS3,
    "idefics3": _IDEFICS3,
    "gemma3": _GEMMA3,
}


def vision_spec(cfg: Mapping[str, Any]) -> VisionSpec:
    """The VisionSpec for an HF config dict, by its model_type."""
    model_type = cfg.get("model_type")
    if model_type not in VISION_ARCHITECTURES:
        raise ValueError(
            f"unsupported model type {model_type!r} for an mmproj; supported: {sorted(VISION_ARCHITECTURES)}"
        )
    return VISION_ARCHITECTURES[model_type]


def vision_hparams(config: Any, preprocessor: Optional[Mapping[str, Any]] = None) -> VisionHParams:
    """Reads the vision hyper-parameters of an HF config (dict or object)."""
    cfg = config_dict(config)
    vcfg = cfg.get("vision_config")
    _require(vcfg is not None, f"the {cfg.get('model_type')!r} config has no vision_config")
    pre = preprocessor or {}
    hp = vision_spec(cfg).hparams(cfg, config_dict(vcfg), pre)
    # libmtmd takes the patch size from the file: a preprocessor that cuts
    # other patches than the weights were trained on is a broken checkpoint.
    _require(
        int(pre.get("patch_size", hp.patch_size)) == hp.patch_size,
        f"preprocessor patch_size {pre.get('patch_size')} differs from the vision tower's {hp.patch_size}",
    )
    return hp


def add_vision_hparams(writer: gguf.GGUFWriter, spec: VisionSpec, hp: VisionHParams) -> None:
    """Writes the clip.* keys clip.cpp reads, with upstream's types."""
    writer.add_type(gguf.GGUFType.MMPROJ)
    writer.add_clip_has_vision_encoder(True)
    writer.add_vision_projection_dim(hp.projection_dim)
    writer.add_vision_image_size(hp.image_size)
    writer.add_vision_patch_size(hp.patch_size)
    writer.add_vision_embedding_length(hp.n_embd)
    writer.add_vision_feed_forward_length(hp.n_ff)
    writer.add_vision_block_count(hp.n_layer)
    writer.add_vision_head_count(hp.n_head)
    writer.add_vision_image_mean(list(hp.image_mean))
    writer.add_vision_image_std(list(hp.image_std))
    writer.add_clip_projector_type(spec.projector_type)
    writer.add_vision_attention_layernorm_eps(hp.eps)
    for key, value in hp.extra:
        if isinstance(value, tuple):
            writer.add_array(key, list(value))
        elif isinstance(value, bool):
            writer.add_bool(key, value)
        else:
            writer.add_uint32(key, value)


# --------------------------------------------------------------------------------------
# Tensors
# --------------------------------------------------------------------------------------


def _numbered(target: Target, prefix: str) -> Target:
    """`target` under a numbered GGUF group, e.g. "v.blk.3."."""
    names = tuple(prefix + n for n in _names(target))
    return Split(names, target.axis, target.squeeze) if isinstance(target, Split) else names[0]


def _list_entry(name: str, prefix: str, tensors: Mapping[str, Target]) -> Optional[Tuple[int, Target]]:
    """(i, target) for "{prefix}{i}.{key}" with a known key, else None."""
    if not (prefix and name.startswith(prefix)):
        return None
    index, _, rest = name[len(prefix) :].partition(".")
    target = tensors.get(rest)
    return (int(index), target) if index.isdigit() and target is not None else None


def mmproj_target(spec: VisionSpec, hp: VisionHParams, hf_name: str) -> Optional[Target]:
    """Where one HF parameter goes: a GGUF name, a Split, or None for a decoder
    parameter. Raises on a vision parameter we do not know, or a DeepStack
    merger past those deepstack_visual_indexes names."""
    name = hf_name[len("model.") :] if hf_name.startswith("model.") else hf_name
    for old, new in spec.aliases:
        name = new + name[len(old) :] if name.startswith(old) else name
    if not name.startswith(spec.prefixes) or name.startswith(spec.skipped):
        return None
    if name in spec.global_tensors:
        return spec.global_tensors[name]
    block = _list_entry(name, spec.block_prefix, spec.block_tensors)
    if block is not None:
        return _numbered(block[1], f"v.blk.{block[0]}.")
    merger = _list_entry(name, spec.deepstack_prefix, spec.deepstack_tensors)
    if merger is not None and merger[0] < len(hp.deepstack_layers):
        return _numbered(merger[1], f"v.deepstack.{hp.deepstack_layers[merger[0]]}.")
    raise ValueError(f"cannot map vision tensor {hf_name!r} to a {spec.projector_type} mmproj name")


def _split(data: np.ndarray, split: Split, hf_name: str) -> List[np.ndarray]:
    n = len(split.names)
    if data.ndim <= split.axis or data.shape[split.axis] % n:
        raise ValueError(f"{hf_name}: shape {data.shape} does not split in {n} along axis {split.axis}")
    if split.squeeze and data.shape[split.axis] != n:
        raise ValueError(f"{hf_name}: expected {n} frames along axis {split.axis}, shape is {data.shape}")
    parts = np.split(data, n, axis=split.axis)
    return [p.squeeze(split.axis) if split.squeeze else p for p in parts]


def mmproj_tensors(spec: VisionSpec, hp: VisionHParams, tensors: Mapping[str, Any]) -> Iterator[Tuple[str, np.ndarray]]:
    """Yields (gguf_name, f32 array) for every vision tensor, in GGUF naming and
    HF layout (the writer reverses the axes into ggml order)."""
    seen: Dict[str, str] = {}
    for hf_name in tensors:  # names first: a lazy mapping loads only the vision tensors
        target = mmproj_target(spec, hp, hf_name)
        if target is None:
            continue
        data = np.asarray(tensors[hf_name], dtype=np.float32)
        pairs = zip(target.names, _split(data, target, hf_name)) if isinstance(target, Split) else [(target, data)]
        for gname, part in pairs:
            if gname in seen:
                raise ValueError(f"{hf_name!r} and {seen[gname]!r} both map to {gname!r}")
            seen[gname] = hf_name
            yield gname, np.ascontiguousarray(part + 1.0 if gname in spec.plus_one else part)


def _missing_tensors(spec: VisionSpec, hp: VisionHParams, names: Sequence[str]) -> List[str]:
    """The spec's weights missing from `names`, and its required_biases. Other
    biases are not checked (the map lists norm biases only Qwen2-VL's
    LayerNorms have)."""

    def needed(tensors: Mapping[str, Target], prefix: str = "") -> List[str]:
        return [
            prefix + n
            for k, t in tensors.items()
            if k.endswith(".weight") or k in spec.required_biases
            for n in _names(t)
        ]

    need = needed(spec.global_tensors)
    for il in range(hp.n_layer):
        need += needed(spec.block_tensors, f"v.blk.{il}.")
    for il in hp.deepstack_layers:
        need += needed(spec.deepstack_tensors, f"v.deepstack.{il}.")
    present = set(names)
    return [n for n in need if n not in present]


def tensor_type(spec: VisionSpec, gguf_name: str, data: np.ndarray, out_type: str) -> gguf.GGMLQuantizationType:
    """The type upstream gives a tensor (ModelBase.prepare_tensors with the
    MmprojModel / Qwen2VL / SmolVLM overrides of tensor_force_quant; Qwen3-VL
    has none, and its position embeddings stay f32 by prepare_tensors' own
    list)."""
    f32, f16 = gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16
    if data.ndim <= 1 or gguf_name.endswith("_norm.weight") or any(f in gguf_name for f in spec.f32_fragments):
        return f32
    if any(f in gguf_name for f in spec.f16_fragments):
        return f16
    if ".patch_embd.weight" in gguf_name:  # also matches the second frame, "...weight.1"
        return f16 if out_type == "f16" else f32
    if not gguf_name.endswith(".weight"):
        return f32
    qtype = OUT_TYPES[out_type][1]
    if qtype == gguf.GGMLQuantizationType.Q8_0 and data.shape[-1] % gguf.GGML_QUANT_SIZES[qtype][0]:
        return f16  # upstream's fallback when rows do not fill whole blocks
    return qtype


# --------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------


def write_mmproj_gguf(
    path: PathLike,
    tensors: Mapping[str, Any],
    config: Any,
    preprocessor: Optional[Mapping[str, Any]] = None,
    out_type: str = "f16",
    *,
    name: Optional[str] = None,
) -> Path:
    """Writes the vision tower and projector of an HF VLM as an mmproj GGUF.

    Args:
        path: the GGUF to write; it appears only once complete (written to a
            temporary name in the same folder, then renamed).
        tensors: HF parameter name -> array (numpy, or anything np.asarray
            takes). Decoder tensors are ignored.
        config: the HF config (dict or transformers object) with a
            vision_config; its model_type picks the architecture.
        preprocessor: preprocessor_config.json as a dict. image_mean and
            image_std come from it (default: the architecture's usual values);
            for SmolVLM also size.longest_edge.
        out_type: "f32", "f16", "bf16" or "q8_0"; norms, biases and the tensors
            upstream keeps in f32 stay f32 (see tensor_type).
        name: general.name, optional.
    Returns:
        The path written.
    """
    if out_type not in OUT_TYPES:
        raise ValueError(f"out_type must be one of {sorted(OUT_TYPES)}, got {out_type!r}")
    cfg = config_dict(config)
    spec = vision_spec(cfg)
    hp = vision_hparams(cfg, preprocessor)
    converted = list(mmproj_tensors(spec, hp, tensors))
    missing = _missing_tensors(spec, hp, [n for n, _ in converted])
    if missing:
        raise ValueError(f"checkpoint lacks {len(missing)} vision tensors, first: {missing[:4]}")

    def fill(writer: gguf.GGUFWriter) -> None:
        for gname, data in converted:
            qtype = tensor_type(spec, gname, data, out_type)
            raw = encode_tensor(data, qtype)
            writer.add_tensor(gname, raw, raw_dtype=qtype if raw.dtype == np.uint8 else None)
        if name:
            writer.add_name(name)
        # general.size_label as upstream derives it, from the parameters written.
        writer.add_size_label(gguf.size_label(*writer.get_total_parameter_count()))
        writer.add_file_type(OUT_TYPES[out_type][0])
        add_vision_hparams(writer, spec, hp)
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)

    return write_gguf(path, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.MMPROJ], fill)
