"""`--max-visual-tokens auto`: the visual-token budget from the memory the
user has. The most visual tokens whose peak KV under the session's plan fits
the device's free memory (ggml's figure; the system's for the CPU), less a
margin, and within the model's trained context:

- HT-Sparse: before the selection, layers [0, P] hold every token (the
  layers after P only the text), so the peak is about (P + 1) / L of the
  dense KV of the prompt (docs/architecture.md#memory-plan);
- dense: every layer holds every token.

So on the same machine a sparse chat takes several times the frames of a
dense one. The weights are loaded already (free memory is what is left);
compute buffers, the vision tower and the frames in flight take the margin.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional

from ..errors import VideoError
from ..model import Model

MARGIN = 0.25  # of the free memory, kept back (compute buffers, the vision tower, frames in flight)
FIXED_MARGIN = 256 << 20  # bytes kept back whatever the device
TEXT_RESERVE = 1024  # tokens of the conversation beside the video (system, question, answer)


@dataclass(frozen=True)
class Budget:
    """A visual-token budget and why."""

    tokens: int
    reason: str


def _size(n: float) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n:.0f} B"


def kv_share(model: Model, settings: Optional[Dict[str, Any]]) -> float:
    """The share of a dense cache's bytes per token the peak holds: (P + 1) / L
    for HT-Sparse with prune layer P (settings: SparseConfig.resolve()'s), 1 dense."""
    if settings is None:
        return 1.0
    return min(model.n_layer, int(settings["prune_layer"]) + 1) / model.n_layer


def auto_budget(model: Model, settings: Optional[Dict[str, Any]], free_bytes: Optional[int] = None) -> Budget:
    """The budget for `model` (its device's free memory unless `free_bytes`),
    under HT-Sparse `settings` or dense (None). VideoError when nothing fits."""
    free = model.device_memory()[0] if free_bytes is None else int(free_bytes)
    usable = free * (1 - MARGIN) - FIXED_MARGIN
    share = kv_share(model, settings)
    per_token = model.kv_bytes_per_token * share
    by_memory = int(usable // per_token) - TEXT_RESERVE if usable > 0 else 0
    by_context = int(model.info["n_ctx_train"]) - TEXT_RESERVE
    plan = (
        "dense: every layer holds every token"
        if settings is None
        else (
            f"HT-Sparse: layers 0..{settings['prune_layer']} of {model.n_layer} hold every token until the selection, "
            f"{share:.2f} of the dense KV"
        )
    )
    if by_memory < 1:
        raise VideoError(
            f"{_size(free)} free on {model.device} hold no visual token ({plan}, "
            f"{_size(per_token)} per token, {MARGIN:.0%} and {_size(FIXED_MARGIN)} kept back); free memory, "
            "or give --max-visual-tokens N"
        )
    tokens = min(by_memory, by_context)
    why = (
        "the model's trained context"
        if tokens == by_context
        else f"{_size(free)} free on {model.device}, {MARGIN:.0%} and {_size(FIXED_MARGIN)} kept back"
    )
    return Budget(tokens, f"visual-token budget {tokens} ({why}; {plan}, {_size(per_token)} per token)")
