"""HT-Sparse bookkeeping of a Session (DESIGN.md section 4): the sparse span,
the query window held back until the answer starts, the selection step, and
the statistics a user sees.

Staged prefill: the span (and what follows it) runs through layers [0, P)
only, as soon as it is added, its residual stream at P kept. When the answer
starts, the query window (the tokens after the span) runs through [0, P) with
its queries captured; saliency at every layer below P picks the full KV heads
and the select layer S picks the kept segments; the cache is compacted for
every layer (retroactive compaction); then only the kept tokens run through
the pruned zone [P, L). With S = P, layer S's keys are written by a probe
(no attention) so selection can read them.

Deviation from DESIGN.md: layers [S, P) run every head over every token
during prefill (routing applies from the answer on), because routing a layer
needs that layer's own saliency, known only once the window has run through
it. All tokens stay in the residual stream there anyway, so only attention
FLOPs differ.

Re-routing (reroute=True): the session logs the residual stream at S of
every token from the start, and the dense zone [0, S) keeps every token (no
retroactive compaction there). Each follow-up question rewinds layers
[S, L) to a dense state, reruns [S, P) for every logged token, and then
selects, compacts and finishes as the first question did.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

from .bench_tasks import line_segments
from .errors import InvalidArgumentError
from .sparse_config import SparseConfig


@dataclass
class SessionStats:
    """What a session did: sizes, KV memory, timings. Times in milliseconds."""

    n_prompt: int = 0
    n_sparse: int = 0
    n_kept: int = 0
    full_heads: List[Tuple[int, int]] = field(default_factory=list)  # (layer, kv_head)
    kv_bytes: int = 0
    kv_bytes_dense: int = 0
    prefill_ms: Dict[str, float] = field(default_factory=dict)  # per stage
    ttft_ms: Optional[float] = None
    decode_tok_s: Optional[float] = None
    select_layer: Optional[int] = None
    prune_layer: Optional[int] = None

    def line(self) -> str:
        """One human-readable line (the CLI's --stats)."""
        parts = [f"{self.n_prompt} prompt tokens"]
        if self.n_sparse:
            parts.append(f"kept {self.n_kept} of {self.n_sparse} sparse tokens")
        kv = f"KV {self.kv_bytes / 2**20:.1f} MiB"
        if self.kv_bytes and self.kv_bytes < self.kv_bytes_dense:
            kv += f" ({self.kv_bytes_dense / self.kv_bytes:.2f}x less than dense)"
        parts.append(kv)
        if self.ttft_ms is not None:
            parts.append(f"first token {self.ttft_ms:.0f} ms")
        if self.decode_tok_s:
            parts.append(f"{self.decode_tok_s:.1f} tok/s")
        return "; ".join(parts)


class SparseState:
    """The sparse spans of a conversation (all before its first question);
    selection when the answer starts, again for each follow-up question when
    re-routing."""

    def __init__(self, model, config: SparseConfig, native) -> None:
        self.model = model
        self.config = config.resolve(model)
        self.spans: List[Tuple[int, int]] = []   # cells [begin, end) of each sparse span
        self.seg_starts: List[List[int]] = []    # per span, span-relative segment starts
        self.pending: List[int] = []   # tokens after the last span: the query window, evaluated at answer time
        self.selected = False
        self.selection: Optional[dict] = None
        self.n_selections = 0
        self.reroute = bool(self.config["reroute"])
        if self.reroute:
            # The whole conversation's residual stream at S, for re-running
            # layers [S, L) with each new question's selection.
            native._log_residual_at(int(self.config["select_layer"]))

    def answered(self) -> None:
        """An answer ended: with re-routing, the next question selects anew."""
        if self.reroute and self.selected:
            self.selected = False

    @property
    def span(self) -> Optional[Tuple[int, int]]:
        """Cells from the first span's start to the last span's end."""
        return (self.spans[0][0], self.spans[-1][1]) if self.spans else None

    @property
    def holds_back(self) -> bool:
        """Tokens after an unselected span wait for the answer (query window)."""
        return bool(self.spans) and not self.selected

    def add_span(self, native, ids: List[int]) -> None:
        """A text span: its segments are lines (split into runs of at most
        segment_tokens tokens)."""
        segments = line_segments(self.model, ids, int(self.config["segment_tokens"]))
        self._add(native, lambda: native.eval(ids, False), len(ids), segments)

    def add_embedding_span(self, native, embd, placeholder: int, positions, segments: Optional[List[int]]) -> None:
        """Embedding rows (visual tokens) as a span; segments: span-relative
        starts (frames), default runs of segment_tokens rows."""
        n = len(embd)
        if segments is None:
            segments = list(range(0, n, int(self.config["segment_tokens"])))
        segments = [int(v) for v in segments]
        if not segments or segments[0] != 0 or any(b <= a for a, b in zip(segments, segments[1:])) or segments[-1] >= n:
            raise InvalidArgumentError(f"segments must start at 0, ascend and stay below the {n} rows")
        self._add(native, lambda: native.eval_embd(embd, placeholder, False, positions), n, segments)

    def _add(self, native, evaluate: Callable[[], None], n: int, segments: List[int]) -> None:
        if self.n_selections > 0:
            raise InvalidArgumentError("sparse spans go before the first question; call reset() to start over "
                                       "with new ones")
        if not self.spans:
            prune_layer = int(self.config["prune_layer"])
            if prune_layer < self.model.n_layer:
                native._hold_from_layer(prune_layer)  # stage 1 now, the pruned zone after selection
        elif self.pending:
            # Text between two spans is no query window: it runs now, with the spans.
            native.eval(self.pending, False)
            self.pending = []
        begin = native.n_past
        evaluate()
        self.spans.append((begin, begin + n))
        self.seg_starts.append(segments)

    def _kept_cells(self, n_past: int, kept_in_span: List[int]) -> List[int]:
        """Every cell outside the spans, and the span tokens kept (relative to
        the first span's start)."""
        first = self.spans[0][0]
        in_spans = set()
        for begin, end in self.spans:
            in_spans.update(range(begin, end))
        return sorted([c for c in range(n_past) if c not in in_spans] + [first + v for v in kept_in_span])

    def select(self, native, stats: SessionStats,
               replace_kept: Optional[Callable[[List[int]], List[int]]] = None) -> None:
        """Evaluates the query window with its queries captured, selects,
        compacts, and runs the kept tokens through the pruned zone.
        `replace_kept` (baselines) maps the selected span-relative tokens to
        the ones kept instead; head routing stays as selected."""
        if not self.pending:
            if self.n_selections == 0:
                raise InvalidArgumentError("a sparse span needs a question after it")
            self.selected = True  # a continuation, no new question: the routing stands
            return
        window = self.pending
        self.pending = []
        t0 = time.perf_counter()
        if self.n_selections > 0:
            # Re-route: layers [S, L) start over; the span waits at P again.
            native._rewind_to_logged_layer(int(self.config["prune_layer"]))
        native._set_query_capture(min(len(window), int(self.config["q_window"])))
        native.eval(window, False)
        held = native.n_held > 0
        if held and int(self.config["select_layer"]) >= int(self.config["prune_layer"]):
            native._probe_held_layer()  # S = P: layer S's keys for selection
        native._set_query_capture(0)
        t1 = time.perf_counter()
        request = {k: v for k, v in self.config.items() if k != "head_prior"}
        spans = [(begin, end, starts) for (begin, end), starts in zip(self.spans, self.seg_starts)]
        self.selection = native._select_sparse(spans, request, replace_kept is None)
        if replace_kept is not None:
            self.selection["kept_in_span"] = kept = sorted(replace_kept(self.selection["kept_in_span"]))
            native._compact_kv(self.selection["full_kv"], self._kept_cells(native.n_past, kept))
        t2 = time.perf_counter()
        if held:
            native._finish_held()
        t3 = time.perf_counter()
        self.selected = True
        self.n_selections += 1
        if self.n_selections == 1:
            stats.prefill_ms["question"] = (t1 - t0) * 1000
            stats.prefill_ms["select"] = (t2 - t1) * 1000
            if held:
                stats.prefill_ms["pruned_zone"] = (t3 - t2) * 1000
        else:  # follow-ups: rewind, question, selection and pruned zone together
            stats.prefill_ms["reroute"] = stats.prefill_ms.get("reroute", 0.0) + (t3 - t0) * 1000
        stats.n_kept = len(self.selection["kept_in_span"])
        stats.full_heads = [(il, g) for il, layer in enumerate(self.selection["full_kv"]) for g, f in enumerate(layer) if f]
