"""Calibration (docs/architecture.md#calibration-metadata): run a GGUF through
the runtime on prompts whose needle is known, measure what HT-Sparse would
select at every layer, and write a copy of the GGUF carrying the htsparse.*
keys that the runtime then reads as its defaults.

    from htsparse_llama.calibrate import calibrate

    result = calibrate("model.gguf", "model-htsparse.gguf")

What is measured, per prompt: a sparse session whose span runs every layer
(prune_layer = L) gets the prompt; then the runtime's own selection runs for
every candidate select layer (Session.trial_selections, compacting nothing)
and records whether the kept segments hold the needle, and every (layer, KV
head)'s saliency score. result.py holds the rule that chooses. The file is
written by the converter's GGUF writer (htsparse_convert.write_gguf_with_metadata),
tensors copied unchanged; this package uses only the runtime's public API.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

from htsparse_convert import write_gguf_with_metadata

from ..model import Model
from ..video.frames import sample_clip_path
from ..vision import Vision
from .result import Calibration
from .text import measure
from .video import measure_video

PathLike = Union[str, "os.PathLike[str]"]

__all__ = ["Calibration", "calibrate", "measure", "measure_video"]


def calibrate(
    model_path: PathLike,
    out_path: PathLike,
    *,
    force: bool = False,
    n_threads: Optional[int] = None,
    log: Callable[[str], Any] = lambda _msg: None,
    mmproj: Optional[PathLike] = None,
    videos: Sequence[PathLike] = (),
    **measure_args: Any,
) -> Calibration:
    """Measures `model_path` and writes `out_path` with the htsparse.* keys:
    on text prompts (measure's arguments), or with `mmproj` on needle-frame
    prompts made from `videos` (default: the clip shipped with the package)."""
    out = Path(out_path)
    if out.exists() and not force:
        raise FileExistsError(f"{out} exists; pass --force to overwrite it")
    if Path(model_path).resolve() == out.resolve():
        raise ValueError("the output must be another file than the input")
    if mmproj is None:
        model = Model(str(model_path), n_ctx=int(measure_args.get("context", 1024)) + 512, n_threads=n_threads)
        result = measure(model, **measure_args)
    else:
        model = Model(str(model_path), n_threads=n_threads)
        vision = Vision(model, mmproj, n_threads=n_threads)
        video_args = {k: v for k, v in measure_args.items() if k not in ("task", "context")}
        result = measure_video(model, vision, [str(v) for v in videos] or [str(sample_clip_path())], **video_args)
    replaced = write_gguf_with_metadata(model_path, out, result.metadata(), replace_prefix="htsparse.")
    if replaced:
        log(f"{model_path} already had {len(replaced)} htsparse keys; they were replaced")
    for note in result.notes:
        log(f"note: {note}")
    return result
