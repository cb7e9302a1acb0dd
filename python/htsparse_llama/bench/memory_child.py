"""One engine of `bench --memory` in a process of its own: loads the GGUF,
answers the prompt (a JSON file of prefix, sparse span and question tokens)
greedily, and prints one JSON line: peak KV bytes, KV bytes after the answer,
peak compute-buffer bytes, peak RSS, prefill seconds (bench/memory.py)."""

from __future__ import annotations

import argparse
import json
import re
import resource
import sys
import time
from typing import Any, Dict, List

from ..model import Model
from ..sparse_config import SparseConfig
from .llama_cpp import load_llama


def _rss_peak_bytes() -> int:
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux reports KiB


def ours(path: str, prompt: Dict[str, List[int]], args: argparse.Namespace, sparse: bool) -> Dict[str, Any]:
    n = sum(len(prompt[k]) for k in ("prefix", "span", "suffix"))
    model = Model(path, n_ctx=n + args.answer_tokens + 16, n_threads=args.threads, device=args.device)
    config = (
        SparseConfig(
            keep_ratio=args.keep_ratio,
            full_head_ratio=args.full_heads,
            select_layer=args.select_layer,
            prune_layer=args.prune_layer,
        )
        if sparse
        else None
    )
    s = model.session(sparse=config)
    start = time.perf_counter()
    s.add_tokens(prompt["prefix"])
    s.add_tokens(prompt["span"], sparse=sparse)
    s.add_tokens(prompt["suffix"])
    s.logits()  # HT-Sparse: the question, the selection and the pruned zone run here
    prefill_s = time.perf_counter() - start
    s.generate(max_tokens=args.answer_tokens, temperature=0, stream=False)
    st = s.stats()
    return {
        "kv_bytes_peak": st.kv_bytes_peak,
        "kv_bytes": st.kv_bytes,
        "kv_bytes_tokens": st.kv_bytes_tokens,
        "compute_bytes_peak": st.compute_bytes_peak,
        "prefill_s": round(prefill_s, 3),
    }


_KEEP: List[Any] = []
_KV = re.compile(r"KV buffer size\s*=\s*([\d.]+) MiB")
_COMPUTE = re.compile(r"(\w+) compute buffer size\s*=\s*([\d.]+) MiB")


def llama_cpp(path: str, prompt: Dict[str, List[int]], args: argparse.Namespace) -> Dict[str, Any]:
    import llama_cpp as lib

    lines: List[str] = []

    @lib.llama_log_callback
    def capture(level, text, user_data):  # the buffer sizes llama.cpp's loader reports
        lines.append(text.decode("utf-8", errors="replace"))

    _KEEP.append(capture)  # llama.cpp logs until the process exits: the callback must outlive this function
    lib.llama_log_set(capture, None)
    ids = prompt["prefix"] + prompt["span"] + prompt["suffix"]
    placement = [tuple(p) for p in prompt.get("placement", [])] or None
    llm = load_llama(
        path,
        placement=placement,
        n_ctx=len(ids) + args.answer_tokens + 16,
        n_threads=args.threads,
        n_threads_batch=args.threads,
        n_batch=512,
        n_ubatch=512,
        flash_attn=True,
        n_gpu_layers=0 if args.device == "cpu" else -1,
    )
    start = time.perf_counter()
    llm.eval(ids)
    prefill_s = time.perf_counter() - start
    for _ in range(args.answer_tokens):  # decoding's memory, not its text: the last prompt token again
        llm.eval([ids[-1]])
    text = "".join(lines)
    kv = sum(float(m) for m in _KV.findall(text)) * 2**20
    compute: Dict[str, float] = {}
    for backend, mib in _COMPUTE.findall(text):
        compute[backend] = max(compute.get(backend, 0.0), float(mib) * 2**20)
    return {
        "kv_bytes_peak": int(kv),
        "kv_bytes": int(kv),
        "kv_bytes_tokens": 0,
        "compute_bytes_peak": int(sum(compute.values())),
        "prefill_s": round(prefill_s, 3),
    }


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m htsparse_llama.bench.memory_child")
    p.add_argument("engine", choices=("llama_cpp", "dense", "sparse"))
    p.add_argument("path")
    p.add_argument("prompt")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="auto")
    p.add_argument("--keep-ratio", type=float, default=0.2)
    p.add_argument("--full-heads", type=float, default=None)
    p.add_argument("--select-layer", type=int, default=None)
    p.add_argument("--prune-layer", type=int, default=None)
    p.add_argument("--answer-tokens", type=int, default=8)
    args = p.parse_args()
    with open(args.prompt, encoding="utf-8") as f:
        prompt = json.load(f)
    if args.engine == "llama_cpp":
        row = llama_cpp(args.path, prompt, args)
    else:
        row = ours(args.path, prompt, args, sparse=args.engine == "sparse")
    row["rss_peak_bytes"] = _rss_peak_bytes()
    print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
