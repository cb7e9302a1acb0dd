"""`python -m htsparse_llama convert` end to end, on tiny random Qwen2.5-VL,
Qwen2-VL, Qwen3-VL and SmolVLM2 checkpoints and a text-only Qwen3 one, saved as users have them (config.json,
model.safetensors, the real Qwen2.5 / SmolLM2 tokenizers in their released
layout, preprocessor_config.json; hf_checkpoints.py), each with as many
embedding rows as its tokenizer has.

1. `convert DIR -o OUT --outtype f32` writes <name>-F32.gguf and, for a VLM,
   mmproj-<name>-F32.gguf and a summary line for each; (a) llama-cpp-python
   runs the text file as transformers runs the checkpoint; (c) our runtime
   runs it as llama-cpp-python; libmtmd encodes an image with the mmproj,
   which is the file write_mmproj_gguf writes.
2. A k-quant (Q4_K_M) through libllama (SmolVLM2, Qwen3-VL).
3. Bad input: exit status 1, one line on stderr, nothing left behind.
4. The text GGUF equals upstream convert_hf_to_gguf.py's, in f32, f16, bf16
   and q8_0 (last: upstream's converter runs in the background meanwhile).

Tolerances (relative L2 error of each position's logit vector; the prompt is a
chat turn followed by random ids, 64 tokens):
- llama.cpp vs transformers (eager attention), f32 file: REL_TOL_TRANSFORMERS.
  The weights are exact; llama.cpp caches K and V in f16 and its CPU flash
  attention rounds Q to f16, so each layer adds f16 rounding (test_tiny_models
  bounds the same error of our runtime at 5e-3). Measured 9.0e-4 (Qwen2.5-VL),
  9.3e-4 (Qwen2-VL), 6.7e-4 (Qwen3-VL), 1.8e-3 (SmolVLM2); the bound is ~2.2x
  the worst. Gemma 3: REL_TOL_TRANSFORMERS_GEMMA3 (measured 4.8e-3).
- our runtime vs llama.cpp, f32 and Q4_K_M files: REL_TOL_LLAMA_CPP of
  support/parity.py (1e-5): same kernels, same graph. Measured 0.
The RMS-norm epsilon of the Qwen checkpoints is 0 (1e-2 in the tiny models
elsewhere, 1e-6 in the released ones): llama.cpp 0.3.36's qwen2vl never reads
it and runs with 0 (see test_tiny_models.llama_cpp_twin). Measured with 1e-2:
llama.cpp 19% off transformers; with 1e-6: our runtime, which reads it, 6e-4
off llama.cpp. SmolVLM2's decoder (llama, which reads it) keeps 1e-2, so a
misconverted epsilon shows there.

The upstream comparison (metadata keys, values and value types; tensor names,
shapes, types, order and bytes) ignores only UPSTREAM_IGNORED_KEYS.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Tuple

import gguf
import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

from htsparse_convert import open_checkpoint, read_gguf_header, supported_model_types, write_text_gguf
from htsparse_convert.convert_checkpoint import checkpoint_vocab
from htsparse_convert.mmproj_gguf import write_mmproj_gguf
from support.hf_checkpoints import load_json, released_tokenizer, rename_saved, save_checkpoint
from support.parity import REL_TOL_LLAMA_CPP, check_close, llama_cpp_logits, ours, prompt, reference
from support.tiny_models import (
    VISION_2_5_MMPROJ,
    VISION_2_MMPROJ,
    VISION_3_MMPROJ,
    attention_eager,
    gemma3_vlm_model,
    qwen2vl_model,
    qwen2vl_v1_model,
    qwen3_model,
    qwen3vl_model,
    smolvlm_model,
)
from support.tiny_vlms import CASES, MtmdEncoder, TextModel, pattern_image
from support.upstream_converter import (
    UpstreamUnavailable,
    converter_args,
    run_upstream_converter,
    upstream_converter_dir,
)

pytestmark = pytest.mark.real_model  # the tokenizers are rebuilt from the real GGUFs

REL_TOL_TRANSFORMERS = 4e-3
# Gemma 3's five layers, each with a norm after attention and after the FFN,
# carry the f16 rounding further: measured 4.8e-3 (1.4e-3 mean), arg-max equal.
REL_TOL_TRANSFORMERS_GEMMA3 = 1e-2
QWEN_RMS_EPS = 0.0  # what llama.cpp's qwen2vl runs with, whatever the file says (see the module docstring)

VLM_TYPES = ["qwen2_5_vl", "qwen2_vl", "qwen3_vl", "smolvlm", "gemma3"]  # text GGUF + mmproj
TEXT_TYPES = ["qwen3"]  # text GGUF only
MODEL_TYPES = VLM_TYPES + TEXT_TYPES
OUT_TYPES = ["f32", "f16", "bf16", "q8_0"]
GGUF_ARCH = {
    "qwen2_5_vl": "qwen2vl",
    "qwen2_vl": "qwen2vl",
    "qwen3_vl": "qwen3vl",
    "smolvlm": "llama",
    "qwen3": "qwen3",
    "gemma3": "gemma3",
}

# Keys our text GGUF and upstream's may differ in, and why.
UPSTREAM_IGNORED_KEYS = {
    # The folder name: ours keeps it as it is (the file stem, --name), upstream
    # title-cases it ("qwen2_5_vl" -> "Qwen2_5_Vl"). Asserted separately.
    "general.name",
}

CHAT_TURN = "<|im_start|>user\nWhat happens in the video?<|im_end|>\n<|im_start|>assistant\n"
N_PROMPT = 64


# -- checkpoints -----------------------------------------------------------------------------------


def _rms_eps(model: torch.nn.Module, eps: float) -> torch.nn.Module:
    """The decoder's RMS-norm epsilon set to `eps`, in the modules and the config."""
    model.config.text_config.rms_norm_eps = eps
    for module in model.model.language_model.modules():
        if hasattr(module, "variance_epsilon"):
            module.variance_epsilon = eps
    return model


