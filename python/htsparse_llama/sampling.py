"""How an answer is decoded: the sampling options of Session.generate,
declared once (options.py) for the keyword arguments, the CLI flags and the
server's request fields (OpenAI's names where OpenAI has one). The runtime's
sampler chain is libllama's (runtime/src/sampler.h)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

from .options import check_fields, option

MAX_STOP = 16  # stop strings per request


@dataclass
class Sampling:
    """Session.generate's settings (its keyword arguments but `stream`)."""

    # OpenAI's newer name wins when a request gives both.
    max_tokens: int = option(
        256,
        "most tokens to generate",
        lo=1,
        flags=("-n", "--max-tokens"),
        field="max_completion_tokens",
        aliases=("max_tokens",),
    )
    temperature: float = option(0.8, "temperature; 0 is greedy", lo=0, flags=("--temp",), request_hi=2.0)
    top_k: int = option(40, "top-k, 0 disables", lo=0)
    top_p: float = option(0.95, "top-p, 1 disables", lo=0, hi=1, lo_open=True)
    min_p: float = option(0.05, "min-p, 0 disables", lo=0, hi=1)
    repeat_penalty: float = option(1.0, "repetition penalty, 1 disables", lo=0, lo_open=True)
    seed: Optional[int] = option(None, "sampling seed (default: random)")
    stop: Tuple[str, ...] = option(
        (), "stop strings: the answer ends before the first one", cli=False, max_items=MAX_STOP
    )

    def __post_init__(self) -> None:
        check_fields(self)

    @property
    def native_seed(self) -> int:
        """The runtime's 32-bit seed (0xFFFFFFFF: random)."""
        return 0xFFFFFFFF if self.seed is None else self.seed & 0xFFFFFFFF
