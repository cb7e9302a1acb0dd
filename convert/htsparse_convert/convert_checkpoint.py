"""A Hugging Face checkpoint directory -> a text GGUF (+ an mmproj GGUF for a
VLM), the files llama.cpp's own converter would make, in one call:

    from htsparse_convert.convert_checkpoint import convert_checkpoint

    result = convert_checkpoint("Qwen2.5-VL-3B-Instruct/", "out/", out_type="Q4_K_M")
    print(result.summary())

f32, f16, bf16 and q8_0 are written directly; the k-quants (Q4_K_M, Q5_K_M,
Q6_K) are an f16 file quantized by the installed libllama. The mmproj is
written in the same type when the type is a plain one, else in f16 (vision
towers are small, and k-quants would cost them accuracy for little memory).
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

from .atomic import atomic_path
from .checkpoint import Checkpoint, CheckpointError, open_checkpoint
from .hf_vocab import HfVocab
from .mmproj_gguf import vision_hparams, write_mmproj_gguf
from .quantize import K_QUANTS, quantize_gguf
from .spm_vocab import SPM_ARCHS, SpmVocab
from .text_gguf import ARCHITECTURES, OUT_TYPES, arch_spec, gguf_tensor_name, read_gguf_header, write_text_gguf

PathLike = Union[str, "os.PathLike[str]"]
ALL_OUT_TYPES = tuple(OUT_TYPES) + tuple(K_QUANTS)


@dataclass
class OutputFile:
    """What one written GGUF holds."""

    path: Path
    n_tensors: int
    types: Dict[str, int]  # tensor type name -> count
    n_bytes: int

    @classmethod
    def read(cls, path: Path) -> "OutputFile":
        _, tensors = read_gguf_header(path)
        return cls(path, len(tensors), dict(Counter(t.type.name for t in tensors)), path.stat().st_size)

    def line(self) -> str:
        types = ", ".join(f"{n} {t}" for t, n in sorted(self.types.items(), key=lambda kv: -kv[1]))
        return f"{self.path}: {self.n_tensors} tensors ({types}), {self.n_bytes / 2**20:.1f} MiB"


@dataclass
class ConvertResult:
    text: OutputFile
    mmproj: Optional[OutputFile]

    def summary(self) -> str:
        return "\n".join(f.line() for f in (self.text, self.mmproj) if f is not None)


def supported_model_types() -> List[str]:
    """The config model_types this converter reads (text and VLM)."""
    return sorted(k for k in ARCHITECTURES if k[:1].islower())


def _spec(ckpt: Checkpoint):
    try:
        return arch_spec(ckpt.config)
    except ValueError:
        raise CheckpointError(
            f"{ckpt.path}: unsupported architecture {ckpt.model_type!r} "
            f"({', '.join(ckpt.config.get('architectures') or []) or 'no architectures listed'}); "
            f"supported model types: {', '.join(supported_model_types())}"
        ) from None


def _has_vision(ckpt: Checkpoint, spec) -> bool:
    return any(name.startswith(spec.skip_prefixes) for name in ckpt.tensors) if spec.skip_prefixes else False


def _embedding_rows(ckpt: Checkpoint, spec) -> int:
    for name in ckpt.tensors:
        if not name.startswith(spec.skip_prefixes or ("\0",)) and gguf_tensor_name(spec, name) == "token_embd.weight":
            return int(ckpt.tensors.shape(name)[0])
    raise CheckpointError(f"{ckpt.path}: no token embedding (embed_tokens.weight) among the tensors")


def output_paths(
    ckpt: Checkpoint, outdir: Path, out_type: str, name: str, with_mmproj: bool
) -> Tuple[Path, Optional[Path]]:
    """<name>-<TYPE>.gguf and mmproj-<name>-<type>.gguf, as llama.cpp's releases name them."""
    text = outdir / f"{name}-{out_type.upper()}.gguf"
    mmproj = outdir / f"mmproj-{name}-{mmproj_type(out_type).upper()}.gguf" if with_mmproj else None
    return text, mmproj


def mmproj_type(out_type: str) -> str:
    return out_type if out_type in OUT_TYPES else "f16"


def checkpoint_vocab(folder: Path, n_vocab: int, arch: str) -> Union[HfVocab, SpmVocab]:
    """The checkpoint's tokenizer as upstream reads it: Gemma 3's tokenizer.model
    through sentencepiece when it has one, else tokenizer.json (byte-level BPE)."""
    if arch in SPM_ARCHS and (folder / "tokenizer.model").is_file():
        return SpmVocab(folder, n_vocab=n_vocab, arch=arch)
    return HfVocab(folder, n_vocab=n_vocab)


