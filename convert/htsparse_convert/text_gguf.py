"""Hugging Face text decoders -> llama.cpp GGUF files.

    from htsparse_convert import write_text_gguf

    write_text_gguf("tiny.gguf", tensors, config, vocab_from="qwen2.5-0.5b.gguf")

`tensors` maps Hugging Face parameter names to numpy arrays (a model's
state_dict), `config` is the Hugging Face config (a dict or a transformers
config object). Only the text decoder is written: the vision tower of a VLM
goes to the mmproj file, which is another job.

Upstream llama.cpp reads the result, so its convert_hf_to_gguf.py decides every
choice here: tensor names, which metadata keys each architecture writes, the
Q/K permutation of `llama`, which tensors stay f32 in an f16 file.
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, NamedTuple, Optional, Protocol, Tuple, Union, runtime_checkable

import gguf
import numpy as np

from .atomic import write_gguf

PathLike = Union[str, "os.PathLike[str]"]

# --------------------------------------------------------------------------------------
# Architectures
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ArchSpec:
    """How one Hugging Face decoder family becomes one GGUF architecture."""

    gguf_arch: str
    # Prefixes of the decoder's parameters, tried in order. transformers 5 nests
    # a VLM's decoder under model.language_model.; older checkpoints use model.
    text_prefixes: Tuple[str, ...]
    # Parameters that belong to another file (the vision tower -> mmproj).
    skip_prefixes: Tuple[str, ...] = ()
    # llama.cpp's `llama` uses NORMAL rope (rotates adjacent pairs) where HF
    # rotates the two halves of each head, so Q and K rows are reordered.
    permute_qk: bool = False
    qkv_bias: bool = False
    qk_norm: bool = False  # per-head RMS norms of q and k (self_attn.q_norm / k_norm)
    # Keys upstream writes for this architecture beyond the common ones.
    writes_rope_dims: bool = False
    writes_vocab_size: bool = False
    mrope: bool = False
    deepstack: bool = False  # writes {arch}.n_deepstack_layers (Qwen3-VL)
    # Gemma 3: RMS norms stored as 1 + w (upstream adds the 1), norms around
    # attention and FFN, a sliding window, key/value length always written.
    gemma: bool = False


_QWEN2 = ArchSpec("qwen2", ("model.",), qkv_bias=True)
_QWEN3 = ArchSpec("qwen3", ("model.",), qk_norm=True)
_LLAMA = ArchSpec("llama", ("model.",), permute_qk=True, writes_rope_dims=True, writes_vocab_size=True)
_QWEN2VL = ArchSpec(
    "qwen2vl",
    ("model.language_model.", "model."),
    skip_prefixes=("model.visual.", "visual."),
    qkv_bias=True,
    mrope=True,
)

_QWEN3VL = ArchSpec(
    "qwen3vl",
    ("model.language_model.", "model."),
    skip_prefixes=("model.visual.", "visual."),
    qk_norm=True,
    mrope=True,
    deepstack=True,
)

# The hub's Gemma 3 VLM files keep the decoder under language_model.model.,
# transformers 5 holds it under model.language_model.
_GEMMA3 = ArchSpec(
    "gemma3",
    ("model.language_model.", "language_model.model.", "model."),
    skip_prefixes=("model.vision_tower.", "model.multi_modal_projector.", "vision_tower.", "multi_modal_projector."),
    qk_norm=True,
    gemma=True,
)

# SmolVLM2's decoder is a llama one; upstream strips "text_model." from its
# names and reads the sizes from text_config.
_SMOLVLM = ArchSpec(
    "llama",
    ("model.text_model.",),
    skip_prefixes=("model.vision_model.", "model.connector."),
    permute_qk=True,
    writes_rope_dims=True,
    writes_vocab_size=True,
)

# Keyed by the config's `architectures[0]` and, for configs built in code
# (where `architectures` is empty), by its top-level model_type.
ARCHITECTURES: Dict[str, ArchSpec] = {
    "Qwen2ForCausalLM": _QWEN2,
    "qwen2": _QWEN2,
    "Qwen3ForCausalLM": _QWEN3,
    "qwen3": _QWEN3,
    "LlamaForCausalLM": _LLAMA,
    "llama": _LLAMA,
    "Qwen2VLForConditionalGeneration": _QWEN2VL,
    "Qwen2_5_VLForConditionalGeneration": _QWEN2VL,
    "qwen2_vl": _QWEN2VL,
    "qwen2_5_vl": _QWEN2VL,
    "Qwen3VLForConditionalGeneration": _QWEN3VL,
    "qwen3_vl": _QWEN3VL,
    "Gemma3ForCausalLM": _GEMMA3,
    "Gemma3ForConditionalGeneration": _GEMMA3,
    "gemma3_text": _GEMMA3,
    "gemma3": _GEMMA3,
    "SmolVLMForConditionalGeneration": _SMOLVLM,
    "Idefics3ForConditionalGeneration": _SMOLVLM,
    "smolvlm": _SMOLVLM,
    "idefics3": _SMOLVLM,
}

# Decoder parameters (after the text prefix) -> GGUF names.
GLOBAL_TENSORS: Dict[str, str] = {
    "embed_tokens.weight": "token_embd.weight",
    "norm.weight": "output_norm.weight",
}
LAYER_TENSORS: Dict[str, str] = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.q_norm.weight": "attn_q_norm.weight",
    "self_attn.k_norm.weight": "attn_k_norm.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}
_QK_NORMS = ("attn_q_norm.weight", "attn_k_norm.weight")
# Gemma 3 normalises after attention and around the FFN (upstream's tensor map).
GEMMA_LAYER_TENSORS: Dict[str, str] = {
    **{k: v for k, v in LAYER_TENSORS.items() if k != "post_attention_layernorm.weight"},
    "post_attention_layernorm.weight": "post_attention_norm.weight",
    "pre_feedforward_layernorm.weight": "ffn_norm.weight",
    "post_feedforward_layernorm.weight": "post_ffw_norm.weight",
}
GEMMA_SWA_PATTERN = 6  # llama.cpp's default for gemma3: five window layers, then a global one
LM_HEAD = ("lm_head.weight", "output.weight")  # outside the decoder prefix

# Buffers some checkpoints carry that llama.cpp recomputes.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)

# Output types written directly (k-quants go through libllama: quantize.py):
# name -> (the file type key, the type of the tensors that get quantized).
OUT_TYPES: Dict[str, Tuple[gguf.LlamaFileType, gguf.GGMLQuantizationType]] = {
    "f32": (gguf.LlamaFileType.ALL_F32, gguf.GGMLQuantizationType.F32),
    "f16": (gguf.LlamaFileType.MOSTLY_F16, gguf.GGMLQuantizationType.F16),
    "bf16": (gguf.LlamaFileType.MOSTLY_BF16, gguf.GGMLQuantizationType.BF16),
    "q8_0": (gguf.LlamaFileType.MOSTLY_Q8_0, gguf.GGMLQuantizationType.Q8_0),
}


def arch_spec(config: Mapping[str, Any]) -> ArchSpec:
    """The ArchSpec for a (flattened or raw) HF config dict."""
    names = list(config.get("architectures") or []) + [config.get("model_type")]
    for name in names:
        if name in ARCHITECTURES:
            return ARCHITECTURES[name]
    raise ValueError(f"unsupported architecture {names[:-1] or names[-1]!r}; known: {sorted(ARCHITECTURES)}")


# --------------------------------------------------------------------------------------
# Hyper-parameters
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TextHParams:
    """The decoder sizes the GGUF metadata needs, read from an HF config."""

    n_layer: int
    n_embd: int
    n_ff: int
    n_head: int
    n_head_kv: int
    head_dim: int
    head_dim_explicit: bool  # the config names head_dim (upstream then writes key/value_length)
    n_ctx_train: int
    rms_eps: float
    rope_theta: float
    rope_type: str
    rope_scaling_factor: Optional[float]
    mrope_section: Optional[List[int]]
    tie_word_embeddings: bool
    n_deepstack: int = 0  # vision_config.deepstack_visual_indexes (Qwen3-VL)
    sliding_window: int = 0  # Gemma 3: the window of the sliding layers (0: none)
    swa_layers: Optional[List[bool]] = None  # per layer, from layer_types
    final_logit_softcap: Optional[float] = None
    rope_theta_swa: Optional[float] = None  # Gemma 3: the window layers' rope base


def config_dict(config: Any) -> Dict[str, Any]:
    """A plain dict from a dict or a transformers PretrainedConfig."""
    if isinstance(config, Mapping):
        return dict(config)
    if hasattr(config, "to_dict"):
        return config.to_dict()
    raise TypeError(f"config must be a dict or a transformers config, got {type(config).__name__}")


def flatten_config(cfg: Mapping[str, Any]) -> Dict[str, Any]:
    # A VLM keeps the decoder's sizes in text_config; those win over the top
    # level, which in older checkpoints held the same values flat.
    text = cfg.get("text_config") or {}
    if not isinstance(text, Mapping):
        text = config_dict(text)
    flat = {**cfg, **text}
    # Except tying: transformers 5 decides it on the outer config (and a text
    # config can carry the class default there).
    if "tie_word_embeddings" in cfg:
        flat["tie_word_embeddings"] = cfg["tie_word_embeddings"]
    return flat


def _rope_params(hp: Mapping[str, Any]) -> Dict[str, Any]:
    # transformers < 5: rope_theta + rope_scaling; 5: rope_parameters holds both,
    # per layer type where they differ (Gemma 3: the global layers' are the model's).
    params = dict(hp.get("rope_parameters") or {})
    params = dict(params.get("full_attention", params))
    return {**(hp.get("rope_scaling") or {}), **params}


def _rope_theta_swa(hp: Mapping[str, Any]) -> Optional[float]:
    # transformers 5: rope_parameters["sliding_attention"]; 4.x: rope_local_base_freq.
    local = dict(hp.get("rope_parameters") or {}).get("sliding_attention") or {}
    theta = local.get("rope_theta", hp.get("rope_local_base_freq"))
    return float(theta) if theta is not None else None


def _swa_layers(hp: Mapping[str, Any]) -> Optional[List[bool]]:
    types = hp.get("layer_types")
    if not hp.get("sliding_window") or not types:
        return None
    return [t == "sliding_attention" for t in types]


def text_hparams(config: Any) -> TextHParams:
    """Reads the decoder hyper-parameters of an HF config (dict or object)."""
    hp = flatten_config(config_dict(config))
    rope = _rope_params(hp)
    n_head = int(hp["num_attention_heads"])
    head_dim = hp.get("head_dim")
    rope_type = str(rope.get("rope_type", rope.get("type", "default")))
    if rope_type not in ("default", "mrope", "linear"):
        # yarn / llama3 / dynamic need extra keys or a rope_freqs tensor: not yet.
        raise NotImplementedError(f"rope type {rope_type!r} is not supported by this converter yet")
    section = rope.get("mrope_section")
    tie = hp.get("tie_word_embeddings")
    vision = hp.get("vision_config") or {}
    if not isinstance(vision, Mapping):
        vision = config_dict(vision)
    return TextHParams(
        n_layer=int(hp["num_hidden_layers"]),
        n_embd=int(hp["hidden_size"]),
        n_ff=int(hp["intermediate_size"]),
        n_head=n_head,
        n_head_kv=int(hp.get("num_key_value_heads") or n_head),
        head_dim=int(head_dim) if head_dim else int(hp["hidden_size"]) // n_head,
        head_dim_explicit=head_dim is not None,
        n_ctx_train=int(hp.get("max_position_embeddings") or 4096),
        rms_eps=float(hp.get("rms_norm_eps", 1e-6)),
        rope_theta=float(hp.get("rope_theta") or rope.get("rope_theta") or 10000.0),
        rope_type=rope_type,
        rope_scaling_factor=float(rope["factor"]) if rope_type == "linear" else None,
        mrope_section=[int(s) for s in section] if section is not None else None,
        tie_word_embeddings=bool(tie) if tie is not None else False,
        n_deepstack=len(vision.get("deepstack_visual_indexes") or []),
        sliding_window=int(hp.get("sliding_window") or 0),
        swa_layers=_swa_layers(hp),
        final_logit_softcap=hp.get("final_logit_softcapping"),
        rope_theta_swa=_rope_theta_swa(hp),
    )


def add_hparams(writer: gguf.GGUFWriter, spec: ArchSpec, hp: TextHParams, n_vocab: int) -> None:
    """Writes the {arch}.* keys llama.cpp reads for this architecture."""
    writer.add_context_length(hp.n_ctx_train)
    writer.add_embedding_length(hp.n_embd)
    writer.add_block_count(hp.n_layer)
    writer.add_feed_forward_length(hp.n_ff)
    writer.add_head_count(hp.n_head)
    writer.add_head_count_kv(hp.n_head_kv)
    writer.add_layer_norm_rms_eps(hp.rms_eps)
    writer.add_rope_freq_base(hp.rope_theta)
    if hp.rope_theta_swa is not None:  # as upstream's TextModel, for any model whose config has one
        writer.add_rope_freq_base_swa(hp.rope_theta_swa)
    if hp.head_dim_explicit:
        writer.add_key_length(hp.head_dim)
        writer.add_value_length(hp.head_dim)
    if spec.writes_rope_dims:
        writer.add_rope_dimension_count(hp.head_dim)
    if spec.writes_vocab_size:
        writer.add_vocab_size(n_vocab)
    if hp.rope_scaling_factor is not None:
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(hp.rope_scaling_factor)
    if spec.mrope:
        writer.add_rope_dimension_sections(mrope_sections(hp))
    if spec.deepstack:
        writer.add_num_deepstack_layers(hp.n_deepstack)
    if spec.gemma:
        _add_gemma_hparams(writer, hp)


def _add_gemma_hparams(writer: gguf.GGUFWriter, hp: TextHParams) -> None:
    """What upstream's Gemma3Model adds: the window, the soft-cap. Upstream
    writes no layer pattern (llama.cpp assumes GEMMA_SWA_PATTERN); where the
    config's layer_types differ from it, the pattern goes in as per-layer flags,
    the form newer converters write, so the file runs as trained."""
    if hp.final_logit_softcap:
        writer.add_final_logit_softcapping(float(hp.final_logit_softcap))
    if hp.sliding_window > 0 and (hp.swa_layers is None or any(hp.swa_layers)):
        writer.add_sliding_window(hp.sliding_window)
        default = [il % GEMMA_SWA_PATTERN < GEMMA_SWA_PATTERN - 1 for il in range(hp.n_layer)]
        if hp.swa_layers is not None and hp.swa_layers != default:
            writer.add_array(f"{writer.arch}.attention.sliding_window_pattern", hp.swa_layers)


def mrope_sections(hp: TextHParams) -> List[int]:
    """HF's mrope_section (t, h, w pairs) padded to the four streams llama.cpp keeps."""
    if not hp.mrope_section or len(hp.mrope_section) > 4:
        raise ValueError(f"M-RoPE needs an mrope_section of 1 to 4 ints, got {hp.mrope_section!r}")
    if sum(hp.mrope_section) * 2 > hp.head_dim:
        raise ValueError(f"mrope_section {hp.mrope_section} covers more than head_dim {hp.head_dim} / 2 pairs")
    return hp.mrope_section + [0] * (4 - len(hp.mrope_section))


