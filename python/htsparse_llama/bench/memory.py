"""`bench --memory`: what each engine holds to answer one long question, each
in a fresh process (so one's pages and allocator state do not count for the
next): llama.cpp dense (its context sized to the prompt and the answer, as
--ctx would be), ours dense and ours HT-Sparse, on the same GGUF, threads
and prompt: a long log, 90% of the prompt marked sparse and its last lines
dense, then a question (tasks/text.py). Per engine:

- peak KV bytes: ours, the KV cache's own count of its buffers (the most held
  at once, growth and compaction included); llama.cpp, the KV buffer size its
  loader reports (allocated at once for n_ctx cells);
- peak compute-buffer bytes: the scheduler's buffer sizes (ours: the most it
  held; llama.cpp: what it reserves);
- peak process RSS (getrusage's maximum resident set), weights included:
  both engines map the same file.

Numbers are ggml's buffer sizes and the kernel's RSS figures, not estimates.
The child processes are `python -m htsparse_llama.bench.memory_child`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from datetime import date
from typing import Any, Dict

from ..model import Model
from ..tasks.text import TASKS, lines_for_context
from .report import machine, write_json

DENSE_ENGINES = ("llama_cpp", "dense")
ANSWER_TOKENS = 8


SPARSE_SHARE = 0.9  # of the prompt in the sparse span, as in a video question with a transcript after the clip


def _prompt(model: Model, context: int, seed: int) -> Dict[str, Any]:
    """The prompt's token runs, and where our runtime puts each weight (llama.cpp
    gets the same placement on AMX CPUs without loading our runtime in its process).
    The log's last lines run dense after the span (SPARSE_SHARE), before the question."""
    p = TASKS["passkey"](model, seed=seed, n_lines=lines_for_context(model, "passkey", context))
    n = len(p.prefix) + len(p.span) + len(p.suffix)
    n_dense_tail = max(0, round((1 - SPARSE_SHARE) * n) - len(p.prefix) - len(p.suffix))
    split = len(p.span) - n_dense_tail
    return {
        "prefix": p.prefix,
        "span": p.span[:split],
        "suffix": p.span[split:] + p.suffix,
        "placement": model.weight_placement(),
    }


def _child(engine: str, path: str, prompt_file: str, args: argparse.Namespace, keep: float) -> Dict[str, Any]:
    cmd = [
        sys.executable,
        "-m",
        "htsparse_llama.bench.memory_child",
        engine,
        path,
        prompt_file,
        "--threads",
        str(args.threads),
        "--device",
        args.device,
        "--keep-ratio",
        str(keep),
        "--answer-tokens",
        str(ANSWER_TOKENS),
    ]
    for flag, value in (
        ("--full-heads", args.full_head_ratio),
        ("--select-layer", args.select_layer),
        ("--prune-layer", args.prune_layer),
    ):
        if value is not None:
            cmd += [flag, str(value)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"the {engine} process failed: {proc.stderr.strip().splitlines()[-1:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _mib(n: float) -> str:
    return f"{n / 2**20:9.1f}"


def _print_rows(context: int, n_tokens: int, share: float, point: Dict[str, Any]) -> None:
    rows = {name: point[name] for name in DENSE_ENGINES if name in point}
    rows.update({f"sparse {keep}": row for keep, row in point["sparse"].items()})
    print(f"context {context} ({n_tokens} prompt tokens, {share:.0%} in the sparse span):")
    print(
        f"  {'engine':<12} {'peak KV MiB':>12} {'KV after MiB':>13} {'compute MiB':>12} {'peak RSS MiB':>13} "
        f"{'prefill s':>10}"
    )
    for name, r in rows.items():
        print(
            f"  {name:<12} {_mib(r['kv_bytes_peak']):>12} {_mib(r['kv_bytes']):>13} "
            f"{_mib(r['compute_bytes_peak']):>12} {_mib(r['rss_peak_bytes']):>13} {r['prefill_s']:10.1f}",
            flush=True,
        )
    ref = point["llama_cpp"]
    for keep, sp in point["sparse"].items():
        kv_ratio = sp["kv_bytes_peak"] / ref["kv_bytes_peak"]
        rss_ratio = sp["rss_peak_bytes"] / ref["rss_peak_bytes"]
        rss_less = (ref["rss_peak_bytes"] - sp["rss_peak_bytes"]) / 2**20
        kv_less = (ref["kv_bytes_peak"] - sp["kv_bytes_peak"]) / 2**20
        tokens = sp["kv_bytes_tokens"]
        print(
            f"  HT-Sparse keep {keep} vs llama.cpp: peak KV {kv_ratio:.3f}x, KV after the answer "
            f"{sp['kv_bytes'] / ref['kv_bytes']:.3f}x, peak RSS {rss_ratio:.3f}x ({rss_less:.0f} MiB less; the KV "
            f"difference is {kv_less:.0f} MiB); vs the prompt's dense KV ({tokens / 2**20:.1f} MiB): peak "
            f"{sp['kv_bytes_peak'] / tokens:.3f}x, after {sp['kv_bytes'] / tokens:.3f}x",
            flush=True,
        )


def _point(path: str, model: Model, context: int, tmp: str, args: argparse.Namespace) -> Dict[str, Any]:
    """Every engine on one prompt of about `context` tokens: llama.cpp and ours dense once, ours HT-Sparse
    once per --keep-ratio."""
    prompt = _prompt(model, context, seed=1000)
    prompt_file = os.path.join(tmp, f"prompt-{context}.json")
    with open(prompt_file, "w", encoding="utf-8") as f:
        json.dump(prompt, f)
    n_tokens = sum(len(prompt[k]) for k in ("prefix", "span", "suffix"))
    share = len(prompt["span"]) / n_tokens
    point: Dict[str, Any] = {"context": context, "n_tokens": n_tokens, "sparse_share": round(share, 4)}
    for engine in DENSE_ENGINES:
        if engine == "dense" and args.skip_dense:
            continue  # ours dense equals llama.cpp's cache; at 64K it is half an hour on two cores
        point[engine] = _child(engine, path, prompt_file, args, args.keep_ratio[0])
    point["sparse"] = {str(keep): _child("sparse", path, prompt_file, args, keep) for keep in args.keep_ratio}
    _print_rows(context, n_tokens, share, point)
    return point


def _command(args: argparse.Namespace) -> str:
    keeps = ",".join(f"{k:g}" for k in args.keep_ratio)
    cmd = f"python -m htsparse_llama bench --memory -m {args.model} -t {args.threads} "
    cmd += f"--context {','.join(map(str, args.context))} --keep-ratio {keeps}"
    for flag, value in (("select-layer", args.select_layer), ("prune-layer", args.prune_layer)):
        if value is not None:
            cmd += f" --{flag} {value}"
    if args.skip_dense:
        cmd += " --skip-dense"
    return cmd


def run(args: argparse.Namespace, path: str) -> int:
    """The memory comparison at each --context; prints a table per context and writes --json."""
    model = Model(path, n_ctx=max(args.context) + 1024, n_threads=args.threads)
    points = []
    with tempfile.TemporaryDirectory(prefix="htsparse-bench-memory-") as tmp:
        for context in args.context:
            points.append(_point(path, model, context, tmp, args))
    result = {
        "date": date.today().isoformat(),
        "model": os.path.basename(path),
        "machine": machine(),
        "threads": args.threads,
        "keep_ratios": list(args.keep_ratio),
        "select_layer": args.select_layer,
        "prune_layer": args.prune_layer,
        "points": points,
        "command": _command(args),
    }
    write_json(args.json, result)
    return 0
