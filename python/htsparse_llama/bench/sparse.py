"""`bench` without --dense-only: llama.cpp dense, our dense path and our
HT-Sparse path on the same long-context retrieval prompts (a log marked
sparse with the question after it; tasks in tasks/text.py), same GGUF and
threads, in one process run; plus a random-selection baseline that keeps as
many tokens.

Per engine: prefill tokens/s, time to first token (whole prompt to first
answer token), decode tokens/s, KV bytes and retrieval accuracy; for the
sparse paths also needle recall (whether the kept set held the needle
lines). Tasks with follow-up questions (multikey) also ask one follow-up
after the answer, on our engines: follow-up accuracy and recall, with the
first routing kept or, with --reroute, selected anew.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from dataclasses import replace
from datetime import date
from typing import Dict, List, Tuple

import numpy as np

from ..model import Model
from ..sparse_config import SparseConfig
from ..tasks.text import TASKS, SparsePrompt, follow_up_tokens, lines_for_context
from . import plot
from .llama_cpp import LlamaCppEngine
from .report import command_line, machine, write_json

ANSWER_TOKENS = 8  # enough for a five-digit key
DECODE_TOKENS = 32  # decode speed is timed over this many tokens after the answer starts


class Trial:
    """One engine on one prompt: timings, answer, KV bytes."""

    def __init__(self) -> None:
        self.prefill_s = 0.0
        self.first_token_s = 0.0
        self.decode_s = 0.0
        self.n_prompt = 0
        self.answer = ""
        self.kv_bytes = 0
        self.needle_kept = None
        self.follow_up_answer = None  # tasks with follow-ups, our engines
        self.follow_up_needle_kept = None  # ... sparse ones
        self.stages_ms: Dict[str, float] = {}  # sparse sessions: prefill time per stage


def _greedy(step, logits: np.ndarray, n: int) -> Tuple[List[int], np.ndarray]:
    """n greedy tokens, each fed back through `step`; and the logits after the last."""
    out = []
    for _ in range(n):
        out.append(int(np.argmax(logits)))
        logits = step(out[-1])
    return out, logits


def _answer_and_decode(t: Trial, model, step, logits: np.ndarray, start: float, between=None) -> None:
    """Greedy answer (time to its first token from `start`), then the timed
    decode run; `step(token)` evaluates one token and returns its logits.
    `between(logits)`, when given, continues the conversation after the
    answer (a follow-up question) and returns the logits to decode from."""
    first = int(np.argmax(logits))
    t.first_token_s = time.perf_counter() - start
    rest, logits = _greedy(step, step(first), ANSWER_TOKENS - 1)
    t.answer = model.detokenize([first] + rest)
    if between is not None:
        logits = between(logits)
    d0 = time.perf_counter()
    _greedy(step, logits, DECODE_TOKENS)
    t.decode_s = time.perf_counter() - d0


def _run_ours(model, prompt: SparsePrompt, sparse, random_keep: bool, seed: int) -> Trial:
    """Our dense path (sparse=None) or a session with that SparseConfig, the
    span marked sparse; with random_keep, as many tokens in random lines."""
    t = Trial()
    s = model.session(sparse=sparse)
    ids = prompt.prefix + prompt.span + prompt.suffix
    t.n_prompt = len(ids)
    start = time.perf_counter()
    if sparse is None:
        s.add_tokens(ids)
    else:
        s.add_tokens(prompt.prefix)
        s.add_tokens(prompt.span, sparse=True)
        s.add_tokens(prompt.suffix)  # the query window: runs when the answer starts
        t.needle_kept = _select(s, prompt, prompt.needle, random_keep, seed)
        t.stages_ms = dict(s.stats().prefill_ms)
    t.prefill_s = time.perf_counter() - start

    def step(tok):
        s.add_tokens([tok])
        return s.logits()

    def follow_up(_logits):
        """The first follow-up question and its greedy answer."""
        question = prompt.follow_ups[0]
        s.answered()  # with reroute, the question is held for a new selection
        s.add_tokens(follow_up_tokens(model, question.question, question.cue))
        if sparse is not None:
            t.follow_up_needle_kept = _select(s, prompt, question.needle, random_keep, seed + 7919)
            t.stages_ms = dict(s.stats().prefill_ms)
        tokens, logits = _greedy(step, s.logits(), ANSWER_TOKENS)
        t.follow_up_answer = model.detokenize(tokens)
        return logits

    _answer_and_decode(t, model, step, s.logits(), start, follow_up if prompt.follow_ups else None)
    t.kv_bytes = s.kv_bytes
    return t


def _select(s, prompt: SparsePrompt, needle, random_keep: bool, seed: int) -> bool:
    """Selection for the held-back question, when one waits (the first, or a
    re-routed follow-up), with random lines instead when random_keep; whether
    the kept set holds every needle token."""
    replace = (lambda kept: _random_lines(prompt, len(kept), seed)) if random_keep else None
    s.select(replace)
    return set(needle) <= set(s.selection["kept_in_span"])


def _random_lines(prompt: SparsePrompt, n_tokens: int, seed: int) -> List[int]:
    """Whole random segments of the span until n_tokens are kept, ascending."""
    starts = prompt.seg_starts
    ends = starts[1:] + [len(prompt.span)]
    order = np.random.default_rng(seed).permutation(len(starts))
    kept: List[int] = []
    for seg in order:
        if len(kept) >= n_tokens:
            break
        kept += range(starts[seg], ends[seg])
    return sorted(kept)


class LlamaCppRunner:
    """llama.cpp dense on one prompt, through the dense bench's engine (same
    GGUF, threads, batch, flash attention and offload as ours)."""

    def __init__(self, path: str, n_ctx: int, threads: int, on_gpu: bool) -> None:
        self.engine = LlamaCppEngine(path, n_ctx, threads, on_gpu)

    def run(self, model, prompt: SparsePrompt) -> Trial:
        t = Trial()
        ids = prompt.prefix + prompt.span + prompt.suffix
        t.n_prompt = len(ids)
        start = time.perf_counter()
        self.engine.prefill(ids)
        t.prefill_s = time.perf_counter() - start
        _answer_and_decode(t, model, self.engine.decode_step, self.engine.logits(), start)
        hp = model.info
        t.kv_bytes = (
            2 * hp["n_layer"] * hp["n_embd_head"] * hp["n_head_kv"] * self.engine.llm.n_ctx() * 2
        )  # F16 K and V
        return t


def summarize(trials: List[Trial], prompts: List[SparsePrompt]) -> Dict[str, object]:
    return {
        "prefill_tok_s": round(statistics.median(t.n_prompt / t.prefill_s for t in trials), 2),
        "ttft_ms": round(statistics.median(t.first_token_s * 1000 for t in trials), 1),
        "decode_tok_s": round(statistics.median(DECODE_TOKENS / t.decode_s for t in trials), 2),
        "kv_bytes": int(statistics.median(t.kv_bytes for t in trials)),
        "accuracy": sum(p.is_right(t.answer) for t, p in zip(trials, prompts)) / len(trials),
        **(
            {"needle_recall": sum(bool(t.needle_kept) for t in trials) / len(trials)}
            if trials[0].needle_kept is not None
            else {}
        ),
        **(
            {
                "follow_up_accuracy": sum(p.follow_ups[0].answer in t.follow_up_answer for t, p in zip(trials, prompts))
                / len(trials)
            }
            if trials[0].follow_up_answer is not None
            else {}
        ),
        **(
            {"follow_up_recall": sum(bool(t.follow_up_needle_kept) for t in trials) / len(trials)}
            if trials[0].follow_up_needle_kept is not None
            else {}
        ),
        **(
            {
                "stage_ms": {
                    k: round(statistics.median(t.stages_ms.get(k, 0.0) for t in trials), 1) for k in trials[0].stages_ms
                }
            }
            if trials[0].stages_ms
            else {}
        ),
    }


def _print_rows(result: Dict[str, Dict]) -> None:
    for name, row in result.items():
        print(
            f"{name:<10} prefill {row['prefill_tok_s']:8.1f} tok/s  ttft {row['ttft_ms']:8.0f} ms  "
            f"decode {row['decode_tok_s']:6.1f} tok/s  KV {row['kv_bytes'] / 2**20:7.1f} MiB  "
            f"accuracy {row['accuracy']:.2f}"
            + (f"  needle recall {row['needle_recall']:.2f}" if "needle_recall" in row else "")
            + (f"  follow-up accuracy {row['follow_up_accuracy']:.2f}" if "follow_up_accuracy" in row else "")
            + (f" recall {row['follow_up_recall']:.2f}" if "follow_up_recall" in row else ""),
            flush=True,
        )
        if "stage_ms" in row:
            print(
                " " * 11 + "prefill stages: " + ", ".join(f"{k} {v:.0f} ms" for k, v in row["stage_ms"].items()),
                flush=True,
            )


def _measure_context(model, ref, context: int, keep_ratios: List[float], base, trials: int, task: str) -> List[Dict]:
    """Every engine on `trials` prompts of one length: the dense engines once
    per prompt, the sparse ones once per keep ratio. One result per ratio."""
    n_lines = lines_for_context(model, task, context)
    prompts = [TASKS[task](model, seed=1000 + i, n_lines=n_lines) for i in range(trials)]
    n_tokens = len(prompts[0].prefix + prompts[0].span + prompts[0].suffix)
    print(f"context {context}: {trials} {task} prompts of ~{n_tokens} tokens (90% sparse)", flush=True)
    dense: Dict[str, List[Trial]] = {"llama_cpp": [], "dense": []}
    sparse = {r: {"sparse": [], "random": []} for r in keep_ratios}
    for i, prompt in enumerate(prompts):  # engines interleaved per prompt
        dense["llama_cpp"].append(ref.run(model, prompt))
        dense["dense"].append(_run_ours(model, prompt, None, False, i))
        answers = [f"{k} {t[-1].answer.strip()!r}" for k, t in dense.items()]
        for r in keep_ratios:
            config = replace(base, keep_ratio=r)
            sparse[r]["sparse"].append(_run_ours(model, prompt, config, False, i))
            sparse[r]["random"].append(_run_ours(model, prompt, config, True, i))
            answers += [f"{k}@{r:g} {t[-1].answer.strip()!r}" for k, t in sparse[r].items()]
        print(f"  prompt {i + 1}/{len(prompts)}: answer {prompt.answer}; answers " + ", ".join(answers), flush=True)
    dense_rows = {name: summarize(trials_, prompts) for name, trials_ in dense.items()}
    points = []
    for r in keep_ratios:
        point = {**dense_rows, **{name: summarize(t, prompts) for name, t in sparse[r].items()}}
        print(f"context {context}, keep_ratio {r:g}:", flush=True)
        _print_rows(point)
        points.append({"context": context, "n_tokens": n_tokens, "keep_ratio": r, **point})
    return points


def compare(args: argparse.Namespace, path: str) -> Dict[str, object]:
    """The comparison; prints one row per engine and returns the JSON body:
    the engines' rows for one context and keep ratio, or under "points" one
    entry per (context, keep ratio) when several are given."""
    n_ctx = max(args.context) + ANSWER_TOKENS + DECODE_TOKENS + 256
    model = Model(path, n_ctx=n_ctx, n_threads=args.threads, device=args.device)
    base = SparseConfig(
        keep_ratio=args.keep_ratio[0],
        full_head_ratio=args.full_head_ratio,
        select_layer=args.select_layer,
        prune_layer=args.prune_layer,
        reroute=args.reroute,
    )
    settings = base.resolve(model)  # checks every value before the long run
    for r in args.keep_ratio:
        SparseConfig(keep_ratio=r).resolve(model)
    ref = LlamaCppRunner(path, n_ctx, args.threads, model.device.upper() != "CPU")
    print(
        f"model {model.arch}, {model.n_layer} layers, device {model.device}, {args.threads} threads; "
        f"keep_ratio {','.join(f'{r:g}' for r in args.keep_ratio)}, full_head_ratio "
        f"{settings['full_head_ratio']:.3g}, select_layer {settings['select_layer']}, "
        f"prune_layer {settings['prune_layer']}",
        flush=True,
    )
    points = []
    for context in args.context:
        points += _measure_context(model, ref, context, args.keep_ratio, base, args.trials, args.task)
    common = {
        "task": args.task,
        "trials": args.trials,
        "reroute": args.reroute,
        "full_head_ratio": round(float(settings["full_head_ratio"]), 6),
        "select_layer": settings["select_layer"],
        "prune_layer": settings["prune_layer"],
    }
    if len(points) == 1:
        point = points[0]
        return {
            **{k: point[k] for k in ENGINES},
            "settings": {"context": point["context"], "keep_ratio": point["keep_ratio"], **common},
        }
    return {"points": points, "settings": {"context": args.context, "keep_ratio": args.keep_ratio, **common}}


ENGINES = ("llama_cpp", "dense", "sparse", "random")


def run(args: argparse.Namespace, path: str) -> int:
    """`bench` without --dense-only: the comparison, its JSON and its plot."""
    if args.plot:
        plot.require_matplotlib()
    result = compare(args, path)
    result.update(
        date=date.today().isoformat(),
        command=command_line(args),
        model=os.path.basename(path),
        machine=machine(),
        threads=args.threads,
    )
    write_json(args.json, result)
    if args.plot:
        plot.plot_curve(result, args.plot)
        print(f"wrote {args.plot}")
    return 0