class _Progress:
    """A tqdm bar over tensors loaded, when asked for (and tqdm is there)."""

    def __init__(self, total: int, desc: str, enabled: bool) -> None:
        self.bar = None
        if enabled:
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total, desc=desc, unit="tensor", leave=False)
            except ImportError:
                pass

    def tick(self, _name: str) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _write_text(
    ckpt: Checkpoint, path: Path, out_type: str, name: str, n_threads: int, progress: bool, verbose: bool
) -> None:
    spec = _spec(ckpt)
    vocab = checkpoint_vocab(ckpt.path, _embedding_rows(ckpt, spec), spec.gguf_arch)
    n_text = sum(1 for n in ckpt.tensors if not (spec.skip_prefixes and n.startswith(spec.skip_prefixes)))
    bar = _Progress(n_text, f"text model ({out_type})", progress)
    ckpt.tensors.on_load = bar.tick
    try:
        if out_type not in K_QUANTS:
            write_text_gguf(path, ckpt.tensors, ckpt.config, vocab_from=vocab, out_type=out_type, name=name)
            return
        f16 = path.with_name(f".{path.name}.{os.getpid()}.f16.tmp")
        try:
            write_text_gguf(f16, ckpt.tensors, ckpt.config, vocab_from=vocab, out_type="f16", name=name)
            bar.close()
            quantize_gguf(f16, path, out_type, n_threads, verbose=verbose)
        finally:
            f16.unlink(missing_ok=True)
    finally:
        ckpt.tensors.on_load = None
        bar.close()


def _check_mmproj(ckpt: Checkpoint) -> None:
    """Raises on a vision config clip.cpp cannot run, before anything is written."""
    try:
        vision_hparams(ckpt.config, ckpt.json_file("preprocessor_config.json"))
    except ValueError as exc:
        raise CheckpointError(f"{ckpt.path}: cannot write the mmproj: {exc}") from None


def _write_mmproj(ckpt: Checkpoint, path: Path, out_type: str, name: str, progress: bool) -> None:
    spec = _spec(ckpt)
    n_vision = sum(1 for n in ckpt.tensors if n.startswith(spec.skip_prefixes))
    bar = _Progress(n_vision, f"vision tower ({out_type})", progress)
    ckpt.tensors.on_load = bar.tick
    try:
        write_mmproj_gguf(
            path,
            ckpt.tensors,
            ckpt.config,
            preprocessor=ckpt.json_file("preprocessor_config.json"),
            out_type=out_type,
            name=name,
        )
    finally:
        ckpt.tensors.on_load = None
        bar.close()


def convert_checkpoint(
    model_dir: PathLike,
    outdir: Optional[PathLike] = None,
    *,
    out_type: str = "f16",
    name: Optional[str] = None,
    mmproj: Optional[bool] = None,
    force: bool = False,
    n_threads: int = 0,
    progress: bool = False,
    verbose: bool = False,
    log: Callable[[str], Any] = lambda _msg: None,
) -> ConvertResult:
    """Converts an HF checkpoint directory; returns what was written.

    outdir: where the files go (default: the checkpoint directory). name: the
    file stem (default: the directory's name). mmproj: write the vision tower
    too (default: when the checkpoint has one). Existing outputs are refused
    unless force. Raises CheckpointError (a ValueError) for a directory that
    cannot be converted, before anything is written. The outputs appear
    together once both are complete: a failure leaves neither (and an
    existing file that force would replace stays as it was). verbose: show
    libllama's log while it quantizes.
    """
    if out_type not in ALL_OUT_TYPES:
        raise ValueError(f"unknown output type {out_type!r}; choose one of {', '.join(ALL_OUT_TYPES)}")
    ckpt = open_checkpoint(model_dir)
    spec = _spec(ckpt)
    has_vision = _has_vision(ckpt, spec)
    if mmproj and not has_vision:
        raise CheckpointError(f"{ckpt.path}: the checkpoint has no vision tower, so there is no mmproj to write")
    with_mmproj = has_vision if mmproj is None else mmproj
    outdir = Path(outdir) if outdir is not None else ckpt.path
    name = name or ckpt.path.resolve().name
    text_path, mmproj_path = output_paths(ckpt, outdir, out_type, name, with_mmproj)
    existing = [p for p in (text_path, mmproj_path) if p is not None and p.exists()]
    if existing and not force:
        raise FileExistsError(f"{existing[0]} exists; pass --force to overwrite it")
    if with_mmproj:
        _check_mmproj(ckpt)
    import torch  # noqa: F401  (LazyTensors reads through it: an ImportError now, before anything is written)

    outdir.mkdir(parents=True, exist_ok=True)
    log(
        f"{ckpt.model_type}: {len(ckpt.tensors)} tensors -> {spec.gguf_arch} GGUF ({out_type})"
        + (" + mmproj" if with_mmproj else "")
    )
    # The text file waits under a hidden name until the mmproj is written too,
    # so that a failing vision tower does not leave a text model alone.
    with atomic_path(text_path) as staged:
        _write_text(ckpt, staged, out_type, name, n_threads, progress, verbose)
        if mmproj_path is not None:
            _write_mmproj(ckpt, mmproj_path, mmproj_type(out_type), name, progress)
    mm = OutputFile.read(mmproj_path) if mmproj_path is not None else None
    return ConvertResult(OutputFile.read(text_path), mm)
