"""mmproj writer (htsparse_convert.mmproj_gguf) on tiny random Qwen2.5-VL,
Qwen2-VL, Qwen3-VL and SmolVLM2 checkpoints: libmtmd loads what we write and
encodes an image as the transformers vision tower + projector does, and
upstream's convert_hf_to_gguf.py writes the same file from the same
checkpoint (Qwen3-VL: but for one key, see below). Qwen3-VL's mmproj also
fits its text GGUF in htsparse_llama.Vision (rows n_embd x (1 + D)), and one
of another DeepStack depth is refused.

Tolerances (relative L2 error over all of an image's output embeddings,
libmtmd vs transformers on the same pixels; Qwen3-VL's rows are the merged
embedding then its 2 DeepStack features, all compared):
- f32 file: REL_TOL_F32. The weights are exact; ggml's CPU GELU and quick-GELU
  look the input up, rounded to f16, in a table (Qwen's merger GELU is also
  tanh-approximated where transformers uses erf). Flash attention on or off
  changes the error by under 1% (Qwen2.5-VL). Measured 2.1e-4 (Qwen2.5-VL), 2.6e-4
  (Qwen2-VL), 4.1e-4 (Qwen3-VL: 3.7e-4 on the merged part, 4.7e-4 and 4.1e-4
  on the DeepStack parts), 3.4e-4 (SmolVLM2); the bound is ~2.5x the worst.
- f16 file: REL_TOL_F16, against the same f32 transformers model (weight
  rounding counted as error). Measured 2.8e-4, 3.7e-4, 6.0e-4, 6.9e-4; bound ~4x.
  (Not asserted, for scale: bf16 1.7e-3 to 5.1e-3, q8_0 5.9e-3 to 1.9e-2.)
Window attention: the 224x168 Qwen test image is 8x6 merged tokens, so
2.5-VL's 112-pixel windows (4x4 tokens) cut it into four windows, two of them
partial. A control asserts that full attention in every layer moves the
reference by more than WINDOW_EFFECT times the f32 tolerance (measured 0.12),
so a wrong window pattern cannot pass.
Qwen3-VL: its 112x80 test image is 14x10 patches, so libmtmd resamples the
learned 4x4 position grid as transformers does; the DeepStack taps (blocks 1
and 2) are not the mergers' list positions, so a merger numbered by its place
in the list fails. Upstream writes the decoder's rms_norm_eps (1e-2 here) as
the tower's LayerNorm epsilon where transformers uses 1e-6, as we write: its
f32 file encodes the image 4.9e-3 away from transformers, more than
EPSILON_EFFECT times the f32 tolerance (a control asserts it).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Tuple

import gguf
import numpy as np
import pytest

import htsparse_llama as hts
from htsparse_convert import GgufVocab, read_gguf_header, write_text_gguf
from htsparse_convert.mmproj_gguf import VISION_ARCHITECTURES, write_mmproj_gguf
from htsparse_llama import Model, Vision
from support.hf_checkpoints import rename_saved
from support.tiny_models import VISION_2_5_MMPROJ, VISION_3_MMPROJ, attention_eager
from support.tiny_vlms import CASES, MtmdEncoder, TextModel, pattern_image, qwen_reference
from support.upstream_converter import converter_args, run_upstream_converter

pytestmark = pytest.mark.real_model  # the tokenizers libmtmd needs come from real GGUFs

REL_TOL_F32 = 1e-3
REL_TOL_F16 = 3e-3
WINDOW_EFFECT = 10.0
EPSILON_EFFECT = 3.0

# general.name is the checkpoint folder's name upstream; ours names nothing.
# htsparse.* keys are ours alone (htsparse.vision.tokens_per_second, asserted there).
IGNORED_KEYS = {"general.name"}
OUR_KEYS = "htsparse."
# Qwen3-VL's tower LayerNorm epsilon: upstream writes the decoder's
# rms_norm_eps (1e-2 in the tiny model), ours the tower's 1e-6 (mmproj_gguf's
# docstring; test_upstream_qwen3vl_epsilon_misses_transformers).
EPS_KEY = gguf.Keys.ClipVision.Attention.LAYERNORM_EPS


def rel_l2(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


# -- the architectures under test (support/tiny_vlms.py: CASES) --------------------------------

MODEL_TYPES = sorted(CASES)


# -- tiny checkpoints ----------------------------------------------------------------------


class TinyVLM:
    """One tiny VLM with a real vocabulary, and what is derived from it on
    first use: its f32 text GGUF (loaded vocab_only), the transformers
    embeddings of the test image, the saved checkpoint."""

    def __init__(self, model_type: str, vocab: GgufVocab, folder: Path) -> None:
        self.model_type, self.case = model_type, CASES[model_type]
        self.model = attention_eager(self.case.build(vocab.n_tokens))
        assert self.model.config.model_type == model_type
        self.folder = folder
        folder.mkdir(exist_ok=True)
        self._vocab = vocab
        self._text: Optional[TextModel] = None
        self._text_path: Optional[Path] = None
        self._reference: Optional[np.ndarray] = None

    @property
    def state_dict(self) -> Dict[str, np.ndarray]:
        """A fresh copy, names as transformers 5 has them in memory (model.visual.* etc.)."""
        return {k: v.detach().cpu().numpy() for k, v in self.model.state_dict().items()}

    @property
    def image(self) -> np.ndarray:
        return pattern_image(*self.case.image_wh)

    @property
    def text_path(self) -> Path:
        """The f32 text GGUF, written on first use."""
        if self._text_path is None:
            tensors, config = self.state_dict, self.model.config
            if self.case.text_part is not None:
                tensors, config = self.case.text_part(tensors, config)
            self._text_path = write_text_gguf(self.folder / "text-f32.gguf", tensors, config, vocab_from=self._vocab)
        return self._text_path

    @property
    def text_model(self) -> TextModel:
        if self._text is None:
            self._text = TextModel(self.text_path)
        return self._text

    @property
    def reference(self) -> np.ndarray:
        if self._reference is None:
            self._reference = self.case.reference(self.model, self.image, self.case.preprocessor)
        return self._reference

    @property
    def checkpoint_dir(self) -> Path:
        """As upstream's converter reads it: save_pretrained (which writes the
        names of the original checkpoints, e.g. visual.* for Qwen) plus the
        preprocessor_config.json where upstream takes image_mean/std from."""
        folder = self.folder / "hf"
        if not (folder / "config.json").exists():
            self.model.save_pretrained(folder)
            if self.case.hub_name is not None:
                rename_saved(folder, self.case.hub_name)
            (folder / "preprocessor_config.json").write_text(json.dumps(self.case.preprocessor))
        return folder

    def close(self) -> None:
        if self._text is not None:
            self._text.close()


class TinyVLMs(Dict[str, TinyVLM]):
    """model_type -> TinyVLM, each built on first use, so a test of one
    architecture builds (and fetches the vocabulary of) that one only."""

    def __init__(self, request: pytest.FixtureRequest, folder: Path) -> None:
        super().__init__()
        self._request, self._folder = request, folder

    def __missing__(self, model_type: str) -> TinyVLM:
        vocab = self._request.getfixturevalue(CASES[model_type].vocab_fixture)
        vlm = self[model_type] = TinyVLM(model_type, vocab, self._folder / f"mmproj-{model_type}")
        return vlm


@pytest.fixture(scope="module")
def tiny_vlms(request, tiny_dir) -> Iterator[TinyVLMs]:
    vlms = TinyVLMs(request, tiny_dir)
    yield vlms
    for vlm in vlms.values():
        vlm.close()


# -- (a) libmtmd vs transformers --------------------------------------------------------------


@pytest.mark.parametrize("out_type,tol", [("f32", REL_TOL_F32), ("f16", REL_TOL_F16)])
@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_mtmd_embeddings_match_transformers(tiny_vlms, model_type, out_type, tol):
    vlm = tiny_vlms[model_type]
    path = write_mmproj_gguf(
        vlm.folder / f"mmproj-{out_type}.gguf", vlm.state_dict, vlm.model.config, vlm.case.preprocessor, out_type
    )
    with MtmdEncoder(vlm.text_model, path) as enc:
        chunks = enc.encode(vlm.image)
    assert len(chunks) == vlm.case.n_images
    assert vlm.reference.shape == (vlm.case.n_tokens, 64 * (1 + vlm.case.n_deepstack))
    for ours in chunks:
        assert ours.shape == vlm.reference.shape
        err = rel_l2(ours, vlm.reference)
        assert err < tol, f"{model_type} {out_type}: relative L2 error {err:.2e} >= {tol:.0e}"


def test_window_attention_is_exercised(tiny_vlms):
    """Control: with 2.5-VL's windows replaced by full attention the reference
    moves far beyond the tolerance, so the match above checks the windows."""
    vlm = tiny_vlms["qwen2_5_vl"]
    visual = vlm.model.model.visual
    saved = list(visual.fullatt_block_indexes)
    visual.fullatt_block_indexes = list(range(len(visual.blocks)))
    try:
        full = qwen_reference(vlm.model, vlm.image, vlm.case.preprocessor)
    finally:
        visual.fullatt_block_indexes = saved
    assert rel_l2(full, vlm.reference) > WINDOW_EFFECT * REL_TOL_F32


# -- (b) the same file as upstream's converter -------------------------------------------------

OUT_TYPES = ["f32", "f16", "bf16", "q8_0"]


@pytest.fixture(scope="module")
def upstream_mmprojs(tiny_vlms, upstream_converter) -> Dict[Tuple[str, str], Path]:
    """(model_type, out_type) -> upstream's mmproj; one converter process for all."""
    out = {(m, t): tiny_vlms[m].folder / f"upstream-mmproj-{t}.gguf" for m in MODEL_TYPES for t in OUT_TYPES}
    jobs = [converter_args(tiny_vlms[m].checkpoint_dir, path, t, mmproj=True) for (m, t), path in out.items()]
    run_upstream_converter(upstream_converter, jobs)
    return out