BUILDERS: Dict[str, Tuple[Callable[[int], torch.nn.Module], str]] = {
    "qwen2_5_vl": (lambda n: _rms_eps(qwen2vl_model(n, seed=31, vision=VISION_2_5_MMPROJ), QWEN_RMS_EPS), "qwen"),
    "qwen2_vl": (lambda n: _rms_eps(qwen2vl_v1_model(n, seed=32, vision=VISION_2_MMPROJ), QWEN_RMS_EPS), "qwen"),
    "smolvlm": (lambda n: smolvlm_model(n, seed=33), "smollm"),
    # llama.cpp's qwen3 and qwen3vl read the epsilon, so they keep the tiny models' 1e-2.
    "qwen3": (lambda n: qwen3_model(n, seed=34), "qwen"),
    # DeepStack taps after blocks 1 and 2 (the mmproj numbers its mergers by the layer).
    "qwen3_vl": (lambda n: qwen3vl_model(n, seed=35, vision=VISION_3_MMPROJ), "qwen"),
    # Gemma 3 with its tower; the tokenizer a tokenizer.model (SentencePiece), read through sentencepiece.
    "gemma3": (lambda n: gemma3_vlm_model(n, seed=36), "gemma"),
}


@dataclass
class Ckpt:
    model_type: str
    path: Path  # the checkpoint directory; its name is the default file stem
    model: torch.nn.Module  # eager attention, the reference

    @property
    def n_vocab(self) -> int:
        return self.model.config.get_text_config().vocab_size


def _save(model_type: str, rebuilt: Dict[str, Path], folder: Path, rows: Dict[str, int]) -> Ckpt:
    build, kind = BUILDERS[model_type]
    if kind not in rows:  # the embedding rows a model with this tokenizer has
        rows[kind] = released_tokenizer(kind, rebuilt[kind], folder / f"tokenizer-{kind}")
    n_vocab = rows[kind]
    model = attention_eager(build(n_vocab))
    assert model.config.model_type == model_type and model.config.get_text_config().vocab_size == n_vocab
    preprocessor = CASES[model_type].preprocessor if model_type in VLM_TYPES else None
    path = save_checkpoint(model, folder / model_type, kind, rebuilt[kind], preprocessor)
    if model_type in CASES and CASES[model_type].hub_name is not None:  # the names of the hub's files
        rename_saved(path, CASES[model_type].hub_name)
    if model_type == "smolvlm":
        # The released SmolVLM2 config.json names its decoder class; upstream
        # converts the text model only through it (VLlama3ForCausalLM -> llama).
        config = load_json(path / "config.json")
        config["text_config"]["architectures"] = ["VLlama3ForCausalLM"]
        (path / "config.json").write_text(json.dumps(config, indent=2))
    return Ckpt(model_type, path, model)


@pytest.fixture(scope="module")
def checkpoints(rebuilt_dirs, tmp_path_factory) -> Dict[str, Ckpt]:
    folder = tmp_path_factory.mktemp("checkpoints")
    rows: Dict[str, int] = {}
    return {m: _save(m, rebuilt_dirs, folder, rows) for m in MODEL_TYPES}


# -- 1. the CLI ---------------------------------------------------------------------------------------


