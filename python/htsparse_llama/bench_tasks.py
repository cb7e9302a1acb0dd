"""Retrieval tasks over a long sparse span, for the HT-Sparse fidelity
benchmark and tests: a haystack of log lines marked sparse, a needle in it,
and a question after it (DESIGN.md section 6)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import List

import numpy as np

_EVENTS = ("disk check ok", "cache warmed", "user login", "backup done", "queue drained", "cron tick",
           "config reloaded", "heartbeat")


@dataclass
class SparsePrompt:
    """A chat prompt as three token runs: before, the sparse span, after (the
    question, which is the query window)."""

    prefix: List[int]
    span: List[int]
    suffix: List[int]
    seg_starts: List[int]   # span-relative starts of its segments (lines)
    needle: range           # span-relative tokens of the needle's line
    answer: str


def line_segments(model, span: List[int], max_tokens: int = 32) -> List[int]:
    """Segment starts: a new segment after every token that ends a line, and
    every max_tokens tokens within a long line."""
    starts, run = [0], 0
    for i in range(len(span) - 1):
        run += 1
        if "\n" in model.detokenize([span[i]]) or run >= max_tokens:
            starts.append(i + 1)
            run = 0
    return starts


_SERVICES = ("billing", "search", "mailer", "storage", "gateway", "scheduler", "metrics", "auth")


def _log_lines(rng, n_lines: int) -> List[str]:
    return [f"[{i:03d}] {_EVENTS[rng.integers(len(_EVENTS))]} on node {rng.integers(1, 99)}" for i in range(n_lines)]


def _chat_prompt(model, lines: List[str], where: int, question: str, answer: str) -> SparsePrompt:
    """The log as the sparse span of one user turn, the question after it;
    line `where` is the needle."""
    template = model.apply_chat_template([("user", "@@span@@")], add_assistant=True)
    before, after = template.split("@@span@@")
    # Tokenised line by line so that line boundaries are token boundaries.
    span: List[int] = []
    needle = range(0)
    for i, line in enumerate(lines):
        ids = model.tokenize(line + "\n")
        if i == where:
            needle = range(len(span), len(span) + len(ids))
        span += ids
    suffix = model.tokenize("\n" + question + after)
    return SparsePrompt(model.tokenize(before), span, suffix, line_segments(model, span), needle, answer)


def passkey(model, seed: int, n_lines: int = 80) -> SparsePrompt:
    """A log of n_lines lines with 'The pass key is N.' on one of them."""
    rng = np.random.default_rng(seed)
    lines = _log_lines(rng, n_lines)
    key = int(rng.integers(10000, 99999))
    where = int(rng.integers(n_lines // 8, n_lines - n_lines // 8))
    lines[where] = f"[{where:03d}] The pass key is {key}. Remember it."
    return _chat_prompt(model, lines, where, "What is the pass key? Answer with the number only.", str(key))


def multikey(model, seed: int, n_lines: int = 80, n_keys: int = 4) -> SparsePrompt:
    """The same log with a pass key for each of n_keys services on different
    lines; the question names one service, so the selection must find that
    line among look-alikes."""
    rng = np.random.default_rng(seed)
    lines = _log_lines(rng, n_lines)
    services = [str(x) for x in rng.choice(_SERVICES, size=n_keys, replace=False)]
    keys = [int(k) for k in rng.choice(np.arange(10000, 99999), size=n_keys, replace=False)]
    places = sorted(int(w) for w in rng.choice(np.arange(n_lines // 8, n_lines - n_lines // 8), size=n_keys,
                                               replace=False))
    for where, service, key in zip(places, services, keys):
        lines[where] = f"[{where:03d}] The pass key of {service} is {key}. Remember it."
    asked = int(rng.integers(n_keys))
    question = f"What is the pass key of {services[asked]}? Answer with the number only."
    return _chat_prompt(model, lines, places[asked], question, str(keys[asked]))


TASKS = {"passkey": passkey, "multikey": multikey}