def _load_checkpoint(folder: Path) -> Tuple[Dict[str, np.ndarray], Dict[str, Any], Dict[str, Any]]:
    from safetensors.numpy import load_file

    tensors: Dict[str, np.ndarray] = {}
    for shard in sorted(folder.glob("*.safetensors")):
        tensors.update(load_file(shard))
    config = json.loads((folder / "config.json").read_text())
    return tensors, config, json.loads((folder / "preprocessor_config.json").read_text())


def _gguf_contents(path: Path) -> Tuple[Dict[str, Any], Dict[str, Tuple[tuple, Any, bytes]]]:
    """(key -> (value, type, sub_type)), (tensor -> (ggml shape, type, data bytes))."""
    fields, _ = read_gguf_header(path)
    meta = {
        f.key: (f.value, f.type, f.sub_type)
        for f in fields
        if f.key not in IGNORED_KEYS and not f.key.startswith(OUR_KEYS)
    }
    reader = gguf.GGUFReader(path)
    tensors = {t.name: (tuple(int(n) for n in t.shape), t.tensor_type, bytes(t.data.tobytes())) for t in reader.tensors}
    return meta, tensors


@pytest.mark.parametrize("out_type", OUT_TYPES)
@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_same_as_upstream_converter(tiny_vlms, upstream_mmprojs, model_type, out_type, tmp_path):
    """From the saved checkpoint and its config.json (where the other tests
    give the in-memory state_dict and config object), our mmproj equals
    upstream's: keys, values and their types, tensor names, shapes, types and
    bytes. Only general.name and Qwen3-VL's tower epsilon differ (EPS_KEY:
    ours 1e-6, upstream's the decoder's rms_norm_eps, both asserted), and ours
    adds htsparse.* keys: Qwen2.5-VL's tokens_per_second, from its config."""
    tensors, config, pre = _load_checkpoint(tiny_vlms[model_type].checkpoint_dir)
    ours = write_mmproj_gguf(tmp_path / "ours.gguf", tensors, config, pre, out_type)
    added = {f.key: f.value for f in read_gguf_header(ours)[0] if f.key.startswith(OUR_KEYS)}
    if model_type == "qwen2_5_vl":
        assert added == {"htsparse.vision.tokens_per_second": config["vision_config"]["tokens_per_second"]}
    else:
        assert added == {}

    meta_ours, tensors_ours = _gguf_contents(ours)
    meta_theirs, tensors_theirs = _gguf_contents(upstream_mmprojs[model_type, out_type])
    if model_type == "qwen3_vl":
        eps = (meta_ours.pop(EPS_KEY)[0], meta_theirs.pop(EPS_KEY)[0])
        assert eps == pytest.approx((1e-6, config["text_config"]["rms_norm_eps"]))
    assert meta_ours.keys() == meta_theirs.keys()
    for key, value in meta_theirs.items():
        assert meta_ours[key] == value, f"{key}: ours {meta_ours[key]} upstream {value}"
    assert tensors_ours.keys() == tensors_theirs.keys()
    for name, (shape, qtype, data) in tensors_theirs.items():
        assert tensors_ours[name][:2] == (shape, qtype), (
            f"{name}: ours {tensors_ours[name][:2]} upstream {(shape, qtype)}"
        )
        assert tensors_ours[name][2] == data, f"{name}: same shape and type, different bytes"


