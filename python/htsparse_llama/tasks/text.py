"""Retrieval tasks over a long sparse span, for the HT-Sparse fidelity
benchmark and tests: a haystack of log lines marked sparse, a needle in it,
and a question after it (docs/architecture.md#testing). Used by the
benchmark (bench/sparse.py) and by calibration (calibrate/text.py).

- passkey: one pass key in the log.
- multikey: four services' keys on look-alike lines; the question names one
  (and the others make follow-up questions, for re-routing).
- timestamp: every line has a time and a code; the question gives a time.
- order: two rare events far apart; the question asks which came first, so
  both lines must be kept (a whole-span task: one needle is not enough).

Models with a chat template get the log as one user turn; base models (no
template in the GGUF) get the log and the question as a text to complete.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Sequence, Tuple

import numpy as np

from .._native_loader import native

_EVENTS = (
    "disk check ok",
    "cache warmed",
    "user login",
    "backup done",
    "queue drained",
    "cron tick",
    "config reloaded",
    "heartbeat",
)


@dataclass
class FollowUp:
    """Another question about the same span (multi-turn), with its needle."""

    question: str
    needle: range  # span-relative tokens of the needle's line
    answer: str
    cue: str = ""  # the question as text for a base model to complete (Question.cue)


@dataclass
class SparsePrompt:
    """A chat prompt as three token runs: before, the sparse span, after (the
    question, which is the query window)."""

    prefix: List[int]
    span: List[int]
    suffix: List[int]
    seg_starts: List[int]  # span-relative starts of its segments (lines)
    needle: Sequence[int]  # span-relative tokens of the needle line(s)
    answer: str
    follow_ups: List[FollowUp] = field(default_factory=list)
    wrong: str = ""  # order task: the answer that must not be given

    def is_right(self, text: str) -> bool:
        """Whether a model's answer text is right."""
        return self.answer in text and not (self.wrong and self.wrong in text)


def line_segments(model, span: List[int], max_tokens: int = 32) -> List[int]:
    """Segment starts: a new segment after every token that ends a line, and
    every max_tokens tokens within a long line (the runtime's own rule for
    text spans)."""
    return list(native.line_segments(model._native, [int(t) for t in span], int(max_tokens)))


_SERVICES = ("billing", "search", "mailer", "storage", "gateway", "scheduler", "metrics", "auth")


def _log_lines(rng, n_lines: int) -> List[str]:
    return [f"[{i:03d}] {_EVENTS[rng.integers(len(_EVENTS))]} on node {rng.integers(1, 99)}" for i in range(n_lines)]


def _line_ranges(model, lines: List[str]):
    """The span's tokens, tokenised line by line so that line boundaries are
    token boundaries, and each line's token range."""
    span: List[int] = []
    ranges = []
    for line in lines:
        ids = model.tokenize(line + "\n")
        ranges.append(range(len(span), len(span) + len(ids)))
        span += ids
    return span, ranges


@dataclass
class Question:
    """A question two ways: `text` for a chat model's user turn; `cue` for a
    base model (no chat template in its GGUF), which answers by completing
    a sentence ("What is the pass key? The pass key is")."""

    text: str
    cue: str


def is_base_model(model) -> bool:
    return not model.info["chat_template"]


def _chat_prompt(
    model, lines: List[str], where: int, question: Question, answer: str
) -> Tuple[SparsePrompt, List[range]]:
    """The log as the sparse span of one user turn, the question after it;
    line `where` is the needle. Also every line's token range in the span.
    A base model gets the log and the question's cue as text to complete."""
    if is_base_model(model):
        before, after, text = "", "", question.cue
    else:
        template = model.apply_chat_template([("user", "@@span@@")], add_assistant=True)
        before, after = template.split("@@span@@")
        text = question.text
    span, ranges = _line_ranges(model, lines)
    suffix = model.tokenize("\n" + text + after)
    prefix = model.tokenize(before, add_special=is_base_model(model))  # a document starts with BOS
    prompt = SparsePrompt(prefix, span, suffix, line_segments(model, span), ranges[where], answer)
    return prompt, ranges


