"""Calibration (DESIGN.md section 4): run a GGUF through our runtime on
retrieval prompts with a sparse span, measure what HT-Sparse would select at
every layer, and write a copy of the GGUF carrying the htsparse.* keys that
the runtime then reads as its defaults.

    from htsparse_convert.calibrate import calibrate

    result = calibrate("model.gguf", "model-htsparse.gguf")

What is measured, per prompt: the whole prompt runs densely once with the
question's queries captured; then the runtime's own selection step runs for
every candidate select layer S (without compacting anything), and records
whether the kept lines hold the needle, and every (layer, KV head)'s
saliency score. The chosen select layer is the earliest whose needle recall
reaches `min_recall` (an early S is what makes prefill cheap); prune layer =
select layer (the benchmark's fastest setting at equal accuracy); the head
prior is the mean, over prompts, of each prompt's scores scaled to its
largest. Text prompts only for now: video calibration needs the video path.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import gguf
import numpy as np

from .atomic import atomic_path
from .text_gguf import add_metadata_value

PathLike = Union[str, "os.PathLike[str]"]

CALIBRATION_VERSION = 1
DEFAULT_FULL_HEAD_RATIO = 0.25  # the runtime's own default; the text tasks do not separate values


@dataclass
class Calibration:
    """What calibration measured and chose."""

    select_layer: int
    prune_layer: int
    keep_ratio: float
    full_head_ratio: float
    head_prior: np.ndarray              # [n_layer, n_head_kv], largest 1
    recall_by_layer: List[float]        # needle recall of a selection at each layer
    task: str                           # what data: "text:passkey", "video:needle-frame"
    n_samples: int
    n_tokens: int                       # tokens per calibration prompt
    notes: List[str] = field(default_factory=list)

    def metadata(self) -> Dict[str, Any]:
        """The htsparse.* keys (names as in htsparse_llama.sparse_config.GGUF_KEYS)."""
        return {
            "htsparse.version": CALIBRATION_VERSION,
            "htsparse.select_layer": self.select_layer,
            "htsparse.prune_layer": self.prune_layer,
            "htsparse.keep_ratio": float(self.keep_ratio),
            "htsparse.full_head_ratio": float(self.full_head_ratio),
            "htsparse.head_prior": [float(v) for v in self.head_prior.reshape(-1)],
            "htsparse.calibration.data": self.task,
            "htsparse.calibration.samples": self.n_samples,
            "htsparse.calibration.tokens": self.n_tokens,
            "htsparse.calibration.recall_by_layer": [float(r) for r in self.recall_by_layer],
        }

    def line(self) -> str:
        recall = self.recall_by_layer[self.select_layer]
        return (f"select layer {self.select_layer} (needle recall {recall:.2f} over {self.n_samples} {self.task} "
                f"prompts of {self.n_tokens} tokens, keep {self.keep_ratio:g}), prune layer {self.prune_layer}, "
                f"full heads {self.full_head_ratio:g}")


def recall_and_scores(native, spans: List[tuple], needle: set, keep_ratio: float, q_window: int,
                      n_layer: int) -> tuple:
    """On a session whose last eval captured the question's queries (dense
    cache): whether the selection at each layer S keeps every `needle` token
    of the span(s), and every (layer, KV head)'s saliency score."""

    def select(layer: int, prune_layer: int) -> Dict[str, Any]:
        # Saliency is measured for layers [0, max(S + 1, P)): P = S measures no more than S needs.
        request = {"keep_ratio": keep_ratio, "select_layer": layer, "prune_layer": prune_layer, "q_window": q_window}
        return native._select_sparse(spans, request, False)  # the runtime's own step, without compaction

    kept_at = [needle <= set(select(layer, layer)["kept_in_span"]) for layer in range(n_layer - 1)]
    last = select(n_layer - 1, n_layer)  # every layer's head scores
    kept_at.append(needle <= set(last["kept_in_span"]))
    return kept_at, np.asarray(last["kv_head_score"], dtype=np.float64)


def _measure_prompt(model, prompt, keep_ratio: float, q_window: int) -> tuple:
    """One text prompt: needle kept at each select layer, and the KV-head scores."""
    s = model.session(n_ctx=len(prompt.prefix) + len(prompt.span) + len(prompt.suffix) + 16)
    native = s._native
    s.add_tokens(prompt.prefix + prompt.span)
    native._set_query_capture(min(len(prompt.suffix), q_window))
    native.eval(prompt.suffix, False)
    native._set_query_capture(0)
    begin = len(prompt.prefix)
    spans = [(begin, begin + len(prompt.span), list(prompt.seg_starts))]
    return recall_and_scores(native, spans, set(prompt.needle), keep_ratio, q_window, model.n_layer)


