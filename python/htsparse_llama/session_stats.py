"""What a session reports about itself: its statistics (SessionStats) and a
read-only view of its HT-Sparse state (SparseView). The bookkeeping itself
(sparse spans, the query window held back until the answer starts, the
selection step) lives in the runtime, runtime/src/sparse_state.h, shared
with the C API; its header explains staged prefill and re-routing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple


@dataclass
class SessionStats:
    """What a session did: sizes, KV memory, timings. Times in milliseconds."""

    n_prompt: int = 0
    n_sparse: int = 0
    n_kept: int = 0
    full_heads: List[Tuple[int, int]] = field(default_factory=list)  # (layer, kv_head)
    kv_bytes: int = 0  # the KV cache now
    kv_bytes_dense: int = 0  # what llama.cpp allocates for n_ctx cells
    kv_bytes_peak: int = 0  # the most the KV cache held at once (since the last reset)
    kv_bytes_tokens: int = 0  # a dense cache of exactly the tokens in the context
    compute_bytes: int = 0  # compute buffers now
    compute_bytes_peak: int = 0
    residual_bytes: int = 0  # host memory of held tokens (F32 rows) and of the re-routing log (F16 rows)
    prefill_ms: Dict[str, float] = field(default_factory=dict)  # per stage
    ttft_ms: Optional[float] = None
    decode_tok_s: Optional[float] = None
    select_layer: Optional[int] = None
    prune_layer: Optional[int] = None

    @classmethod
    def from_native(cls, d: Dict[str, Any]) -> "SessionStats":
        values = dict(d)
        values["full_heads"] = [tuple(h) for h in values["full_heads"]]
        values["prefill_ms"] = dict(values["prefill_ms"])
        return cls(**values)

    def line(self) -> str:
        """One human-readable line (the CLI's --stats)."""
        parts = [f"{self.n_prompt} prompt tokens"]
        if self.n_sparse:
            parts.append(f"kept {self.n_kept} of {self.n_sparse} sparse tokens")
        kv = f"KV {self.kv_bytes / 2**20:.1f} MiB, peak {self.kv_bytes_peak / 2**20:.1f} MiB"
        if self.kv_bytes_peak and self.kv_bytes_peak < self.kv_bytes_tokens:
            kv += (
                f" ({self.kv_bytes_tokens / self.kv_bytes_peak:.2f}x less than dense: "
                f"{self.kv_bytes_tokens / 2**20:.1f} MiB for these tokens)"
            )
        parts.append(kv)
        if self.ttft_ms is not None:
            parts.append(f"first token {self.ttft_ms:.0f} ms")
        if self.decode_tok_s:
            parts.append(f"{self.decode_tok_s:.1f} tok/s")
        return "; ".join(parts)


class SparseView:
    """The HT-Sparse state of a session, read from the runtime."""

    def __init__(self, conversation) -> None:
        self._conv = conversation
        self.config: Dict[str, Any] = dict(conversation.sparse_config())

    @property
    def spans(self) -> List[Tuple[int, int]]:
        """Cells [begin, end) of each sparse span."""
        return [tuple(s) for s in self._conv.spans()]

    @property
    def seg_starts(self) -> List[List[int]]:
        """Per span, its span-relative segment starts."""
        return [list(s) for s in self._conv.segment_starts()]

    @property
    def span(self) -> Optional[Tuple[int, int]]:
        """Cells from the first span's start to the last span's end."""
        spans = self.spans
        return (spans[0][0], spans[-1][1]) if spans else None

    @property
    def holds_back(self) -> bool:
        """Tokens after an unselected span wait for the answer (query window)."""
        return bool(self._conv.holds_back)

    @property
    def n_pending(self) -> int:
        """Tokens of the query window waiting for the answer."""
        return int(self._conv.n_pending)

    @property
    def n_selections(self) -> int:
        return int(self._conv.n_selections)

    @property
    def selection(self) -> Optional[Dict[str, Any]]:
        sel = self._conv.selection()
        return None if sel is None else dict(sel)