def start_convert(*args: Any, env: Optional[Dict[str, str]] = None) -> subprocess.Popen:
    """`python -m htsparse_llama convert ARGS` as a user runs it, started."""
    return subprocess.Popen(
        [sys.executable, "-m", "htsparse_llama", "convert", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def finish(proc: subprocess.Popen) -> subprocess.CompletedProcess:
    stdout, stderr = proc.communicate(timeout=300)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def run_convert(*args: Any) -> subprocess.CompletedProcess:
    return finish(start_convert(*args))


def listing(folder: Path) -> List[str]:
    """Every entry of a folder, hidden ones too ([] when it does not exist)."""
    return sorted(os.listdir(folder)) if folder.exists() else []


@dataclass
class CliRun:
    ckpt: Ckpt
    proc: subprocess.CompletedProcess
    text: Path
    mmproj: Optional[Path]  # None for a text-only model


@pytest.fixture(scope="module")
def cli_f32(checkpoints, tmp_path_factory) -> Dict[str, CliRun]:
    """model_type -> the CLI's f32 conversion of its checkpoint (all run at once)."""
    outs = {m: tmp_path_factory.mktemp(f"cli_{m}") for m in checkpoints}
    started = {m: start_convert(ckpt.path, "-o", outs[m], "--outtype", "f32") for m, ckpt in checkpoints.items()}
    return {
        m: CliRun(
            checkpoints[m],
            finish(proc),
            outs[m] / f"{m}-F32.gguf",
            outs[m] / f"mmproj-{m}-F32.gguf" if m in VLM_TYPES else None,
        )
        for m, proc in started.items()
    }


@dataclass
class Gguf:
    """A GGUF's header, read once (~1 s with a 150k-token vocabulary)."""

    path: Path
    meta: Dict[str, Tuple[Any, Any, Any]]  # key -> (value, value type, array element type)
    tensors: Dict[str, Tuple[tuple, gguf.GGMLQuantizationType]]  # name -> (ggml shape, type), in file order

    @classmethod
    def read(cls, path: Path) -> "Gguf":
        fields, tensors = read_gguf_header(path)
        return cls(
            path, {f.key: (f.value, f.type, f.sub_type) for f in fields}, {t.name: (t.shape, t.type) for t in tensors}
        )

    def value(self, key: str) -> Any:
        return self.meta[key][0]

    def types(self) -> Dict[str, gguf.GGMLQuantizationType]:
        return {name: t for name, (_, t) in self.tensors.items()}

    def data(self) -> Dict[str, bytes]:
        """Each tensor's bytes. The data section ends the file, tensors in
        header order, each padded to the alignment: found from the end, with
        no second pass over the metadata (gguf.GGUFReader takes ~10 s)."""
        align = self.meta.get("general.alignment", (gguf.GGUF_DEFAULT_ALIGNMENT,))[0]
        sizes = [
            int(np.prod(shape)) // gguf.GGML_QUANT_SIZES[t][0] * gguf.GGML_QUANT_SIZES[t][1]
            for shape, t in self.tensors.values()
        ]
        padded = [-(-n // align) * align for n in sizes]
        raw = self.path.read_bytes()
        offset = len(raw) - sum(padded)
        assert offset > 0 and offset % align == 0, f"{self.path}: the data section does not end the file"
        out = {}
        for name, n, p in zip(self.tensors, sizes, padded):
            out[name] = raw[offset : offset + n]
            offset += p
        return out


def summary_line(g: Gguf) -> str:
    """The CLI's summary line of an f32 file (Gemma 3's mmproj keeps its input projection f16, as upstream)."""
    n, n_f16 = len(g.tensors), list(g.types().values()).count(gguf.GGMLQuantizationType.F16)
    types = f"{n - n_f16} F32" + (f", {n_f16} F16" if n_f16 else "")
    return f"{g.path}: {n} tensors ({types}), {g.path.stat().st_size / 2**20:.1f} MiB"


@pytest.mark.parametrize("model_type", VLM_TYPES)
def test_cli_writes_both_files_and_a_summary(cli_f32, model_type):
    run = cli_f32[model_type]
    assert run.proc.returncode == 0, run.proc.stderr
    assert listing(run.text.parent) == sorted([run.text.name, run.mmproj.name])  # no temporary file either
    text, mmproj = Gguf.read(run.text), Gguf.read(run.mmproj)
    # A summary line per file: path, tensor count, types, size.
    assert run.proc.stdout.splitlines() == [summary_line(text), summary_line(mmproj)]
    # stderr: what is converted to what, and nothing else (no warning, no traceback).
    with safe_open(str(run.ckpt.path / "model.safetensors"), framework="np") as f:
        n_hf = len(list(f.keys()))
    arch = GGUF_ARCH[model_type]
    assert run.proc.stderr.splitlines() == [f"{model_type}: {n_hf} tensors -> {arch} GGUF (f32) + mmproj"]
    assert text.value("general.architecture") == arch and mmproj.value("general.architecture") == "clip"
    # general.name: the folder's name (what --name replaces), in both files.
    assert text.value("general.name") == model_type and mmproj.value("general.name") == model_type


@pytest.mark.parametrize("model_type", TEXT_TYPES)
def test_cli_writes_the_text_file_of_a_text_model(cli_f32, model_type):
    """A checkpoint without a vision tower: one file, one summary line, no "+ mmproj"."""
    run = cli_f32[model_type]
    assert run.proc.returncode == 0, run.proc.stderr
    assert listing(run.text.parent) == [run.text.name]
    text = Gguf.read(run.text)
    assert run.proc.stdout.splitlines() == [summary_line(text)]
    with safe_open(str(run.ckpt.path / "model.safetensors"), framework="np") as f:
        n_hf = len(list(f.keys()))
    arch = GGUF_ARCH[model_type]
    assert run.proc.stderr.splitlines() == [f"{model_type}: {n_hf} tensors -> {arch} GGUF (f32)"]
    assert text.value("general.architecture") == arch and text.value("general.name") == model_type


# -- 1. (a), (c): logits -------------------------------------------------------------------------------


@dataclass
class Logits:
    chat_ids: Tuple[List[int], List[int]]  # the chat turn tokenized by transformers and by llama.cpp
    ids: List[int]
    transformers: np.ndarray
    llama_cpp: np.ndarray


@pytest.fixture(scope="module")
def logits(checkpoints, cli_f32) -> Dict[str, Logits]:
    """model_type -> the prompt's logits from transformers and from
    llama-cpp-python on the CLI's text GGUF. The prompt: a chat turn, which
    llama.cpp must tokenize as the checkpoint's tokenizer does, then random
    ids to N_PROMPT (rows from all over the vocabulary)."""
    import llama_cpp
    from transformers import AutoTokenizer

    out = {}
    for m, ckpt in checkpoints.items():
        text = cli_f32[m].text
        assert text.is_file(), cli_f32[m].proc.stderr
        hf_ids = AutoTokenizer.from_pretrained(str(ckpt.path)).encode(CHAT_TURN, add_special_tokens=False)
        vocab = llama_cpp.Llama(str(text), vocab_only=True, verbose=False)
        try:
            llama_ids = vocab.tokenize(CHAT_TURN.encode(), add_bos=False, special=True)
        finally:
            vocab.close()
        ids = hf_ids + prompt(ckpt.n_vocab, n=N_PROMPT - len(hf_ids))
        out[m] = Logits((hf_ids, llama_ids), ids, reference(ckpt.model, ids), llama_cpp_logits(text, ids))
    return out


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_llama_cpp_runs_the_text_gguf_as_transformers(logits, model_type):
    got = logits[model_type]
    hf_ids, llama_ids = got.chat_ids
    assert llama_ids == hf_ids and len(hf_ids) > 10  # <|im_start|> etc. as single tokens, the text split alike
    tol = REL_TOL_TRANSFORMERS_GEMMA3 if model_type == "gemma3" else REL_TOL_TRANSFORMERS
    check_close(f"{model_type} f32: llama.cpp vs transformers", got.llama_cpp, got.transformers, tol)


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_our_runtime_runs_the_text_gguf_as_llama_cpp(logits, cli_f32, model_type):
    got = logits[model_type]
    check_close(
        f"{model_type} f32: ours vs llama.cpp",
        ours(cli_f32[model_type].text, got.ids),
        got.llama_cpp,
        REL_TOL_LLAMA_CPP,
    )


# -- 1. the mmproj ------------------------------------------------------------------------------------


@pytest.mark.parametrize("model_type", VLM_TYPES)
def test_mmproj_encodes_an_image_and_is_the_writers_file(checkpoints, cli_f32, model_type, tmp_path):
    """libmtmd loads the CLI's pair and encodes the test image (test_convert_mmproj
    checks the embeddings against transformers); the mmproj is the file
    write_mmproj_gguf writes from the same checkpoint, byte for byte."""
    case, run, folder = CASES[model_type], cli_f32[model_type], checkpoints[model_type].path
    text = TextModel(run.text)
    try:
        with MtmdEncoder(text, run.mmproj) as enc:
            chunks = enc.encode(pattern_image(*case.image_wh))
    finally:
        text.close()
    assert len(chunks) == case.n_images
    for chunk in chunks:  # Qwen3-VL: each row its merged embedding, then one per DeepStack merger
        assert chunk.shape == (case.n_tokens, 64 * (1 + case.n_deepstack))
        assert np.isfinite(chunk).all() and chunk.std() > 0

    direct = write_mmproj_gguf(
        tmp_path / "direct.gguf",
        load_file(str(folder / "model.safetensors")),
        load_json(folder / "config.json"),
        load_json(folder / "preprocessor_config.json"),
        "f32",
        name=model_type,
    )
    cli, ref = Gguf.read(run.mmproj), Gguf.read(direct)
    assert (cli.meta, cli.tensors) == (ref.meta, ref.tensors)
    assert run.mmproj.read_bytes() == direct.read_bytes()


# -- 2. a k-quant ------------------------------------------------------------------------------------


def test_q4_k_m(checkpoints, tmp_path):
    """llama.cpp's Q4_K_M mix of the SmolVLM2 decoder. Its rows (64 and 128
    wide) are not multiples of 256, so llama.cpp falls back per tensor: q4_K
    -> q5_0, q6_K (output, and attn_v / ffn_down of the last layer) -> q8_0.
    The mmproj is f16. Our runtime and llama.cpp run the file alike."""
    ckpt = checkpoints["smolvlm"]
    proc = run_convert(ckpt.path, "-o", tmp_path, "--outtype", "Q4_K_M")
    assert proc.returncode == 0, proc.stderr
    text, mmproj = tmp_path / "smolvlm-Q4_K_M.gguf", tmp_path / "mmproj-smolvlm-F16.gguf"
    assert listing(tmp_path) == sorted([text.name, mmproj.name])  # the f16 step and libllama's output are gone
    assert proc.stdout.splitlines()[0].startswith(f"{text}: 30 tensors (20 Q5_0, 7 F32, 3 Q8_0), ")
    assert proc.stdout.splitlines()[1].startswith(f"{mmproj}: 54 tensors (")
    # libllama's log (a line per tensor, a warning per fallback) only with --verbose.
    assert len(proc.stderr.splitlines()) == 1 and "Q4_K_M" in proc.stderr, proc.stderr

    T = gguf.GGMLQuantizationType
    quantized = Gguf.read(text)
    assert quantized.value("general.file_type") == 15  # LLAMA_FTYPE_MOSTLY_Q4_K_M
    q6_k = ("output.weight", "blk.2.attn_v.weight", "blk.2.ffn_down.weight")  # the mix's q6_K tensors here
    types = quantized.types()
    expected = {name: T.F32 if name.endswith("norm.weight") else T.Q8_0 if name in q6_k else T.Q5_0 for name in types}
    assert types == expected, {n: (t.name, expected[n].name) for n, t in types.items() if t != expected[n]}
    vision = Gguf.read(mmproj)
    assert vision.value("general.file_type") == 1 and set(vision.types().values()) == {T.F16, T.F32}

    ids = prompt(ckpt.n_vocab, n=N_PROMPT, seed=5)
    check_close("smolvlm Q4_K_M: ours vs llama.cpp", ours(text, ids), llama_cpp_logits(text, ids), REL_TOL_LLAMA_CPP)


def test_q4_k_m_qwen3_vl(checkpoints, tmp_path):
    """Qwen3-VL through the k-quant path: libllama quantizes the qwen3vl file
    (keys, DeepStack depth and sections kept), the mmproj is f16 with its
    DeepStack mergers and libmtmd encodes with it (rows 64 x (1 + 2) wide);
    our runtime and llama.cpp run the text file alike."""
    ckpt, case = checkpoints["qwen3_vl"], CASES["qwen3_vl"]
    proc = run_convert(ckpt.path, "-o", tmp_path, "--outtype", "Q4_K_M")
    assert proc.returncode == 0, proc.stderr
    text, mmproj = tmp_path / "qwen3_vl-Q4_K_M.gguf", tmp_path / "mmproj-qwen3_vl-F16.gguf"
    assert listing(tmp_path) == sorted([text.name, mmproj.name])

    T = gguf.GGMLQuantizationType
    quantized = Gguf.read(text)
    assert quantized.value("general.file_type") == 15  # LLAMA_FTYPE_MOSTLY_Q4_K_M
    assert quantized.value("qwen3vl.n_deepstack_layers") == 2
    assert quantized.value("qwen3vl.rope.dimension_sections") == [4, 6, 6, 0]
    types = quantized.types()
    assert types["blk.0.attn_q_norm.weight"] == T.F32 and types["blk.0.ffn_up.weight"] not in (T.F32, T.F16)
    vision = Gguf.read(mmproj)
    assert vision.value("general.file_type") == 1 and set(vision.types().values()) == {T.F16, T.F32}
    assert {name for name in vision.tensors if name.startswith("v.deepstack.") and name.endswith(".fc2.weight")} == {
        "v.deepstack.1.fc2.weight",
        "v.deepstack.2.fc2.weight",
    }
    model = TextModel(text)
    try:
        with MtmdEncoder(model, mmproj) as enc:
            chunks = enc.encode(pattern_image(*case.image_wh))
    finally:
        model.close()
    assert [c.shape for c in chunks] == [(case.n_tokens, 64 * 3)] and np.isfinite(chunks[0]).all()

    ids = prompt(ckpt.n_vocab, n=N_PROMPT, seed=6)
    check_close("qwen3_vl Q4_K_M: ours vs llama.cpp", ours(text, ids), llama_cpp_logits(text, ids), REL_TOL_LLAMA_CPP)


# -- 3. bad input --------------------------------------------------------------------------------------

SHARDS = ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors")
INDEX = "model.safetensors.index.json"


def _variant(src: Path, dest: Path, replace: Tuple[str, ...] = ()) -> Path:
    """A checkpoint directory whose files link to src's, except those named
    in `replace`, which the caller writes."""
    dest.mkdir()
    for f in src.iterdir():
        if f.name not in replace and f.is_file():
            (dest / f.name).symlink_to(f)
    return dest


def _edit_config(src: Path, dest: Path, edit: Callable[[Dict[str, Any]], None]) -> Path:
    _variant(src, dest, ("config.json",))
    config = load_json(src / "config.json")
    edit(config)
    (dest / "config.json").write_text(json.dumps(config))
    return dest


def _sharded(src: Path, dest: Path, second: Mapping[str, np.ndarray]) -> Path:
    """An index that puts lm_head.weight in a second shard and the rest in the
    first (the original file); the second shard holds `second` (absent when empty)."""
    _variant(src, dest, ("model.safetensors",))
    with safe_open(str(src / "model.safetensors"), framework="np") as f:
        weight_map = {name: SHARDS[0] for name in f.keys()}
    weight_map["lm_head.weight"] = SHARDS[1]
    (dest / INDEX).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (dest / SHARDS[0]).symlink_to(src / "model.safetensors")
    if second:
        save_file(dict(second), str(dest / SHARDS[1]))
    return dest


def _without_tensor(src: Path, dest: Path, name: str) -> Path:
    _variant(src, dest, ("model.safetensors",))
    tensors = load_file(str(src / "model.safetensors"))
    del tensors[name]
    save_file(tensors, str(dest / "model.safetensors"), metadata={"format": "pt"})
    return dest


def _no_config(src, dest):
    return _variant(src, dest, ("config.json",))


def _unsupported(src, dest):
    def edit(c):
        c.update(model_type="mistral3", architectures=["Mistral3ForConditionalGeneration"])

    return _edit_config(src, dest, edit)


def _bin_only(src, dest):
    _variant(src, dest, ("model.safetensors",))
    (dest / "pytorch_model.bin").write_bytes(b"\x80\x02}q\x00.")  # what torch.save writes for {}
    return dest


def _truncated(src, dest):
    _variant(src, dest, ("model.safetensors",))
    data = (src / "model.safetensors").read_bytes()
    (dest / "model.safetensors").write_bytes(data[: len(data) // 2])
    return dest


def _vision_config(src, dest):
    def edit(c):
        c["vision_config"]["hidden_act"] = "relu"

    return _edit_config(src, dest, edit)


BAD_INPUT = {
    "no_config": (_no_config, r"has no config\.json: not a Hugging Face checkpoint directory"),
    # The message names the type and the class and lists the supported types (checked below).
    "unsupported_architecture": (
        _unsupported,
        r"unsupported architecture 'mistral3' "
        r"\(Mistral3ForConditionalGeneration\); supported model types: ",
    ),
    "missing_shard": (
        lambda s, d: _sharded(s, d, {}),
        rf"1 of the 2 shards named in {INDEX} are missing: {SHARDS[1]}$",
    ),
    "mismatched_shard": (
        lambda s, d: _sharded(s, d, {"model.norm.weight": np.ones(64, np.float32)}),
        rf"{SHARDS[1]} lacks 1 tensors that {INDEX} puts there, e\.g\. 'lm_head\.weight'",
    ),
    "bin_only": (_bin_only, r"has no \.safetensors weights \(found pytorch_model\.bin: only safetensors"),
    "truncated_safetensors": (_truncated, r"model\.safetensors is not a readable safetensors file: "),
    # Found before anything is written.
    "vision_config_clip_cannot_run": (_vision_config, r"cannot write the mmproj: .*'relu'"),
    # Found after the text model is written, which must not stay behind alone.
    "vision_tensor_missing": (
        lambda s, d: _without_tensor(s, d, "model.connector.modality_projection.proj.weight"),
        r"lacks 1 vision tensors, first: \['mm\.model\.fc\.weight'\]",
    ),
}


def assert_refused(proc: subprocess.CompletedProcess, pattern: str, out: Path) -> str:
    """Exit status 1, one line on stderr matching `pattern`, nothing in `out`."""
    assert proc.returncode == 1, (proc.returncode, proc.stderr)
    lines = proc.stderr.splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    # Refused up front: the error is all. Refused late: after the one progress line.
    assert lines == errors or (len(lines) == 2 and lines[1] == errors[0]), proc.stderr
    assert re.search(pattern, errors[0]), errors[0]
    assert proc.stdout == ""
    assert listing(out) == [], f"left behind: {listing(out)}"
    return errors[0]


@pytest.mark.parametrize("case", sorted(BAD_INPUT))
def test_bad_input_is_refused_in_one_line(checkpoints, case, tmp_path):
    make, pattern = BAD_INPUT[case]
    folder = make(checkpoints["smolvlm"].path, tmp_path / "smolvlm")
    out = tmp_path / "out"
    line = assert_refused(run_convert(folder, "-o", out, "--outtype", "f32"), pattern, out)
    if case == "unsupported_architecture":
        assert all(t in line for t in ("qwen2_5_vl", "qwen2_vl", "smolvlm", *supported_model_types()))


def test_existing_output_needs_force(checkpoints, tmp_path):
    """An existing output is refused (untouched, and the other file not
    written) unless --force, which replaces it."""
    ckpt = checkpoints["smolvlm"]
    text = tmp_path / "smolvlm-F32.gguf"
    text.write_bytes(b"an older conversion")
    proc = run_convert(ckpt.path, "-o", tmp_path, "--outtype", "f32")
    assert proc.returncode == 1 and proc.stderr.splitlines() == [f"error: {text} exists; pass --force to overwrite it"]
    assert listing(tmp_path) == [text.name] and text.read_bytes() == b"an older conversion"

    proc = run_convert(ckpt.path, "-o", tmp_path, "--outtype", "f32", "--force")
    assert proc.returncode == 0, proc.stderr
    assert listing(tmp_path) == sorted([text.name, "mmproj-smolvlm-F32.gguf"])
    assert Gguf.read(text).value("general.architecture") == "llama"


def test_without_torch_the_cli_says_what_to_install(checkpoints, tmp_path):
    """torch is the [convert] extra: where it is missing (here a stand-in that
    fails to import comes first on the path), the CLI says so, not that the
    weights are unreadable."""
    stand_in = tmp_path / "no_torch"
    stand_in.mkdir()
    (stand_in / "torch.py").write_text("raise ModuleNotFoundError(\"No module named 'torch'\", name='torch')\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(stand_in), os.environ.get("PYTHONPATH")])))
    out = tmp_path / "out"
    proc = finish(start_convert(checkpoints["smolvlm"].path, "-o", out, env=env))
    assert_refused(
        proc,
        r"^error: conversion needs torch and safetensors \(torch is missing\): "
        r"pip install 'htsparse-llama\[convert\]'$",
        out,
    )


def test_no_mmproj_writes_the_text_model_only(checkpoints, cli_f32, tmp_path):
    proc = run_convert(
        checkpoints["smolvlm"].path, "-o", tmp_path, "--outtype", "f32", "--no-mmproj", "--name", "SmolVLM2-tiny"
    )
    assert proc.returncode == 0, proc.stderr
    text = tmp_path / "SmolVLM2-tiny-F32.gguf"
    assert listing(tmp_path) == [text.name]
    ours, other = Gguf.read(text), Gguf.read(cli_f32["smolvlm"].text)
    assert proc.stdout.splitlines() == [summary_line(ours)]
    assert proc.stderr.rstrip().endswith("-> llama GGUF (f32)")  # no "+ mmproj"
    # The tensors of the CLI's other f32 file, under the name given.
    assert ours.value("general.name") == "SmolVLM2-tiny"
    assert ours.tensors == other.tensors and ours.data() == other.data()


# -- 4. the text GGUF against upstream's converter ---------------------------------------------------


@dataclass
class UpstreamText:
    """Upstream's text GGUFs, being written in the background."""

    folder: Path
    pending: Optional["Future[None]"] = None
    unavailable: Optional[UpstreamUnavailable] = None

    def path(self, model_type: str, out_type: str) -> Path:
        """Upstream's file for (model_type, out_type), once they are all written."""
        if self.unavailable is not None:
            pytest.skip(f"no network to fetch upstream's converter: {self.unavailable}")
        self.pending.result()
        return self.folder / f"{model_type}-{out_type}.gguf"


@pytest.fixture(scope="module")
def upstream_text(checkpoints, tmp_path_factory) -> Iterator[UpstreamText]:
    """Upstream's text GGUF of every (model_type, out_type): one converter
    process for all, run in the background (~40 s of one core, mostly
    upstream reading the 150k-token vocabulary) while the other tests run."""
    up = UpstreamText(tmp_path_factory.mktemp("upstream_text"))
    try:
        converter = upstream_converter_dir()
    except UpstreamUnavailable as exc:
        up.unavailable = exc
        yield up
        return
    jobs = [converter_args(checkpoints[m].path, up.folder / f"{m}-{t}.gguf", t) for m in MODEL_TYPES for t in OUT_TYPES]
    with ThreadPoolExecutor(max_workers=1) as pool:  # leaving it waits for the process
        up.pending = pool.submit(run_upstream_converter, converter, jobs)
        yield up


@pytest.fixture(scope="module", autouse=True)
def _upstream_starts_first(request) -> None:
    """Starts upstream_text before the first test when a selected test needs it."""
    if any("upstream_text" in item.fixturenames for item in request.session.items if item.module is request.module):
        request.getfixturevalue("upstream_text")


@pytest.fixture(scope="module")
def hf_vocabs(checkpoints) -> Dict[str, Any]:
    """model_type -> its tokenizer as GGUF keys (tokenizer.json, or Gemma's tokenizer.model), read once."""
    return {m: checkpoint_vocab(ckpt.path, ckpt.n_vocab, GGUF_ARCH[m]) for m, ckpt in checkpoints.items()}


@pytest.mark.parametrize("out_type", OUT_TYPES)
@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_text_gguf_same_as_upstream_converter(
    checkpoints, cli_f32, hf_vocabs, upstream_text, model_type, out_type, tmp_path
):
    """Same metadata keys, values and value types; same tensors (names, ggml
    shapes, types, order) and bytes. f32 is the CLI's file; the others are
    written by write_text_gguf from the checkpoint as convert_checkpoint
    (behind the CLI) opens it, with the tokenizer read once (~2 s a time)."""
    if out_type == "f32":
        ours_path = cli_f32[model_type].text
    else:
        ckpt = open_checkpoint(checkpoints[model_type].path)
        ours_path = write_text_gguf(
            tmp_path / "ours.gguf",
            ckpt.tensors,
            ckpt.config,
            vocab_from=hf_vocabs[model_type],
            out_type=out_type,
            name=model_type,
        )
    ours, theirs = Gguf.read(ours_path), Gguf.read(upstream_text.path(model_type, out_type))
    if model_type == "gemma3":
        # Ours alone says which layers have windows: the tiny model's are not
        # llama.cpp's 5:1 default, which upstream's file leaves it to assume.
        key = "gemma3.attention.sliding_window_pattern"
        assert ours.meta.pop(key)[0] == [False, True, True, False, True] and key not in theirs.meta

    assert ours.value("general.name") == model_type
    meta_ours, meta_theirs = (
        {k: v for k, v in g.meta.items() if k not in UPSTREAM_IGNORED_KEYS} for g in (ours, theirs)
    )
    assert sorted(meta_ours) == sorted(meta_theirs), {
        "only ours": sorted(set(meta_ours) - set(meta_theirs)),
        "only upstream": sorted(set(meta_theirs) - set(meta_ours)),
    }
    differing = {k: (str(meta_ours[k])[:160], str(v)[:160]) for k, v in meta_theirs.items() if meta_ours[k] != v}
    assert not differing, differing
    assert list(ours.tensors.items()) == list(theirs.tensors.items())
    data_ours, data_theirs = ours.data(), theirs.data()
    assert [name for name in data_theirs if data_ours[name] != data_theirs[name]] == []

    # What the equality covered, so that a key both sides lack would show.
    n_vocab, arch = checkpoints[model_type].n_vocab, GGUF_ARCH[model_type]
    assert ours.value("general.file_type") == {"f32": 0, "f16": 1, "bf16": 32, "q8_0": 7}[out_type]
    assert ours.value("general.type") == "model"
    assert ours.value("general.quantization_version") == gguf.GGML_QUANT_VERSION
    n_layer = checkpoints[model_type].model.config.get_text_config().num_hidden_layers
    assert ours.value(f"{arch}.block_count") == n_layer and len(ours.value("tokenizer.ggml.tokens")) == n_vocab
    if arch == "qwen2vl":
        assert ours.value("qwen2vl.rope.dimension_sections") == [2, 3, 3, 0]
        assert ours.value("qwen2vl.attention.layer_norm_rms_epsilon") == QWEN_RMS_EPS
    elif arch in ("qwen3", "qwen3vl"):
        assert ours.value(f"{arch}.attention.key_length") == 32 and ours.value(f"{arch}.attention.value_length") == 32
        assert ours.types()["blk.0.attn_q_norm.weight"] == gguf.GGMLQuantizationType.F32
        assert ours.value(f"{arch}.attention.layer_norm_rms_epsilon") == pytest.approx(1e-2)
        if arch == "qwen3":
            assert "output.weight" not in ours.tensors  # tied
        else:  # interleaved M-RoPE sections, DeepStack depth, an output matrix of its own
            assert ours.value("qwen3vl.rope.dimension_sections") == [4, 6, 6, 0]
            assert ours.value("qwen3vl.n_deepstack_layers") == 2 and "output.weight" in ours.tensors
            assert not any(name.startswith(("v.", "mm.")) for name in ours.tensors)  # the tower is the mmproj's
    elif arch == "gemma3":  # the tokenizer.model as llama.cpp's SentencePiece vocabulary, the window pattern
        assert ours.value("tokenizer.ggml.model") == "llama" and ours.value("tokenizer.ggml.add_space_prefix") is False
        assert ours.value("gemma3.rope.freq_base_swa") == 10000.0 and ours.value("gemma3.rope.freq_base") == 1e6
        assert not any(name.startswith(("v.", "mm.")) for name in ours.tensors)
    else:
        assert ours.value("llama.vocab_size") == n_vocab and ours.value("llama.rope.dimension_count") == 16
        assert ours.value("llama.attention.layer_norm_rms_epsilon") == pytest.approx(1e-2)
    types, matrix = ours.types(), gguf.GGMLQuantizationType[out_type.upper()]
    assert types["blk.0.ffn_up.weight"] == matrix and types["token_embd.weight"] == matrix
    assert types["blk.0.attn_norm.weight"] == gguf.GGMLQuantizationType.F32
