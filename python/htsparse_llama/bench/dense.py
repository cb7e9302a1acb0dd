"""`bench`: speed of our runtime against llama.cpp itself (llama-cpp-python)
on the same GGUF, threads, batch size and tokens, in one process run.

Measures prefill tokens/s at each --prefill length (a fresh context each
time) and decode tokens/s after a --decode-ctx prompt. Runs alternate between
the two engines rep by rep so that a busy machine slows both alike; the
median of --reps runs is reported (--dense-only). Without --dense-only the
HT-Sparse comparison of bench_sparse.py runs instead; with --video, the
video comparison of bench_video.py (one question about a video).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from datetime import date
from typing import Callable, Dict, List, Sequence

import numpy as np

from . import bench_video
from .cli import PACKAGED_PREFIX, resolve_model_path
from .errors import InvalidArgumentError

N_BATCH = 512  # llama.cpp's default logical batch; ours uses the same micro-batch


def _comma_list(text: str, cast, kind: str) -> list:
    try:
        values = [cast(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated {kind}, got {text!r}")
    if not values:
        raise argparse.ArgumentTypeError(f"expected at least one of the {kind}, got {text!r}")
    return values


def _int_list(text: str) -> List[int]:
    values = _comma_list(text, int, "integers")
    if min(values) <= 0:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _ratio_list(text: str) -> List[float]:
    return _comma_list(text, float, "numbers")  # ranges are SparseConfig's to check


def _positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def register(sub) -> None:
    p = sub.add_parser("bench", help="benchmark against llama.cpp on the same GGUF",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-m", "--model",
                   help=f"GGUF model file, or {PACKAGED_PREFIX}NAME for a small model from the package index "
                        "(required, except with --video, where the demo model runs without it)")
    p.add_argument("-t", "--threads", type=_positive, default=os.cpu_count() or 1,
                   help="CPU threads for both engines (default: all hardware threads)")
    p.add_argument("--device", default="auto", help="auto | cpu | gpu | a ggml device name (default: auto)")
    p.add_argument("--prefill", type=_int_list, default=[512, 2048],
                   help="prompt lengths to time prefill at, comma-separated (default: 512,2048)")
    p.add_argument("--decode-ctx", type=_positive, default=2048,
                   help="context length before timing decode (default: 2048)")
    p.add_argument("--decode-tokens", type=_positive, default=64, help="tokens to decode (default: 64)")
    p.add_argument("--reps", type=_positive, default=None,
                   help="repetitions per measurement; the median is kept (default: 3; 1 with --video)")
    p.add_argument("--dense-only", action="store_true",
                   help="prefill/decode speed of the dense paths only (ours and llama.cpp)")
    g = p.add_argument_group("HT-Sparse comparison (without --dense-only)")
    g.add_argument("--context", type=_int_list, default=[8192],
                   help="prompt length, 90%% of it sparse; a comma list measures each (default: 8192)")
    g.add_argument("--keep-ratio", type=_ratio_list, default=[0.2],
                   help="share of the sparse span kept; a comma list measures each (default: 0.2)")
    g.add_argument("--full-heads", type=float, default=None, metavar="RATIO", help="full-head ratio (default: the model's)")
    g.add_argument("--select-layer", type=int, default=None, help="select layer (default: the model's)")
    g.add_argument("--prune-layer", type=int, default=None, help="prune layer (default: the model's)")
    g.add_argument("--task", choices=["passkey", "multikey", "timestamp", "order"], default="passkey",
                   help="passkey: one key in the log; multikey: four services' keys, the question names one, "
                        "then a follow-up names another; timestamp: the code logged at a given time; order: "
                        "which of two events came first (default: passkey)")
    g.add_argument("--reroute", action="store_true",
                   help="select anew for the follow-up question (multikey) instead of keeping the first routing")
    g.add_argument("--trials", type=_positive, default=3, help="pass-key prompts (default: 3)")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    g.add_argument("--plot", metavar="FILE.png", help="also draw the curve over keep ratio (needs matplotlib)")
    bench_video.add_args(p)
    p.set_defaults(run=run)


class OursEngine:
    """Our dense runtime."""

    name = "ours"

    def __init__(self, path: str, n_ctx: int, threads: int, device: str) -> None:
        from .model import Model

        self.model = Model(path, n_ctx=n_ctx, n_threads=threads, device=device)
        self.session = self.model.session(n_ctx=n_ctx)
        self.on_gpu = self.model.device.upper() != "CPU"

    def prefill(self, ids: Sequence[int]) -> None:
        self.session.reset()
        self.session.add_tokens(ids)

    def decode_step(self, token: int) -> np.ndarray:
        self.session.add_tokens([token])
        return self.session.logits()


class LlamaCppEngine:
    """llama.cpp through llama-cpp-python: same GGUF, threads and batch, flash
    attention on (our graphs use ggml_flash_attn_ext), weights on the GPU
    exactly when ours are."""

    name = "llama_cpp"

    def __init__(self, path: str, n_ctx: int, threads: int, on_gpu: bool) -> None:
        import llama_cpp

        self.llm = llama_cpp.Llama(path, n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads, n_batch=N_BATCH,
                                   n_ubatch=N_BATCH, flash_attn=True, n_gpu_layers=-1 if on_gpu else 0,
                                   verbose=False)
        self.n_vocab = self.llm.n_vocab()

    def prefill(self, ids: Sequence[int]) -> None:
        self.llm.reset()
        self.llm.eval(list(ids))

    def decode_step(self, token: int) -> np.ndarray:
        self.llm.eval([token])
        return self.logits()

    def logits(self) -> np.ndarray:
        """The last evaluated token's logits. Without logits_all, Llama.eval
        keeps no scores: read llama.cpp's own row."""
        return np.ctypeslib.as_array(self.llm._ctx.get_logits(), shape=(self.n_vocab,))


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