def choose(model, results: List[tuple], *, keep_ratio: float, min_recall: float, data: str,
           n_tokens: int) -> Calibration:
    """The calibration from per-prompt (kept_at, scores): the earliest layer
    reaching min_recall, and the mean of the per-prompt scores scaled to 1."""
    recall = np.mean([np.asarray(kept, dtype=np.float64) for kept, _ in results], axis=0)
    prior = np.mean([scores / max(float(scores.max()), 1e-30) for _, scores in results], axis=0)
    prior /= max(float(prior.max()), 1e-30)
    notes = []
    reaching = [layer for layer in range(model.n_layer) if recall[layer] >= min_recall]
    if reaching:
        select = reaching[0]
    else:
        select = int(np.argmax(recall))
        notes.append(f"no layer reached needle recall {min_recall:g}; the best ({recall[select]:.2f}) was chosen")
    return Calibration(select, select, keep_ratio, DEFAULT_FULL_HEAD_RATIO, prior.astype(np.float32),
                       [float(r) for r in recall], data, len(results), n_tokens, notes)


def measure(model, *, task: str = "passkey", n_samples: int = 4, context: int = 1024, keep_ratio: float = 0.1,
            min_recall: float = 0.95, q_window: int = 64, seed: int = 0,
            progress: Callable[[int, int], Any] = lambda i, n: None) -> Calibration:
    """Calibrates an htsparse_llama.Model on `n_samples` text prompts."""
    from htsparse_llama.bench_sparse import lines_for_context
    from htsparse_llama.bench_tasks import TASKS

    if task not in ("passkey", "multikey"):
        raise ValueError(f"calibration task must be passkey or multikey, got {task!r}")
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    if not 0.0 < keep_ratio <= 1.0:
        raise ValueError(f"keep_ratio must be in (0, 1], got {keep_ratio}")
    n_lines = lines_for_context(model, task, context)
    results, n_tokens = [], 0
    for i in range(n_samples):
        prompt = TASKS[task](model, seed=seed + 7 * i + 1, n_lines=n_lines)
        n_tokens = len(prompt.prefix) + len(prompt.span) + len(prompt.suffix)
        results.append(_measure_prompt(model, prompt, keep_ratio, q_window))
        progress(i + 1, n_samples)
    return choose(model, results, keep_ratio=keep_ratio, min_recall=min_recall, data=f"text:{task}",
                  n_tokens=n_tokens)


# -- writing --------------------------------------------------------------------------------------

def write_calibrated_gguf(src: PathLike, dst: PathLike, metadata: Dict[str, Any]) -> List[str]:
    """A copy of `src` with `metadata` (htsparse.* keys) added; every
    htsparse.* key `src` had is dropped first. Tensors are copied byte for
    byte. `dst` appears only once complete. Returns the keys replaced."""
    reader = gguf.GGUFReader(str(src))
    arch = reader.fields[gguf.Keys.General.ARCHITECTURE].contents()
    replaced = []
    with atomic_path(dst) as tmp:
        writer = gguf.GGUFWriter(str(tmp), arch, endianess=reader.endianess)
        writer.data_alignment = reader.alignment
        try:
            for fld in reader.fields.values():
                if fld.name == gguf.Keys.General.ARCHITECTURE or fld.name.startswith("GGUF."):
                    continue  # the writer writes these itself
                if fld.name.startswith("htsparse."):
                    replaced.append(fld.name)
                    continue
                val_type = fld.types[0]
                sub_type = fld.types[-1] if val_type == gguf.GGUFValueType.ARRAY else None
                writer.add_key_value(fld.name, fld.contents(), val_type, sub_type=sub_type)
            for key, value in metadata.items():
                add_metadata_value(writer, key, value)
            for t in reader.tensors:
                writer.add_tensor_info(t.name, t.data.shape, t.data.dtype, t.data.nbytes, t.tensor_type)
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_ti_data_to_file()
            for t in reader.tensors:
                writer.write_tensor_data(t.data, tensor_endianess=reader.endianess)
        finally:
            writer.close()
    return replaced


def calibrate(model_path: PathLike, out_path: PathLike, *, force: bool = False, n_threads: Optional[int] = None,
              log: Callable[[str], Any] = lambda _msg: None, mmproj: Optional[PathLike] = None,
              videos: Sequence[PathLike] = (), **measure_args: Any) -> Calibration:
    """Measures `model_path` and writes `out_path` with the htsparse.* keys:
    on text prompts (measure's arguments), or with `mmproj` on needle-frame
    prompts made from `videos` (default: the clip shipped with the package)."""
    from htsparse_llama import Model

    out = Path(out_path)
    if out.exists() and not force:
        raise FileExistsError(f"{out} exists; pass --force to overwrite it")
    if Path(model_path).resolve() == out.resolve():
        raise ValueError("the output must be another file than the input")
    if mmproj is None:
        model = Model(str(model_path), n_ctx=int(measure_args.get("context", 1024)) + 512, n_threads=n_threads)
        result = measure(model, **measure_args)
    else:
        from htsparse_llama.video_frames import sample_clip_path
        from htsparse_llama.vision import Vision

        from .calibrate_video import measure_video

        model = Model(str(model_path), n_threads=n_threads)
        vision = Vision(model, mmproj, n_threads=n_threads)
        video_args = {k: v for k, v in measure_args.items() if k not in ("task", "context")}
        result = measure_video(model, vision, [str(v) for v in videos] or [str(sample_clip_path())], **video_args)
    replaced = write_calibrated_gguf(model_path, out, result.metadata())
    if replaced:
        log(f"{model_path} already had {len(replaced)} htsparse keys; they were replaced")
    for note in result.notes:
        log(f"note: {note}")
    return result