def passkey(model, seed: int, n_lines: int = 80) -> SparsePrompt:
    """A log of n_lines lines with 'The pass key is N.' on one of them."""
    rng = np.random.default_rng(seed)
    lines = _log_lines(rng, n_lines)
    key = int(rng.integers(10000, 99999))
    where = int(rng.integers(n_lines // 8, n_lines - n_lines // 8))
    lines[where] = f"[{where:03d}] The pass key is {key}. Remember it."
    question = Question("What is the pass key? Answer with the number only.", "What is the pass key? The pass key is")
    return _chat_prompt(model, lines, where, question, str(key))[0]


def multikey(model, seed: int, n_lines: int = 80, n_keys: int = 4) -> SparsePrompt:
    """The same log with a pass key for each of n_keys services on different
    lines; the question names one service, so the selection must find that
    line among look-alikes."""
    rng = np.random.default_rng(seed)
    lines = _log_lines(rng, n_lines)
    services = [str(x) for x in rng.choice(_SERVICES, size=n_keys, replace=False)]
    keys = [int(k) for k in rng.choice(np.arange(10000, 99999), size=n_keys, replace=False)]
    places = sorted(
        int(w) for w in rng.choice(np.arange(n_lines // 8, n_lines - n_lines // 8), size=n_keys, replace=False)
    )
    for where, service, key in zip(places, services, keys):
        lines[where] = f"[{where:03d}] The pass key of {service} is {key}. Remember it."
    asked = int(rng.integers(n_keys))

    def question(k: int) -> Question:
        asked = f"What is the pass key of {services[k]}?"
        return Question(f"{asked} Answer with the number only.", f"{asked} The pass key of {services[k]} is")

    prompt, ranges = _chat_prompt(model, lines, places[asked], question(asked), str(keys[asked]))
    # The other keys, as follow-up questions (multi-turn, re-routing).
    others = [k for k in range(n_keys) if k != asked]
    prompt.follow_ups = [FollowUp(question(k).text, ranges[places[k]], str(keys[k]), question(k).cue) for k in others]
    return prompt


def timestamp(model, seed: int, n_lines: int = 80) -> SparsePrompt:
    """A log whose every line has a time and a five-digit code; the question
    gives one line's time and asks for its code."""
    rng = np.random.default_rng(seed)
    seconds = np.sort(rng.choice(np.arange(8 * 3600, 20 * 3600), size=n_lines, replace=False))
    codes = rng.choice(np.arange(10000, 99999), size=n_lines, replace=False)
    stamps = [f"{t // 3600:02d}:{t // 60 % 60:02d}:{t % 60:02d}" for t in seconds]
    lines = [f"{stamp} {_EVENTS[rng.integers(len(_EVENTS))]}, code {code}" for stamp, code in zip(stamps, codes)]
    where = int(rng.integers(n_lines // 8, n_lines - n_lines // 8))
    asked = f"What code was logged at {stamps[where]}?"
    question = Question(f"{asked} Answer with the number only.", f"{asked} The code logged at {stamps[where]} was")
    return _chat_prompt(model, lines, where, question, str(codes[where]))[0]


_RARE_EVENTS = ("fire alarm", "power outage", "flood warning", "earthquake drill")


def order(model, seed: int, n_lines: int = 80) -> SparsePrompt:
    """Two rare events on lines far apart; which came first?"""
    rng = np.random.default_rng(seed)
    lines = _log_lines(rng, n_lines)
    first, second = (str(e) for e in rng.choice(_RARE_EVENTS, size=2, replace=False))
    a = int(rng.integers(n_lines // 8, n_lines // 2 - n_lines // 8))
    b = int(rng.integers(n_lines // 2 + n_lines // 8, n_lines - n_lines // 8))
    lines[a] = f"[{a:03d}] {first} on node {rng.integers(1, 99)}"
    lines[b] = f"[{b:03d}] {second} on node {rng.integers(1, 99)}"
    options = sorted([first, second], key=lambda _: rng.random())  # the question lists them in random order
    asked = f"Which happened first in the log, the {options[0]} or the {options[1]}?"
    question = Question(f"{asked} Answer with the event only.", f"{asked} The first to happen was the")
    prompt, ranges = _chat_prompt(model, lines, a, question, first)
    prompt.needle = list(ranges[a]) + list(ranges[b])
    prompt.wrong = second
    return prompt


def follow_up_tokens(model, question: str, cue: str = "") -> List[int]:
    """Tokens that close an assistant answer and ask `question` in a new user
    turn, up to the assistant header, as the model's chat template puts them;
    for a base model, the `cue` (default: the question) on a new line."""
    if is_base_model(model):
        return model.tokenize("\n" + (cue or question))
    mark = "@@answer@@"
    rendered = model.apply_chat_template([("user", "q"), ("assistant", mark), ("user", question)], add_assistant=True)
    return model.tokenize(rendered.split(mark, 1)[1])


TASKS = {"passkey": passkey, "multikey": multikey, "timestamp": timestamp, "order": order}


def lines_for_context(model, task: str, context: int) -> int:
    """Log lines whose span is about 90% of a `context`-token prompt (the
    tasks' lines differ in length: measured on a 40-line prompt)."""
    probe = TASKS[task](model, seed=0, n_lines=40)
    return max(8, int(0.9 * context * 40 / len(probe.span)))
