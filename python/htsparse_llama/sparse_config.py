"""HT-Sparse settings of a session (DESIGN.md section 4).

A field left at None comes from the GGUF's `htsparse.*` calibration keys when
the file has them, else from the runtime's built-in defaults; `resolve()`
shows what a model would use. The key names below mirror
runtime/src/sparse_config.h (a test checks they agree).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Dict, Optional

GGUF_KEYS = (
    "htsparse.version",
    "htsparse.select_layer",
    "htsparse.prune_layer",
    "htsparse.keep_ratio",
    "htsparse.full_head_ratio",
    "htsparse.q_window",
    "htsparse.head_prior",
    "htsparse.calibration.",  # prefix of the keys that say what calibration used
)


@dataclass
class SparseConfig:
    """What HT-Sparse keeps, and where.

    keep_ratio: share of each sparse span's tokens kept, in (0, 1].
    keep_mass: if > 0, keep instead the fewest segments holding this share of
        the attention score.
    token_keep: token-level cut inside the kept segments, in (0, 1].
    full_head_ratio: share of KV heads that keep the whole span, in [0, 1].
    select_layer: layer S where saliency and selection run, in [0, L].
    prune_layer: layer P from which unselected tokens are not computed, in [S, L]
        (default S; L keeps every token and only routes KV heads). Full heads
        are chosen among the layers before P.
    q_window: query-window tokens (the question) used to score the span.
    segment_floor: keep at least one segment in each of this many equal
        stretches of a span (no stretch of a long video left blind).
    segment_tokens: text spans are cut at lines, and long lines into runs of
        at most this many tokens.
    reroute: re-run the selection for every follow-up question.
    """

    keep_ratio: Optional[float] = None
    keep_mass: float = 0.0
    token_keep: float = 1.0
    full_head_ratio: Optional[float] = None
    select_layer: Optional[int] = None
    prune_layer: Optional[int] = None
    q_window: Optional[int] = None
    segment_floor: int = 0
    segment_tokens: int = 32
    reroute: bool = False

    def resolve(self, model) -> Dict[str, Any]:
        """The settings `model` would run with (GGUF keys and defaults filled
        in); raises InvalidArgumentError for a value out of range."""
        from ._native_loader import native

        return dict(native.resolve_sparse_config(model._native, asdict(self)))
