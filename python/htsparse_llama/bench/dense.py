"""`bench --dense-only`: speed of our dense runtime against llama.cpp itself
(llama-cpp-python) on the same GGUF, threads, batch size and tokens, in one
process run: prefill tokens/s at each --prefill length (a fresh context each
time) and decode tokens/s after a --decode-ctx prompt. Runs alternate between
the two engines rep by rep so that a busy machine slows both alike; the
median of --reps runs is reported.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from datetime import date
from typing import Callable, Dict, List, Sequence

import numpy as np

from ..model import Model
from .llama_cpp import N_BATCH, LlamaCppEngine
from .report import command_line, machine, write_json


class OursEngine:
    """Our dense runtime."""

    name = "ours"

    def __init__(self, path: str, n_ctx: int, threads: int, device: str) -> None:
        self.model = Model(path, n_ctx=n_ctx, n_threads=threads, device=device)
        self.session = self.model.session(n_ctx=n_ctx)
        self.on_gpu = self.model.device.upper() != "CPU"

    def prefill(self, ids: Sequence[int]) -> None:
        self.session.reset()
        self.session.add_tokens(ids)

    def decode_step(self, token: int) -> np.ndarray:
        self.session.add_tokens([token])
        return self.session.logits()


def _timed(fn: Callable[[], None]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _decode_seconds(engine, prompt: Sequence[int], n_tokens: int) -> float:
    """Greedy-decodes n_tokens after the prompt; returns the decode time only."""
    engine.prefill(prompt)
    token = int(prompt[-1])
    start = time.perf_counter()
    for _ in range(n_tokens):
        token = int(np.argmax(engine.decode_step(token)))
    return time.perf_counter() - start


def _prompt(n_vocab: int, n: int) -> List[int]:
    """Fixed pseudo-random ordinary token ids: speed does not depend on the
    text, and both engines get the very same ids."""
    rng = np.random.default_rng(1234)
    return rng.integers(1000, min(n_vocab, 30000), size=n).tolist()


def _report(label: str, ours: float, ref: float) -> Dict[str, float]:
    ratio = ours / ref if ref > 0 else float("nan")
    print(f"{label:<26} ours {ours:10.1f} tok/s   llama.cpp {ref:10.1f} tok/s   ratio {ratio:5.3f}", flush=True)
    return {"ours": round(ours, 2), "llama_cpp": round(ref, 2), "ratio": round(ratio, 4)}


def _median_rates(engines, n_tokens: int, reps: int, seconds_of) -> Dict[str, float]:
    """tokens/s of each engine, median over reps, runs interleaved."""
    times: Dict[str, List[float]] = {e.name: [] for e in engines}
    for _ in range(reps):
        for engine in engines:
            times[engine.name].append(seconds_of(engine))
    return {name: n_tokens / statistics.median(ts) for name, ts in times.items()}


def run(args: argparse.Namespace, path: str) -> int:
    """The dense comparison on the GGUF at `path`; prints a row per measurement."""
    n_ctx = max(max(args.prefill), args.decode_ctx + args.decode_tokens)
    ours = OursEngine(path, n_ctx, args.threads, args.device)
    ref = LlamaCppEngine(path, n_ctx, args.threads, ours.on_gpu)
    engines = [ours, ref]
    print(
        f"model {os.path.basename(path)} ({ours.model.arch}), device {ours.model.device}, "
        f"{args.threads} threads, batch {N_BATCH}, median of {args.reps}",
        flush=True,
    )

    # One untimed pass each: page in the mmap'd weights, size the buffers.
    warm = _prompt(ours.model.n_vocab, min(args.prefill))
    for engine in engines:
        engine.prefill(warm)

    prefill: Dict[str, Dict[str, float]] = {"ours": {}, "llama_cpp": {}, "ratio": {}}
    for n in args.prefill:
        ids = _prompt(ours.model.n_vocab, n)
        rates = _median_rates(engines, n, args.reps, lambda e, ids=ids: _timed(lambda: e.prefill(ids)))
        row = _report(f"prefill {n} tokens", rates["ours"], rates["llama_cpp"])
        for key in prefill:
            prefill[key][str(n)] = row[key]

    prompt = _prompt(ours.model.n_vocab, args.decode_ctx)
    rates = _median_rates(
        engines, args.decode_tokens, args.reps, lambda e: _decode_seconds(e, prompt, args.decode_tokens)
    )
    decode = _report(f"decode at {args.decode_ctx} context", rates["ours"], rates["llama_cpp"])
    decode["context"] = args.decode_ctx
    decode["tokens"] = args.decode_tokens

    if args.json:
        result = {
            "date": date.today().isoformat(),
            "command": command_line(args),
            "machine": machine(),
            "model": os.path.basename(path),
            "arch": ours.model.arch,
            "device": ours.model.device,
            "threads": args.threads,
            "n_batch": N_BATCH,
            "reps": args.reps,
            "prefill_tok_s": prefill,
            "decode_tok_s": decode,
        }
        write_json(args.json, result)
    return 0