# --------------------------------------------------------------------------------------
# Tensors
# --------------------------------------------------------------------------------------


def gguf_tensor_name(spec: ArchSpec, hf_name: str) -> Optional[str]:
    """GGUF name of one HF parameter, None for one that is not written here.
    Raises on a decoder parameter we do not know, so nothing is dropped silently."""
    if hf_name == LM_HEAD[0]:
        return LM_HEAD[1]
    if hf_name.startswith(spec.skip_prefixes) or hf_name.endswith(_IGNORED_SUFFIXES):
        return None
    prefix = next((p for p in spec.text_prefixes if hf_name.startswith(p)), None)
    if prefix is not None:
        rest = hf_name[len(prefix) :]
        if rest in GLOBAL_TENSORS:
            return GLOBAL_TENSORS[rest]
        parts = rest.split(".", 2)
        table = GEMMA_LAYER_TENSORS if spec.gemma else LAYER_TENSORS
        if len(parts) == 3 and parts[0] == "layers" and parts[1].isdigit() and parts[2] in table:
            gname = table[parts[2]]
            if gname not in _QK_NORMS or spec.qk_norm:  # q/k norms only where the architecture runs them
                return f"blk.{int(parts[1])}.{gname}"
    raise ValueError(f"cannot map tensor {hf_name!r} to a {spec.gguf_arch} GGUF name")