def test_upstream_qwen3vl_epsilon_misses_transformers(tiny_vlms, upstream_mmprojs):
    """Why our Qwen3-VL epsilon is not upstream's: upstream's f32 file, the
    same as ours but for the decoder's 1e-2 in the tower's LayerNorms, encodes
    the test image more than EPSILON_EFFECT times the f32 tolerance away from
    transformers (measured 4.9e-3; ours 4.1e-4)."""
    vlm = tiny_vlms["qwen3_vl"]
    with MtmdEncoder(vlm.text_model, upstream_mmprojs["qwen3_vl", "f32"]) as enc:
        (theirs,) = enc.encode(vlm.image)
    assert rel_l2(theirs, vlm.reference) > EPSILON_EFFECT * REL_TOL_F32


# -- (c) Qwen3-VL's DeepStack width in the runtime ---------------------------------------------


def _with_taps(vlm, taps) -> Tuple[Dict[str, np.ndarray], Dict[str, Any]]:
    """The tiny Qwen3-VL's tensors and config with DeepStack mergers at
    `taps`, merger i a copy of the checkpoint's merger i % 2."""
    prefix = "model.visual.deepstack_merger_list."
    n_mergers = len(VISION_3_MMPROJ["deepstack_visual_indexes"])
    tensors = {k: v for k, v in vlm.state_dict.items() if not k.startswith(prefix)}
    mergers = [(k[len(prefix) :].partition("."), v) for k, v in vlm.state_dict.items() if k.startswith(prefix)]
    for i in range(len(taps)):
        tensors.update({f"{prefix}{i}.{key}": v for (j, _, key), v in mergers if int(j) == i % n_mergers})
    config = vlm.model.config.to_dict()
    config["vision_config"]["deepstack_visual_indexes"] = list(taps)
    return tensors, config


