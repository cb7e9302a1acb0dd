"""Tiny VLMs: the random-weight Qwen2.5-VL, Qwen2-VL, Qwen3-VL and SmolVLM2
checkpoints the mmproj, vision and video tests share (CASES: how each is
built, its preprocessor, its test image and what libmtmd makes of it,
transformers' vision reference), libmtmd driven through llama_cpp.mtmd_cpp
(TextModel, MtmdEncoder), and the converted text GGUF + mmproj pairs (build,
the module-scoped qwen_vl and smolvlm fixtures) with the bar a whole VLM
prompt is held to against transformers.

REL_TOL_TRANSFORMERS (relative L2 error of a position's logits, our runtime
with an image vs transformers' whole VLM forward): the image embeddings
differ by ~2e-4 (test_convert_mmproj: ggml's f16-table GELU); the decoder
adds its f16 KV cache / flash-attention rounding (test_tiny_models: up to
2e-3 on text). Measured in test_vision over all 69 positions of the
Qwen2.5-VL prompt: max 3.1e-3, mean 1.7e-3; SmolVLM2, last position: 1.7e-3.
The bound is 2.5x the worst. Controls there: the Qwen image at plain
sequential positions is off by 0.95, and another picture moves SmolVLM2's
transformers logits by more than 10x the bound, so wrong positions or
embeddings fail. test_video_qwen and test_video_smolvlm hold videos to the
same bound.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import numpy as np
import pytest
import torch

from htsparse_convert import read_gguf_header, write_text_gguf
from htsparse_convert.mmproj_gguf import write_mmproj_gguf
from htsparse_llama import Model
from htsparse_llama.bench import llama_cpp as llama_cpp_mtmd
from support.tiny_models import (
    GEMMA3_MM_TOKENS,
    SMOLVLM_VISION,
    VISION_2_5_MMPROJ,
    VISION_2_MMPROJ,
    VISION_3_MMPROJ,
    attention_eager,
    gemma3_vlm_model,
    qwen2vl_model,
    qwen2vl_v1_model,
    qwen3vl_model,
    smolvlm_model,
)

REL_TOL_TRANSFORMERS = 8e-3
THREADS = 2


def pattern_image(w: int, h: int) -> np.ndarray:
    """A deterministic [h, w, 3] uint8 pattern: gradients plus a texture, so
    every patch differs from its neighbours."""
    y, x = np.mgrid[0:h, 0:w]
    rgb = [x * 255 // w, y * 255 // h, (x * 7 + y * 13 + (x * y) % 31) % 256]
    return np.stack(rgb, axis=-1).astype(np.uint8)


# -- transformers references ---------------------------------------------------------------


def qwen_reference(model: torch.nn.Module, rgb: np.ndarray, pre: Mapping[str, Any]) -> np.ndarray:
    """Vision tower + merger on `rgb` preprocessed by transformers' Qwen2-VL
    image processor (Qwen3-VL's too), with the tower's patch and clip.cpp's
    pixel limits (8..4096 merged tokens, 28x28 pixels each at Qwen2's 14-pixel
    patches) so neither side resizes the test image: [n_tokens, n_embd], or
    for Qwen3-VL [n_tokens, n_embd * (1 + D)], each token's merged embedding
    then its D DeepStack features in layer order, as libmtmd lays out a row."""
    try:  # the PIL backend is the one that runs without torchvision
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil as Processor
    except ImportError:  # pragma: no cover - other transformers versions
        from transformers import Qwen2VLImageProcessor as Processor
    from PIL import Image

    vcfg = model.config.vision_config
    patch, merge = vcfg.patch_size, vcfg.spatial_merge_size
    unit = patch * merge  # the pixels of one merged token, per side
    proc = Processor(
        size={"shortest_edge": 8 * unit * unit, "longest_edge": 4096 * unit * unit},
        patch_size=patch,
        merge_size=merge,
        temporal_patch_size=vcfg.temporal_patch_size,
        **pre,
    )
    inputs = proc(images=[Image.fromarray(rgb)], return_tensors="pt")
    grid = inputs["image_grid_thw"]
    expected = [[1, rgb.shape[0] // patch, rgb.shape[1] // patch]]
    assert grid.tolist() == expected, f"transformers resized: {grid.tolist()}"
    with torch.no_grad():
        out = model.model.visual(inputs["pixel_values"], grid_thw=grid)
    deepstack = getattr(out, "deepstack_features", None) or []
    return torch.cat([out.pooler_output, *deepstack], dim=-1).float().numpy()


def smolvlm_reference(model: torch.nn.Module, rgb: np.ndarray, pre: Mapping[str, Any]) -> np.ndarray:
    """Vision tower + connector on `rgb` (one tile, as large as the tower's
    input, so neither side resizes or splits it): [n_tokens, n_embd]."""
    try:
        from transformers.models.smolvlm.image_processing_pil_smolvlm import SmolVLMImageProcessorPil as Processor
    except ImportError:  # pragma: no cover - other transformers versions
        from transformers import SmolVLMImageProcessor as Processor
    from PIL import Image

    size = {"longest_edge": rgb.shape[0]}
    proc = Processor(
        do_image_splitting=False,
        size=size,
        max_image_size=size,
        image_mean=pre["image_mean"],
        image_std=pre["image_std"],
    )
    inputs = proc(images=[[Image.fromarray(rgb)]], return_tensors="pt")
    assert tuple(inputs["pixel_values"].shape) == (1, 1, 3, *rgb.shape[:2])
    with torch.no_grad():
        out = model.model.get_image_features(inputs["pixel_values"])
    return out.pooler_output[0].float().numpy()


def gemma3_reference(model: torch.nn.Module, rgb: np.ndarray, pre: Mapping[str, Any]) -> np.ndarray:
    """Tower + pooling projector on `rgb` preprocessed by transformers' Gemma 3
    image processor, at the tower's own size (no resize on either side):
    [mm_tokens_per_image, n_embd]."""
    try:
        from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil as Processor
    except ImportError:  # pragma: no cover - other transformers versions
        from transformers import Gemma3ImageProcessor as Processor
    from PIL import Image

    h, w = rgb.shape[:2]
    proc = Processor(size={"height": h, "width": w}, image_mean=pre["image_mean"], image_std=pre["image_std"])
    inputs = proc(images=[Image.fromarray(rgb)], return_tensors="pt")
    assert tuple(inputs["pixel_values"].shape) == (1, 3, h, w)
    with torch.no_grad():
        out = model.model.get_image_features(inputs["pixel_values"])
    return out.pooler_output[0].float().numpy()


def smolvlm_text_part(tensors: Dict[str, np.ndarray], config: Any) -> Tuple[Dict[str, np.ndarray], Dict[str, Any]]:
    """SmolVLM's decoder as the llama checkpoint write_text_gguf knows (it has
    no SmolVLM entry yet): model.text_model.* -> model.*, the text config."""
    text = {
        ("model." + k[len("model.text_model.") :] if k.startswith("model.text_model.") else k): v
        for k, v in tensors.items()
        if not k.startswith(("model.vision_model.", "model.connector."))
    }
    return text, dict(config.text_config.to_dict(), architectures=["LlamaForCausalLM"], tie_word_embeddings=False)


# -- the architectures -----------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    build: Callable[[int], torch.nn.Module]
    vocab_fixture: str  # the real GGUF whose tokenizer the text model gets
    preprocessor: Dict[str, Any]  # preprocessor_config.json
    image_wh: Tuple[int, int]
    n_images: int  # image chunks libmtmd makes of the test image, each encoded alike
    n_tokens: int  # per chunk
    reference: Callable[[torch.nn.Module, np.ndarray, Mapping[str, Any]], np.ndarray]
    text_part: Optional[Callable[[Dict[str, np.ndarray], Any], Tuple[Dict[str, np.ndarray], Any]]] = None
    n_deepstack: int = 0  # Qwen3-VL: DeepStack rows per token beside its own (output rows n_embd * (1 + this))
    # A saved parameter's name in the hub's files, where transformers 5 saves another.
    hub_name: Optional[Callable[[str], str]] = None


_CLIP = {"image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711]}
# Not the defaults, so the tests see that the preprocessor's values are written.
_OTHER = {"image_mean": [0.5, 0.45, 0.4], "image_std": [0.25, 0.3, 0.35]}
_TILE = SMOLVLM_VISION["image_size"]
CASES: Dict[str, Case] = {
    "qwen2_5_vl": Case(
        lambda n: qwen2vl_model(n, seed=11, vision=VISION_2_5_MMPROJ),
        "qwen_vocab",
        _CLIP,
        (224, 168),
        1,
        8 * 6,
        qwen_reference,
    ),
    "qwen2_vl": Case(
        lambda n: qwen2vl_v1_model(n, seed=12, vision=VISION_2_MMPROJ),
        "qwen_vocab",
        _OTHER,
        (224, 168),
        1,
        8 * 6,
        qwen_reference,
    ),
    # 112x80 pixels are 14x10 patches of 8 (7x5 merged tokens): the learned
    # 4x4 position grid is resampled to a grid of another shape.
    "qwen3_vl": Case(
        lambda n: qwen3vl_model(n, seed=14, vision=VISION_3_MMPROJ),
        "qwen_vocab",
        _OTHER,
        (112, 80),
        1,
        7 * 5,
        qwen_reference,
        n_deepstack=2,
    ),
    # libmtmd gives SmolVLM the overview and one tile, both the whole image.
    "smolvlm": Case(
        lambda n: smolvlm_model(n, seed=13),
        "smollm_vocab",
        {"image_mean": [0.5] * 3, "image_std": [0.5] * 3, "size": {"longest_edge": _TILE}},
        (_TILE, _TILE),
        2,
        (_TILE // 8 // 2) ** 2,
        smolvlm_reference,
        smolvlm_text_part,
    ),
    # One 64x64 image (the tower's size), pooled to 16 tokens, between
    # <start_of_image> and <end_of_image>.
    "gemma3": Case(
        lambda n: gemma3_vlm_model(n, seed=16),
        "gemma_vocab",
        {"image_mean": [0.5] * 3, "image_std": [0.5] * 3, "image_seq_length": GEMMA3_MM_TOKENS},
        (_TILE, _TILE),
        1,
        GEMMA3_MM_TOKENS,
        gemma3_reference,
        # google/gemma-3-*-it keep SigLIP's vision_model level (upstream's converter needs it).
        hub_name=lambda k: k.replace("vision_tower.", "vision_tower.vision_model.", 1),
    ),
}


# -- libmtmd through llama_cpp.mtmd_cpp ------------------------------------------------------


class TextModel:
    """A text GGUF loaded vocab_only: libmtmd needs its tokenizer (for the
    image's begin/end tokens) and checks its width, not its weights."""

    def __init__(self, path: Path) -> None:
        import llama_cpp

        self._llama = llama_cpp
        llama_cpp.llama_backend_init()
        params = llama_cpp.llama_model_default_params()
        params.vocab_only = True
        self.ptr = llama_cpp.llama_model_load_from_file(str(path).encode(), params)
        assert self.ptr, f"llama.cpp could not load {path}"

    def close(self) -> None:
        self._llama.llama_model_free(self.ptr)


class MtmdEncoder:
    """libmtmd on a text model and an mmproj; encode() gives the output
    embeddings of each image chunk libmtmd makes of an image."""

    def __init__(self, text: TextModel, mmproj: Path) -> None:
        import llama_cpp.mtmd_cpp as mtmd

        self._mtmd = mtmd
        self.ctx = llama_cpp_mtmd.init_context(mmproj, text.ptr, n_threads=2)
        # The row width: the text model's (a vocab_only model reports 0, the
        # mmproj says it) once per DeepStack merger too (clip_n_mmproj_embd).
        fields, tensors = read_gguf_header(mmproj)
        n_deepstack = sum(1 for t in tensors if t.name.startswith("v.deepstack.") and t.name.endswith(".fc2.weight"))
        projection_dim = next(f.value for f in fields if f.key == "clip.vision.projection_dim")
        self.n_embd = projection_dim * (1 + n_deepstack)

    def encode(self, rgb: np.ndarray) -> List[np.ndarray]:
        """[n_tokens, n_embd] per image chunk of an [H, W, 3] uint8 image."""
        chunks = llama_cpp_mtmd.tokenize(self.ctx, self._mtmd.mtmd_default_marker().decode(), [rgb])
        try:
            return list(llama_cpp_mtmd.encode_image_chunks(self.ctx, chunks, self.n_embd).values())
        finally:
            self._mtmd.mtmd_input_chunks_free(chunks)

    def close(self) -> None:
        self._mtmd.mtmd_free(self.ctx)

    def __enter__(self) -> "MtmdEncoder":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# -- converted text GGUF + mmproj pairs --------------------------------------------------------


@dataclass
class TinyVLMFiles:
    model_type: str
    torch_model: torch.nn.Module
    text: Path  # the text GGUF
    mmproj: Path  # f32 mmproj
    llama_cpp_text: Path  # the text GGUF llama.cpp reads as we do (qwen2vl: epsilon 0, see test_tiny_models)

    def model(self, path: Path = None) -> Model:
        return Model(str(path or self.text), n_ctx=512, n_threads=THREADS, device="cpu")


def build(model_type: str, vocab, folder: Path) -> TinyVLMFiles:
    case = CASES[model_type]
    folder.mkdir(exist_ok=True)
    model = attention_eager(case.build(vocab.n_tokens))
    tensors = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
    text_tensors, config = case.text_part(tensors, model.config) if case.text_part else (tensors, model.config)
    text = write_text_gguf(folder / "text.gguf", text_tensors, config, vocab_from=vocab)
    twin = text
    if model_type.startswith("qwen"):
        cfg = config.to_dict()
        cfg["text_config"]["rms_norm_eps"] = 0.0
        twin = write_text_gguf(folder / "text-eps0.gguf", text_tensors, cfg, vocab_from=vocab)
    mmproj = write_mmproj_gguf(folder / "mmproj.gguf", tensors, model.config, case.preprocessor, "f32")
    return TinyVLMFiles(model_type, model, text, mmproj, twin)


class WithImageTokens:
    """A GGUF's tokenizer plus SmolVLM2's added tokens (as control tokens, at
    the end, as SmolVLM2's tokenizer adds them to SmolLM2's): libmtmd puts
    <fake_token_around_image>, <global-img> and <row_i_col_j> around images."""

    EXTRA = ["<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>"] + [
        f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)
    ]

    def __init__(self, base) -> None:
        self.base = base

    @property
    def n_tokens(self) -> int:
        return self.base.n_tokens + len(self.EXTRA)

    def add_to(self, writer) -> None:
        extra = {"tokenizer.ggml.tokens": self.EXTRA, "tokenizer.ggml.token_type": [3] * len(self.EXTRA)}
        for f in self.base._load():
            value = list(f.value) + extra[f.key] if f.key in extra else f.value
            writer.add_key_value(f.key, value, f.type, sub_type=f.sub_type)


# -- fixtures (module-scoped: each test module builds its own) ----------------------------------


@pytest.fixture(scope="module")
def qwen_vl(qwen_vocab, tiny_dir) -> TinyVLMFiles:
    """The tiny Qwen2.5-VL as a text GGUF + f32 mmproj."""
    return build("qwen2_5_vl", qwen_vocab, tiny_dir / "vision-qwen2_5_vl")


@pytest.fixture(scope="module")
def gemma3_vlm(gemma_vocab, tiny_dir) -> TinyVLMFiles:
    """The tiny Gemma 3 (gemma-3-270m's tokenizer, window layers) as a text GGUF + f32 mmproj."""
    return build("gemma3", gemma_vocab, tiny_dir / "vision-gemma3")


@pytest.fixture(scope="module")
def smolvlm(smollm_vocab, tiny_dir) -> TinyVLMFiles:
    """The tiny SmolVLM2 (SmolLM2's tokenizer plus its image tokens) as a text GGUF + f32 mmproj."""
    return build("smolvlm", WithImageTokens(smollm_vocab), tiny_dir / "vision-smolvlm")