def permute_for_normal_rope(w: np.ndarray, n_head: int) -> np.ndarray:
    """Reorders Q/K rows from HF's rotate-half layout to adjacent pairs.

    Same as upstream convert_hf_to_gguf.py LlamaModel.permute: within each head
    the rows [0..d/2) and [d/2..d) are interleaved, so that the pair (i, i+d/2)
    HF rotates together lands on rows (2i, 2i+1) that NORMAL rope rotates.
    """
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _prepare(spec: ArchSpec, hp: TextHParams, gguf_name: str, data: np.ndarray) -> np.ndarray:
    if spec.gemma and gguf_name.endswith("norm.weight"):
        return data + 1.0  # Gemma3RMSNorm scales by 1 + w
    if spec.permute_qk and gguf_name.endswith(("attn_q.weight", "attn_q.bias")):
        data = permute_for_normal_rope(data, hp.n_head)
    elif spec.permute_qk and gguf_name.endswith(("attn_k.weight", "attn_k.bias")):
        data = permute_for_normal_rope(data, hp.n_head_kv)
    return data


def tensor_type(gguf_name: str, data: np.ndarray, out_type: str) -> gguf.GGMLQuantizationType:
    """The type upstream's ModelBase.prepare_tensors gives a decoder tensor:
    1-D tensors, norms and non-weights stay f32; q8_0 falls back to f16 for
    rows that do not fill whole blocks."""
    if data.ndim <= 1 or gguf_name.endswith("_norm.weight") or not gguf_name.endswith(".weight"):
        return gguf.GGMLQuantizationType.F32
    qtype = OUT_TYPES[out_type][1]
    if qtype == gguf.GGMLQuantizationType.Q8_0 and data.shape[-1] % gguf.GGML_QUANT_SIZES[qtype][0]:
        return gguf.GGMLQuantizationType.F16
    return qtype