def test_qwen3vl_mmproj_fits_its_text_model(tiny_vlms, tmp_path):
    """htsparse_llama.Vision takes the converted text GGUF with our mmproj
    (rows 64 x (1 + 2) wide on both sides: the runtime's DeepStack width check
    passes) and its image chunk holds transformers' rows (main then DeepStack);
    an mmproj with one DeepStack merger fewer or more is refused, naming both widths."""
    vlm = tiny_vlms["qwen3_vl"]
    model = Model(str(vlm.text_path), n_ctx=256, n_threads=2, device="cpu")
    assert (model.info["n_embd"], model.info["n_deepstack"], model.info["n_embd_inp"]) == (64, 2, 192)
    path = write_mmproj_gguf(tmp_path / "mmproj.gguf", vlm.state_dict, vlm.model.config, vlm.case.preprocessor, "f32")
    vision = Vision(model, path, n_threads=2)
    (image,) = [c for c in vision.encode_image(vlm.image) if c.is_image]
    assert image.embd.shape == vlm.reference.shape == (35, 192)
    assert rel_l2(np.asarray(image.embd), vlm.reference) < REL_TOL_F32

    for taps in ([1], [0, 1, 2]):
        tensors, config = _with_taps(vlm, taps)
        other = write_mmproj_gguf(tmp_path / f"taps-{len(taps)}.gguf", tensors, config, vlm.case.preprocessor, "f32")
        width = 64 * (1 + len(taps))
        with pytest.raises(
            hts.InvalidArgumentError, match=rf"does not match.*{width} wide.*n_embd is 64.*2 DeepStack.*192 in all"
        ):
            Vision(model, other)


# -- bad input ---------------------------------------------------------------------------------


def test_unsupported_model_type_is_named(tmp_path):
    config = {"model_type": "llava", "vision_config": {}, "text_config": {"hidden_size": 64}}
    with pytest.raises(ValueError, match="'llava'") as err:
        write_mmproj_gguf(tmp_path / "x.gguf", {}, config)
    for supported in VISION_ARCHITECTURES:
        assert supported in str(err.value)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "change,preprocessor,match",
    [
        # Full attention at layers 1 and 2: not "every n-th layer", which is all
        # clip.vision.n_wa_pattern can say.
        pytest.param({"fullatt_block_indexes": [1, 2]}, None, "fullatt_block_indexes", id="full-attention-at-1-and-2"),
        pytest.param({"window_size": 224}, None, "window_size", id="window-224"),  # clip.cpp fixes it at 112 pixels
        pytest.param({"intermediate_size": 32}, None, "swapped", id="square-mlp"),
        pytest.param({}, {"patch_size": 16}, "patch_size", id="preprocessor-patch-16"),
    ],
)
def test_config_clip_cannot_express_is_refused(tmp_path, change, preprocessor, match):
    from transformers import Qwen2_5_VLConfig

    config = Qwen2_5_VLConfig(text_config={"hidden_size": 64}, vision_config=dict(VISION_2_5_MMPROJ, **change))
    with pytest.raises(ValueError, match=match):
        write_mmproj_gguf(tmp_path / "x.gguf", {}, config, preprocessor)


