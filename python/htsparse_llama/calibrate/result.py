"""What calibration measured and chose, and the rule that chooses: the
earliest select layer whose selection keeps the needle (recall >=
min_recall; an early S is what makes prefill cheap), prune layer = select
layer (the benchmark's fastest setting at equal accuracy), and the head prior
as the mean over prompts of each prompt's KV-head scores scaled to its
largest (docs/architecture.md#calibration-metadata)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np

CALIBRATION_VERSION = 1
DEFAULT_FULL_HEAD_RATIO = 0.25  # the runtime's own default; the text tasks do not separate values


@dataclass
class Calibration:
    """What calibration measured and chose."""

    select_layer: int
    prune_layer: int
    keep_ratio: float
    full_head_ratio: float
    head_prior: np.ndarray  # [n_layer, n_head_kv], largest 1
    recall_by_layer: List[float]  # needle recall of a selection at each layer
    task: str  # what data: "text:passkey", "video:needle-frame"
    n_samples: int
    n_tokens: int  # tokens per calibration prompt
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
        return (
            f"select layer {self.select_layer} (needle recall {recall:.2f} over {self.n_samples} {self.task} "
            f"prompts of {self.n_tokens} tokens, keep {self.keep_ratio:g}), prune layer {self.prune_layer}, "
            f"full heads {self.full_head_ratio:g}"
        )


def trial_zones(n_layer: int) -> List[Tuple[int, int]]:
    """(select, prune) layers tried: S = P at every layer but the last (P = S
    measures saliency no further than S needs), then (L - 1, L), whose
    saliency covers every layer's KV heads."""
    return [(layer, layer) for layer in range(n_layer - 1)] + [(n_layer - 1, n_layer)]


def recall_and_scores(session, needle: set) -> Tuple[List[bool], np.ndarray]:
    """On a sparse session whose first question waits after the span(s)
    (made with prune_layer = n_layer): whether the runtime's selection at
    each layer keeps every `needle` token of the span(s), and every
    (layer, KV head)'s saliency score."""
    trials = session.trial_selections(trial_zones(session.model.n_layer))
    kept_at = [needle <= set(t["kept_in_span"]) for t in trials]
    return kept_at, np.asarray(trials[-1]["kv_head_score"], dtype=np.float64)


def choose(
    n_layer: int,
    results: Sequence[Tuple[List[bool], np.ndarray]],
    *,
    keep_ratio: float,
    min_recall: float,
    data: str,
    n_tokens: int,
) -> Calibration:
    """The calibration from per-prompt (kept_at, scores)."""
    recall = np.mean([np.asarray(kept, dtype=np.float64) for kept, _ in results], axis=0)
    prior = np.mean([scores / max(float(scores.max()), 1e-30) for _, scores in results], axis=0)
    prior /= max(float(prior.max()), 1e-30)
    notes = []
    reaching = [layer for layer in range(n_layer) if recall[layer] >= min_recall]
    if reaching:
        select = reaching[0]
    else:
        select = int(np.argmax(recall))
        notes.append(f"no layer reached needle recall {min_recall:g}; the best ({recall[select]:.2f}) was chosen")
    return Calibration(
        select,
        select,
        keep_ratio,
        DEFAULT_FULL_HEAD_RATIO,
        prior.astype(np.float32),
        [float(r) for r in recall],
        data,
        len(results),
        n_tokens,
        notes,
    )


def check_settings(n_samples: int, keep_ratio: float) -> None:
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    if not 0.0 < keep_ratio <= 1.0:
        raise ValueError(f"keep_ratio must be in (0, 1], got {keep_ratio}")