def encode_tensor(data: np.ndarray, qtype: gguf.GGMLQuantizationType) -> np.ndarray:
    """float32 data in `qtype`: a float array, or the quantized bytes (written
    with raw_dtype=qtype)."""
    if qtype == gguf.GGMLQuantizationType.F32:
        return np.ascontiguousarray(data, dtype=np.float32)
    if qtype == gguf.GGMLQuantizationType.F16:
        return np.ascontiguousarray(data, dtype=np.float16)
    return gguf.quants.quantize(np.ascontiguousarray(data, dtype=np.float32), qtype)


def _expected_tensors(spec: ArchSpec, hp: TextHParams) -> List[str]:
    names = list(GLOBAL_TENSORS.values())
    if not hp.tie_word_embeddings:
        names.append(LM_HEAD[1])
    for il in range(hp.n_layer):
        for gname in (GEMMA_LAYER_TENSORS if spec.gemma else LAYER_TENSORS).values():
            if gname.endswith(".bias") and not spec.qkv_bias:
                continue
            if gname in _QK_NORMS and not spec.qk_norm:
                continue
            names.append(f"blk.{il}.{gname}")
    return names


def convert_tensors(
    spec: ArchSpec, hp: TextHParams, tensors: Mapping[str, Any], out_type: str = "f32"
) -> Iterator[Tuple[str, np.ndarray, gguf.GGMLQuantizationType]]:
    """Yields (gguf_name, data, type) for every decoder tensor, in GGUF naming,
    layout and type (quantized types as bytes), after checking that every
    tensor the architecture needs is there."""
    mapped: Dict[str, str] = {}  # GGUF name -> HF name; values are read one at a time below
    for hf_name in tensors:
        gname = gguf_tensor_name(spec, hf_name)
        if gname is None or (gname == LM_HEAD[1] and hp.tie_word_embeddings):
            continue  # a tied lm_head is the embedding table; llama.cpp duplicates it
        if gname in mapped:
            raise ValueError(f"{hf_name!r} and {mapped[gname]!r} both map to {gname!r}")
        mapped[gname] = hf_name
    missing = [n for n in _expected_tensors(spec, hp) if n not in mapped]
    if missing:
        raise ValueError(f"checkpoint lacks {len(missing)} tensors, first: {missing[:4]}")
    for gname, hf_name in mapped.items():
        data = _prepare(spec, hp, gname, np.asarray(tensors[hf_name], dtype=np.float32))
        qtype = tensor_type(gname, data, out_type)
        yield gname, encode_tensor(data, qtype), qtype