@pytest.mark.parametrize(
    "change,match",
    [
        # A layer tapped twice would put two mergers at one v.deepstack.N.
        pytest.param({"deepstack_visual_indexes": [1, 1]}, "deepstack_visual_indexes", id="layer-tapped-twice"),
        pytest.param({"deepstack_visual_indexes": [1, 3]}, "deepstack_visual_indexes", id="tap-past-the-tower"),
        pytest.param({"num_position_embeddings": 24}, "square grid", id="positions-not-square"),
        pytest.param({"rope_parameters": {"rope_type": "axial", "rope_theta": 20000.0}}, "base 10000", id="rope-base"),
        pytest.param({"hidden_act": "silu"}, "gelu", id="silu-mlp"),
        pytest.param({"patch_size": [8, 16]}, "square", id="patch-8x16"),
        pytest.param({"spatial_merge_size": 4}, "spatial_merge_size", id="merge-4x4"),
        pytest.param({"out_hidden_size": 32}, "out_hidden_size", id="merger-narrower-than-text"),
    ],
)
def test_qwen3vl_config_clip_cannot_express_is_refused(tmp_path, change, match):
    from transformers import Qwen3VLConfig

    config = Qwen3VLConfig(text_config={"hidden_size": 64}, vision_config=dict(VISION_3_MMPROJ, **change))
    with pytest.raises(ValueError, match=match):
        write_mmproj_gguf(tmp_path / "x.gguf", {}, config)


def test_qwen3vl_missing_and_extra_tensors_leave_no_file(tiny_vlms, tmp_path):
    """A missing DeepStack merger weight is named by its layer; the biases
    clip.cpp's qwen3vl graph adds unchecked are required too; a merger past
    deepstack_visual_indexes is refused."""
    vlm = tiny_vlms["qwen3_vl"]
    for hf_name, gguf_name in [
        ("model.visual.deepstack_merger_list.1.linear_fc2.weight", "v.deepstack.2.fc2.weight"),
        ("model.visual.patch_embed.proj.bias", "v.patch_embd.bias"),
        ("model.visual.blocks.2.attn.qkv.bias", "v.blk.2.attn_qkv.bias"),
    ]:
        tensors = vlm.state_dict
        del tensors[hf_name]
        with pytest.raises(ValueError, match=rf"lacks 1 vision tensors.*'{re.escape(gguf_name)}'"):
            write_mmproj_gguf(tmp_path / "x.gguf", tensors, vlm.model.config)
    tensors = vlm.state_dict
    tensors["model.visual.deepstack_merger_list.2.norm.weight"] = np.ones(128, np.float32)
    with pytest.raises(ValueError, match="deepstack_merger_list.2.norm.weight"):
        write_mmproj_gguf(tmp_path / "x.gguf", tensors, vlm.model.config)
    assert list(tmp_path.iterdir()) == []


def test_missing_and_unknown_tensors_leave_no_file(tiny_vlms, tmp_path):
    vlm = tiny_vlms["qwen2_vl"]
    tensors = vlm.state_dict
    del tensors["model.visual.merger.mlp.2.weight"]
    with pytest.raises(ValueError, match="mm.2.weight"):
        write_mmproj_gguf(tmp_path / "x.gguf", tensors, vlm.model.config)
    tensors = vlm.state_dict
    tensors["model.visual.blocks.0.attn.rotary.weight"] = np.zeros(4, np.float32)
    with pytest.raises(ValueError, match="attn.rotary"):
        write_mmproj_gguf(tmp_path / "x.gguf", tensors, vlm.model.config)
    assert list(tmp_path.iterdir()) == []


def test_failed_write_keeps_the_old_file(tiny_vlms, tmp_path, monkeypatch):
    """A write that fails half way leaves neither a partial file nor a
    temporary one, and an existing file at the path is untouched."""
    vlm = tiny_vlms["qwen2_5_vl"]
    path = tmp_path / "mmproj.gguf"
    path.write_bytes(b"previous")

    def fail(self, *args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", fail)
    with pytest.raises(OSError, match="disk full"):
        write_mmproj_gguf(path, vlm.state_dict, vlm.model.config)
    assert [p.name for p in tmp_path.iterdir()] == ["mmproj.gguf"]
    assert path.read_bytes() == b"previous"
