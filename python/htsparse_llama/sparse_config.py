"""HT-Sparse settings of a session (docs/architecture.md#ht-sparse-as-implemented).

Each field is an option (options.py): the same declaration makes the CLI
flags, the server's request fields and these keyword arguments. A field left
at None comes from the GGUF's `htsparse.*` calibration keys when the file has
them, else from the runtime's built-in defaults; `resolve()` shows what a
model would use (the runtime resolves and checks the model-dependent values,
runtime/src/sparse_config.cpp). The key names below mirror
runtime/src/sparse_config.h (a test checks they agree).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Dict, Mapping, Optional

from ._native_loader import native
from .options import Option, check_fields, option

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

    keep_ratio: Optional[float] = option(
        None, "share of the sparse span (the video) kept per question", lo=0, hi=1, lo_open=True
    )
    keep_mass: float = option(
        0.0,
        "instead, keep the fewest segments (lines, frames) holding this share of the attention (0: off)",
        lo=0,
        hi=1,
    )
    token_keep: float = option(
        1.0, "token-level cut inside the kept segments", lo=0, hi=1, lo_open=True, cli=False, request=False
    )
    full_head_ratio: Optional[float] = option(
        None, "share of KV heads that keep the whole span", lo=0, hi=1, flags=("--full-heads",), metavar="RATIO"
    )
    select_layer: Optional[int] = option(None, "layer where tokens are selected", lo=0)
    prune_layer: Optional[int] = option(
        None,
        "layer from which unselected tokens are not computed (default: the "
        "select layer; the layer count keeps every token and only routes KV "
        "heads)",
        lo=0,
    )
    q_window: Optional[int] = option(None, "query-window tokens used to score the span", lo=1, cli=False, request=False)
    segment_floor: int = option(
        0, "keep a segment in each of this many stretches of a span", lo=0, cli=False, request=False
    )
    segment_tokens: int = option(
        32, "text segments: lines, cut into runs of at most this many tokens", lo=1, cli=False, request=False
    )
    reroute: bool = option(
        False, "select anew for each follow-up question (keeps the layers before the select layer whole)", request=False
    )

    def __post_init__(self) -> None:
        check_fields(self)

    def resolve(self, model) -> Dict[str, Any]:
        """The settings `model` would run with (GGUF keys and defaults filled
        in); raises InvalidArgumentError for a value out of range."""
        return dict(native.resolve_sparse_config(model._native, asdict(self)))


# HT-Sparse off: a front end's switch rather than a setting (a dense session has no SparseConfig).
DENSE = Option("dense", bool, "turn HT-Sparse off (keep every token, for comparison)", default=False)
SPARSE_SWITCHES = [DENSE]


def sparse_config_from(values: Mapping[str, Any]) -> Optional[SparseConfig]:
    """The SparseConfig that option values ask for (CLI flags, request fields;
    unset ones absent or None), or None when `dense` is set."""
    if values.get("dense"):
        return None
    return SparseConfig(**{k: v for k, v in values.items() if k != "dense" and v is not None})