# --------------------------------------------------------------------------------------
# GGUF metadata reading
# --------------------------------------------------------------------------------------


class MetadataField(NamedTuple):
    """One GGUF key-value pair, typed as GGUFWriter.add_key_value takes it."""

    key: str
    value: Any  # str, int, float, bool, or a list of them
    type: gguf.GGUFValueType
    sub_type: Optional[gguf.GGUFValueType]  # element type of an ARRAY


_SCALARS: Dict[gguf.GGUFValueType, str] = {
    gguf.GGUFValueType.UINT8: "<u1",
    gguf.GGUFValueType.INT8: "<i1",
    gguf.GGUFValueType.UINT16: "<u2",
    gguf.GGUFValueType.INT16: "<i2",
    gguf.GGUFValueType.UINT32: "<u4",
    gguf.GGUFValueType.INT32: "<i4",
    gguf.GGUFValueType.UINT64: "<u8",
    gguf.GGUFValueType.INT64: "<i8",
    gguf.GGUFValueType.FLOAT32: "<f4",
    gguf.GGUFValueType.FLOAT64: "<f8",
    gguf.GGUFValueType.BOOL: "<u1",
}


class _Cursor:
    """Sequential little-endian reads over a buffer."""

    def __init__(self, buf: Any) -> None:
        self.buf, self.off = buf, 0

    def u32(self) -> int:
        (v,) = struct.unpack_from("<I", self.buf, self.off)
        self.off += 4
        return v

    def u64(self) -> int:
        (v,) = struct.unpack_from("<Q", self.buf, self.off)
        self.off += 8
        return v

    def string(self) -> str:
        n = self.u64()
        self.off += n
        return bytes(self.buf[self.off - n : self.off]).decode("utf-8")

    def scalars(self, vtype: gguf.GGUFValueType, count: int) -> np.ndarray:
        dt = np.dtype(_SCALARS[vtype])
        arr = np.frombuffer(self.buf, dtype=dt, count=count, offset=self.off)
        self.off += count * dt.itemsize
        return arr.astype(bool) if vtype == gguf.GGUFValueType.BOOL else arr

    def value(self, vtype: gguf.GGUFValueType) -> Tuple[Any, Optional[gguf.GGUFValueType]]:
        if vtype == gguf.GGUFValueType.STRING:
            return self.string(), None
        if vtype in _SCALARS:
            return self.scalars(vtype, 1).tolist()[0], None
        if vtype != gguf.GGUFValueType.ARRAY:
            raise ValueError(f"unknown GGUF value type {vtype}")
        sub = gguf.GGUFValueType(self.u32())
        count = self.u64()
        if sub in _SCALARS:
            return self.scalars(sub, count).tolist(), sub
        return [self.value(sub)[0] for _ in range(count)], sub


