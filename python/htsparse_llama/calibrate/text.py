"""Calibration on text: long-log retrieval prompts (tasks/text.py), the log a
sparse span with the needle line in it."""

from __future__ import annotations

from typing import Any, Callable

from ..model import Model
from ..sparse_config import SparseConfig
from ..tasks.text import TASKS, SparsePrompt, lines_for_context
from .result import Calibration, check_settings, choose, recall_and_scores


def measure_prompt(model: Model, prompt: SparsePrompt, keep_ratio: float, q_window: int) -> tuple:
    """One prompt: whether each select layer's selection keeps the needle, and the KV-head scores."""
    n = len(prompt.prefix) + len(prompt.span) + len(prompt.suffix)
    probe = SparseConfig(keep_ratio=keep_ratio, select_layer=0, prune_layer=model.n_layer, q_window=q_window)
    s = model.session(n_ctx=n + 16, sparse=probe)
    s.add_tokens(prompt.prefix)
    s.add_tokens(prompt.span, sparse=True)
    s.add_tokens(prompt.suffix)  # the question: waits as the query window
    return recall_and_scores(s, set(prompt.needle))


def measure(
    model: Model,
    *,
    task: str = "passkey",
    n_samples: int = 4,
    context: int = 1024,
    keep_ratio: float = 0.1,
    min_recall: float = 0.95,
    q_window: int = 64,
    seed: int = 0,
    progress: Callable[[int, int], Any] = lambda i, n: None,
) -> Calibration:
    """Calibrates a Model on `n_samples` text prompts of about `context` tokens."""
    if task not in ("passkey", "multikey"):
        raise ValueError(f"calibration task must be passkey or multikey, got {task!r}")
    check_settings(n_samples, keep_ratio)
    n_lines = lines_for_context(model, task, context)
    results, n_tokens = [], 0
    for i in range(n_samples):
        prompt = TASKS[task](model, seed=seed + 7 * i + 1, n_lines=n_lines)
        n_tokens = len(prompt.prefix) + len(prompt.span) + len(prompt.suffix)
        results.append(measure_prompt(model, prompt, keep_ratio, q_window))
        progress(i + 1, n_samples)
    return choose(
        model.n_layer, results, keep_ratio=keep_ratio, min_recall=min_recall, data=f"text:{task}", n_tokens=n_tokens
    )