def _cpu_name() -> str:
    """The CPU model (Linux /proc/cpuinfo), else what platform knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _command_line(args: argparse.Namespace) -> str:
    """The command that repeats this run (recorded beside the numbers)."""
    cmd = f"python -m htsparse_llama bench -m {args.model} -t {args.threads} --device {args.device}"
    if args.dense_only:
        return (cmd + f" --prefill {','.join(map(str, args.prefill))} --decode-ctx {args.decode_ctx}"
                f" --decode-tokens {args.decode_tokens} --reps {args.reps} --dense-only")
    cmd += (f" --context {','.join(map(str, args.context))} --keep-ratio {','.join(map(str, args.keep_ratio))}"
            f" --trials {args.trials} --task {args.task}")
    for flag, value in (("--full-heads", args.full_heads), ("--select-layer", args.select_layer),
                        ("--prune-layer", args.prune_layer)):
        if value is not None:
            cmd += f" {flag} {value}"
    if args.reroute:
        cmd += " --reroute"
    return cmd


def run(args: argparse.Namespace) -> int:
    if args.reps is None:
        args.reps = 1 if args.video else 3
    if args.video:
        return bench_video.run(args)
    if not args.model:
        raise InvalidArgumentError("bench needs -m MODEL (or --video CLIP, which runs the demo model without -m)")
    path = resolve_model_path(args.model)
    if not args.dense_only:
        from . import bench_plot, bench_sparse

        if args.plot:
            bench_plot.require_matplotlib()
        result = bench_sparse.run(args, path)
        result.update(date=date.today().isoformat(), command=_command_line(args), model=os.path.basename(path),
                      machine={"platform": platform.platform(), "cpu": _cpu_name(), "cpu_count": os.cpu_count()},
                      threads=args.threads)
        _write_json(args.json, result)
        if args.plot:
            bench_plot.plot_curve(result, args.plot)
            print(f"wrote {args.plot}")
        return 0
    n_ctx = max(max(args.prefill), args.decode_ctx + args.decode_tokens)
    ours = OursEngine(path, n_ctx, args.threads, args.device)
    ref = LlamaCppEngine(path, n_ctx, args.threads, ours.on_gpu)
    engines = [ours, ref]
    print(f"model {os.path.basename(path)} ({ours.model.arch}), device {ours.model.device}, "
          f"{args.threads} threads, batch {N_BATCH}, median of {args.reps}", flush=True)

    # One untimed pass each: page in the mmap'd weights, size the buffers.
    warm = _prompt(ours.model.n_vocab, min(args.prefill))
    for engine in engines:
        engine.prefill(warm)

    prefill: Dict[str, Dict[str, float]] = {"ours": {}, "llama_cpp": {}, "ratio": {}}
    for n in args.prefill:
        ids = _prompt(ours.model.n_vocab, n)
        rates = _median_rates(engines, n, args.reps, lambda e: _timed(lambda: e.prefill(ids)))
        row = _report(f"prefill {n} tokens", rates["ours"], rates["llama_cpp"])
        for key in prefill:
            prefill[key][str(n)] = row[key]

    prompt = _prompt(ours.model.n_vocab, args.decode_ctx)
    rates = _median_rates(engines, args.decode_tokens, args.reps,
                          lambda e: _decode_seconds(e, prompt, args.decode_tokens))
    decode = _report(f"decode at {args.decode_ctx} context", rates["ours"], rates["llama_cpp"])
    decode["context"] = args.decode_ctx
    decode["tokens"] = args.decode_tokens

    if args.json:
        result = {
            "date": date.today().isoformat(),
            "command": _command_line(args),
            "machine": {"platform": platform.platform(), "cpu": _cpu_name(), "cpu_count": os.cpu_count()},
            "model": os.path.basename(path),
            "arch": ours.model.arch,
            "device": ours.model.device,
            "threads": args.threads,
            "n_batch": N_BATCH,
            "reps": args.reps,
            "prefill_tok_s": prefill,
            "decode_tok_s": decode,
        }
        _write_json(args.json, result)
    return 0


def _write_json(path, result) -> None:
    if not path:
        return
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)
    print(f"wrote {path}", file=sys.stderr)