class TensorInfo(NamedTuple):
    """One tensor's entry in a GGUF header."""

    name: str
    shape: Tuple[int, ...]  # ggml order: ne[0] (the contiguous dimension) first
    type: gguf.GGMLQuantizationType


def read_gguf_header(path: PathLike, prefix: str = "") -> Tuple[List[MetadataField], List[TensorInfo]]:
    """The key-value pairs (those whose key starts with `prefix`) and tensor
    entries of a little-endian GGUF v2/v3 file, without reading tensor data.

    gguf.GGUFReader does this too but builds numpy views of every value and
    takes ~10 s on a 150k-token vocabulary; this takes well under a second.
    """
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        cur = _Cursor(memoryview(mm))
        try:
            if bytes(cur.buf[:4]) != b"GGUF":
                raise ValueError(f"{path}: not a GGUF file")
            cur.off = 4
            version = cur.u32()
            if version not in (2, 3):
                raise ValueError(f"{path}: unsupported GGUF version {version}")
            n_tensors, n_kv = cur.u64(), cur.u64()
            fields = []
            for _ in range(n_kv):
                key = cur.string()
                vtype = gguf.GGUFValueType(cur.u32())
                value, sub = cur.value(vtype)
                if key.startswith(prefix):
                    fields.append(MetadataField(key, value, vtype, sub))
            tensors = []
            for _ in range(n_tensors):
                name = cur.string()
                shape = tuple(cur.u64() for _ in range(cur.u32()))
                tensors.append(TensorInfo(name, shape, gguf.GGMLQuantizationType(cur.u32())))
                cur.u64()  # data offset
            return fields, tensors
        finally:
            del cur  # the memoryview must go before the mmap closes


def read_gguf_metadata(path: PathLike, prefix: str = "") -> List[MetadataField]:
    """The key-value pairs of a GGUF file whose key starts with `prefix`."""
    return read_gguf_header(path, prefix)[0]


# --------------------------------------------------------------------------------------
# Tokenizer sources
# --------------------------------------------------------------------------------------


@runtime_checkable
class VocabSource(Protocol):
    """Where a GGUF's tokenizer.* keys come from. GgufVocab copies them from an
    existing GGUF; a source that converts HF tokenizer files fits here too."""

    @property
    def n_tokens(self) -> int: ...

    def add_to(self, writer: gguf.GGUFWriter) -> None: ...


class GgufVocab:
    """The tokenizer of an existing GGUF: every tokenizer.* key, with its type.

    Read once (with read_gguf_metadata, well under a second where
    gguf.GGUFReader takes ~10 s on a 150k-token vocabulary) and reusable for
    many files.
    """

    PREFIX = "tokenizer."

    def __init__(self, path: PathLike) -> None:
        self.path = Path(path)
        self._fields: Optional[List[MetadataField]] = None

    def _load(self) -> List[MetadataField]:
        if self._fields is None:
            fields = read_gguf_metadata(self.path, prefix=self.PREFIX)
            if not any(f.key == "tokenizer.ggml.tokens" for f in fields):
                raise ValueError(f"{self.path}: no tokenizer.ggml.tokens to copy")
            self._fields = fields
        return self._fields

    @property
    def n_tokens(self) -> int:
        return next(len(f.value) for f in self._load() if f.key == "tokenizer.ggml.tokens")

    def add_to(self, writer: gguf.GGUFWriter) -> None:
        for f in self._load():
            writer.add_key_value(f.key, f.value, f.type, sub_type=f.sub_type)


def vocab_source(vocab_from: Union[PathLike, VocabSource]) -> VocabSource:
    """A VocabSource as is, or a path read as a GGUF to copy the tokenizer from."""
    if isinstance(vocab_from, VocabSource):
        return vocab_from
    return GgufVocab(vocab_from)


# --------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------


def _n_vocab(tensors: Mapping[str, Any], spec: ArchSpec) -> int:
    for hf_name in tensors:
        if gguf_tensor_name(spec, hf_name) == "token_embd.weight":
            shape = getattr(tensors, "shape", None)  # a lazy mapping tells it without loading
            return int(shape(hf_name)[0] if shape else np.shape(tensors[hf_name])[0])
    raise ValueError("checkpoint has no embed_tokens.weight")


def add_metadata_value(writer: gguf.GGUFWriter, key: str, value: Any) -> None:
    if isinstance(value, bool):
        writer.add_bool(key, value)
    elif isinstance(value, int):
        writer.add_int32(key, value)
    elif isinstance(value, float):
        writer.add_float32(key, value)
    elif isinstance(value, str):
        writer.add_string(key, value)
    elif isinstance(value, (list, tuple)) and value and all(isinstance(v, bool) for v in value):
        writer.add_array(key, list(value))  # per-layer flags (gemma3's sliding_window_pattern)
    elif isinstance(value, (list, tuple, np.ndarray)):
        writer.add_array(key, [float(v) for v in value])
    else:
        raise TypeError(f"metadata {key!r}: cannot write a {type(value).__name__}")


def write_text_gguf(
    path: PathLike,
    tensors: Mapping[str, Any],
    config: Any,
    *,
    vocab_from: Union[PathLike, VocabSource],
    out_type: str = "f32",
    name: Optional[str] = None,
    extra_metadata: Optional[Mapping[str, Any]] = None,
) -> Path:
    """Writes the text decoder of an HF checkpoint as a llama.cpp GGUF.

    Args:
        path: the GGUF to write; it appears only once complete (written to a
            temporary name in the same folder, then renamed).
        tensors: HF parameter name -> array (numpy, or anything np.asarray
            takes, such as CPU float32 torch tensors). Vision-tower tensors
            are ignored.
        config: the HF config, as a dict or a transformers config object.
        vocab_from: where the tokenizer comes from: a GGUF path whose
            tokenizer.* keys are copied, or any VocabSource. Its token count
            must equal the embedding rows (llama.cpp sizes the vocabulary by it).
        out_type: "f32", "f16", "bf16" or "q8_0" (the matrices; norms and
            biases stay f32, as upstream writes them).
        name: general.name, optional.
        extra_metadata: more keys to write (e.g. htsparse.* calibration):
            int -> int32, float -> float32, str, bool, lists of float -> float32 arrays.
    Returns:
        The path written.
    """
    if out_type not in OUT_TYPES:
        raise ValueError(f"out_type must be one of {sorted(OUT_TYPES)}, got {out_type!r}")
    cfg = config_dict(config)
    spec = arch_spec(cfg)
    hp = text_hparams(cfg)
    vocab = vocab_source(vocab_from)
    n_vocab = _n_vocab(tensors, spec)
    if vocab.n_tokens != n_vocab:
        raise ValueError(f"the tokenizer has {vocab.n_tokens} tokens but the embedding has {n_vocab} rows")

    def fill(writer: gguf.GGUFWriter) -> None:
        for gname, data, qtype in convert_tensors(spec, hp, tensors, out_type):
            writer.add_tensor(gname, data, raw_dtype=qtype)
        # The general.* keys upstream's converter writes for every text model.
        writer.add_type(gguf.GGUFType.MODEL)
        if name:
            writer.add_name(name)
        writer.add_size_label(gguf.size_label(*writer.get_total_parameter_count()))
        add_hparams(writer, spec, hp, n_vocab)
        writer.add_file_type(OUT_TYPES[out_type][0])
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        vocab.add_to(writer)
        for key, value in (extra_metadata or {}).items():
            add_metadata_value(writer, key, value)

    return write_gguf(path, spec.gguf_arch, fill)
