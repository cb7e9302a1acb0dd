"""`bench --video clip.mp4 [-m model.gguf --mmproj mmproj.gguf]`: one video
question, three engines, one process run, same GGUF, mmproj, frames,
question and threads:

- llama.cpp dense: libllama + libmtmd through llama-cpp-python's ctypes
  bindings, as llama.cpp's own video path does it: the frames as mergeable
  mtmd bitmaps (libmtmd merges them in pairs on Qwen-VL, each pair an image
  chunk in <|vision_start|>..<|vision_end|>), mtmd_encode_chunk per chunk,
  then mtmd_helper_decode_image_chunk / mtmd_helper_eval_chunk_single (what
  mtmd_helper_eval_chunks does, with the encode timed apart), greedy
  llama_decode steps;
- ours dense and ours HT-Sparse: the video as `chat --video` puts it in the
  conversation (video.VideoTurn), the question after it.

Per engine: frames/s ingested (frames / (frame decode + vision encode)),
vision encode time, prefill tokens/s (prompt tokens / time from the first
prompt token to the logits of the last, vision encode excluded: a second
question reuses the encoding), time to first token (the same, plus picking
it), decode tokens/s (greedy, --decode-tokens), KV bytes after decoding.
The frames are decoded once (PyAV) and given to every engine; llama.cpp's
own video helper (ffmpeg binaries) is not used.

KV bytes: ours, the bytes our K/V tensors hold (dense: n_ctx cells, padded
to 256, with n_ctx sized to the prompt and the decoded tokens; sparse: the
compacted cache); llama.cpp, the K/V bytes of the cells it uses (cells x
per-cell K/V size, F16), which is less than the n_ctx cells it allocates
(`kv_alloc_bytes`); llama_state_seq_get_size is recorded too.

Layouts differ only in text tokens: llama.cpp wraps every frame pair in
<|vision_start|>/<|vision_end|>; ours follows the runtime's layout of the
model family (video/turn.py). The visual tokens are the same, the question follows the
frames in both, and the prompt sizes of both are printed. The goals are
stated at ~90% visual tokens: --visual-share 0.9 puts subtitle-like text
before the question until the video is that share of the prompt.

HT-Sparse settings come from bench's --keep-ratio (one value), --full-heads,
--select-layer and --prune-layer; --decode-tokens, --reps (default 1 here),
--threads, --device and --json apply as for the text benchmark.
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import time
from datetime import date
from typing import Dict, List, Optional

import numpy as np

from ..errors import InvalidArgumentError
from ..fetch import resolve_model_path
from ..fetch.demo_model import demo_model_paths
from ..model import Model
from ..sparse_config import SparseConfig
from ..video import frames as vf
from ..video.cache import EmbeddingCache
from ..video.turn import VideoOptions, VideoTurn
from ..vision import Vision
from .llama_cpp import LlamaMtmd
from .report import machine, write_json

QUESTION = "What happens in this video?"
GOAL_PREFILL = 2.5  # x llama.cpp dense prefill tokens/s
GOAL_KV = 2.5  # x less KV than llama.cpp dense
GOAL_VISUAL_SHARE = 0.9
ENGINES = ("llama_cpp", "dense", "sparse")
LABELS = {"llama_cpp": "llama.cpp dense", "dense": "ours dense", "sparse": "ours sparse"}


# -- one measurement -----------------------------------------------------------------------------


def _decode(step, logits: np.ndarray, n: int, start: float) -> Dict[str, float]:
    """Greedy: the first token (its time from `start`), then n more, timed."""
    token = int(np.argmax(logits))
    ttft = time.perf_counter() - start
    d0 = time.perf_counter()
    for _ in range(n):
        token = int(np.argmax(step(token)))
    return {"ttft_s": ttft, "decode_tok_s": n / (time.perf_counter() - d0)}


def _run_llama(engine: LlamaMtmd, prompt: str, frames, n_decode: int, hp) -> Dict[str, float]:
    t0 = time.perf_counter()
    engine.encode(prompt, frames)
    row: Dict[str, float] = {"encode_s": time.perf_counter() - t0, **engine.counts()}
    start = time.perf_counter()
    logits = engine.prefill()
    row["prefill_s"] = time.perf_counter() - start
    row.update(_decode(engine.step, logits, n_decode, start))
    row.update(engine.kv(hp, row["prompt_tokens"] + n_decode))
    return row


def _run_ours(model, vision, turn, question: str, header: str, n_ctx: int, sparse, n_decode: int) -> Dict[str, float]:
    """The question about `turn` in a fresh session, then the assistant
    header (as generate() opens the answer); prefill ends at the last logits."""
    s = model.session(n_ctx=n_ctx, sparse=sparse)
    start = time.perf_counter()
    turn.ask(s, vision, question, sparse=sparse is not None)
    s.add_text(header)
    logits = s.logits()  # HT-Sparse: question, selection and pruned zone run here
    row: Dict[str, float] = {
        "prefill_s": time.perf_counter() - start,
        "prompt_tokens": s.n_past,
        "visual_tokens": turn.n_visual_tokens,
    }

    def step(token: int) -> np.ndarray:
        s.add_tokens([token])
        return s.logits()

    row.update(_decode(step, logits, n_decode, start))
    stats = s.stats()
    row["kv_bytes"] = s.kv_bytes
    if sparse is not None:
        row.update(
            n_sparse=stats.n_sparse,
            n_kept=stats.n_kept,
            full_heads=len(stats.full_heads),
            stage_ms={k: round(v, 1) for k, v in stats.prefill_ms.items()},
        )
    return row


# -- the benchmark ------------------------------------------------------------------------------


def _open(args: argparse.Namespace):
    """(text GGUF, mmproj, is the demo model)."""
    if args.model is None:
        text, mmproj = demo_model_paths("benchmarking")
        print("(its speed and KV sizes are real)", file=sys.stderr)
        return text, mmproj, True
    if not args.mmproj:
        raise InvalidArgumentError("--video needs --mmproj (the vision tower made with the model)")
    return resolve_model_path(args.model), args.mmproj, False


def _median_rows(reps: List[Dict[str, object]]) -> Dict[str, object]:
    out: Dict[str, object] = {}
    for key, value in reps[0].items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            m = statistics.median(float(r[key]) for r in reps)
            out[key] = int(m) if isinstance(value, int) else round(m, 4)
        else:
            out[key] = value
    return out


def _finish(row: Dict[str, object], n_frames: int, decode_s: float) -> Dict[str, object]:
    row["frames"], row["frame_decode_s"] = n_frames, round(decode_s, 4)
    row["frames_per_s"] = round(n_frames / (decode_s + row["encode_s"]), 3)
    row["prefill_tok_s"] = round(row["prompt_tokens"] / row["prefill_s"], 2)
    row["text_tokens"] = row["prompt_tokens"] - row["visual_tokens"]
    row["visual_share"] = round(row["visual_tokens"] / row["prompt_tokens"], 4)
    row["ttft_with_ingest_s"] = round(decode_s + row["encode_s"] + row["ttft_s"], 4)
    return row


def _print_table(rows: Dict[str, Dict[str, object]]) -> None:
    print(
        f"{'engine':<16} {'frames/s':>9} {'encode s':>9} {'prompt':>7} {'visual':>7} {'prefill tok/s':>14} "
        f"{'TTFT s':>8} {'decode tok/s':>13} {'KV MiB':>8}"
    )
    for name, r in rows.items():
        print(
            f"{LABELS[name]:<16} {r['frames_per_s']:9.2f} {r['encode_s']:9.2f} {r['prompt_tokens']:7d} "
            f"{r['visual_tokens']:7d} {r['prefill_tok_s']:14.1f} {r['ttft_s']:8.2f} {r['decode_tok_s']:13.1f} "
            f"{r['kv_bytes'] / 2**20:8.2f}",
            flush=True,
        )


def _ratios(rows: Dict[str, Dict], base: str, keep_ratio: float) -> Dict[str, object]:
    ref, sp = rows[base], rows["sparse"]
    ratios = {
        "baseline": base,
        "prefill_speedup": round(sp["prefill_tok_s"] / ref["prefill_tok_s"], 3),
        "ttft_speedup": round(ref["ttft_s"] / sp["ttft_s"], 3),
        "decode_speedup": round(sp["decode_tok_s"] / ref["decode_tok_s"], 3),
        "kv_reduction": round(ref["kv_bytes"] / sp["kv_bytes"], 3),
        "dense_prefill_ratio": round(rows["dense"]["prefill_tok_s"] / ref["prefill_tok_s"], 3),
    }
    goals = {
        "keep_ratio": keep_ratio,
        "visual_share": sp["visual_share"],
        "prefill": ratios["prefill_speedup"] >= GOAL_PREFILL,
        "kv": ratios["kv_reduction"] >= GOAL_KV,
    }
    label = LABELS[base]
    print(
        "prompt tokens: "
        + ", ".join(
            f"{LABELS[k]} {r['prompt_tokens']} ({r['text_tokens']} text)" for k, r in rows.items() if k != "sparse"
        )
        + f"; {sp['visual_tokens']} visual tokens in each (the layouts differ only in text)"
    )
    print(f"ours dense vs {label}: prefill {ratios['dense_prefill_ratio']:.2f}x")
    print(
        f"ours sparse vs {label}: prefill {ratios['prefill_speedup']:.2f}x, time to first token "
        f"{ratios['ttft_speedup']:.2f}x, decode {ratios['decode_speedup']:.2f}x, KV {ratios['kv_reduction']:.2f}x "
        f"less; kept {sp['n_kept']} of {sp['n_sparse']} sparse tokens ({sp['n_kept'] / sp['n_sparse']:.1%})"
    )
    print("ours sparse prefill stages: " + ", ".join(f"{k} {v:.0f} ms" for k, v in sp["stage_ms"].items()))
    share = sp["visual_share"]
    hint = (
        ""
        if abs(share - GOAL_VISUAL_SHARE) <= 0.02
        else " (the goal is stated at ~90%: --visual-share 0.9 adds text to match)"
        if share > GOAL_VISUAL_SHARE
        else " (below the goal's ~90%: a larger --max-visual-tokens raises it)"
    )
    print(
        f"goal prefill >= {GOAL_PREFILL}x: {'MET' if goals['prefill'] else 'MISS'} "
        f"({ratios['prefill_speedup']:.2f}x); goal KV >= {GOAL_KV}x less: {'MET' if goals['kv'] else 'MISS'} "
        f"({ratios['kv_reduction']:.2f}x); keep_ratio {keep_ratio:g}, visual share {share:.1%}{hint}",
        flush=True,
    )
    return {**ratios, "goals": goals}


def _command_line(args: argparse.Namespace, video: str) -> str:
    cmd = f"python -m htsparse_llama bench --video {shlex.quote(video)}"
    if args.model:
        cmd += f" -m {shlex.quote(args.model)} --mmproj {shlex.quote(args.mmproj)}"
    cmd += (
        f" -t {args.threads} --device {args.device} --max-visual-tokens {args.max_visual_tokens}"
        f" --keep-ratio {args.keep_ratio[0]:g} --decode-tokens {args.decode_tokens} --reps {args.reps}"
    )
    for flag, value in (
        ("--fps", args.fps),
        ("--max-frames", args.max_frames),
        ("--start", args.start),
        ("--visual-share", args.visual_share),
        ("--end", args.end),
        ("--full-heads", args.full_head_ratio),
        ("--select-layer", args.select_layer),
        ("--prune-layer", args.prune_layer),
    ):
        if value is not None:
            cmd += f" {flag} {value:g}"
    if args.question != QUESTION:
        cmd += f" --question {shlex.quote(args.question)}"
    return cmd


def _subtitles(model, n_tokens: int) -> str:
    """About n_tokens of subtitle-like text (for --visual-share)."""
    if n_tokens <= 0:
        return ""
    lines, n = ["Subtitles:"], 3
    while n < n_tokens:
        lines.append(f"[{len(lines)}] The narrator describes what happens next in the scene.")
        n += len(model.tokenize("\n" + lines[-1]))
    return "\n".join(lines) + "\n\n"


class _Setup:
    """What every engine gets: the model, the encoded turn (ours), the
    decoded frames, the full question, the context size."""

    def __init__(self, args: argparse.Namespace) -> None:
        if len(args.keep_ratio) != 1:
            raise InvalidArgumentError("--video measures one --keep-ratio at a time")
        if args.visual_share is not None and not 0 < args.visual_share <= 1:
            raise InvalidArgumentError(f"--visual-share must be in (0, 1], got {args.visual_share}")
        self.path = str(vf.sample_clip_path()) if args.video == "packaged:clip" else args.video
        vf.probe(self.path)  # a missing or broken video is one clear error before any model loads
        self.text_path, self.mmproj_path, self.demo = _open(args)
        self.model = model = Model(self.text_path, n_threads=args.threads, device=args.device)
        self.sparse = SparseConfig(
            keep_ratio=args.keep_ratio[0],
            full_head_ratio=args.full_head_ratio,
            select_layer=args.select_layer,
            prune_layer=args.prune_layer,
        )
        self.settings = self.sparse.resolve(model)  # a bad value stops here, before the long run
        self.vision = Vision(model, self.mmproj_path, n_threads=args.threads)
        options = VideoOptions(args.fps, args.max_frames, args.start, args.end, args.max_visual_tokens)
        t0 = time.perf_counter()
        self.turn = turn = VideoTurn.load_video(self.vision, self.path, options, EmbeddingCache(None))
        self.turn_s = time.perf_counter() - t0
        print(turn.describe(), file=sys.stderr)
        self.n_frames = len(turn.times)
        t0 = time.perf_counter()  # the frames every engine encodes, decoded once
        self.frames = [f.rgb for f in vf.iter_frames(self.path, turn.times, size=(turn.plan.width, turn.plan.height))]
        self.decode_s = time.perf_counter() - t0

        self.before, self.after = model.chat_turn("user")
        self.header = model.assistant_header()
        n_turn = turn.chunks.n_tokens
        n_rest = sum(len(model.tokenize(t)) for t in (self.before, args.question + self.after, self.header))
        n_text = n_turn - turn.n_visual_tokens + n_rest
        n_visual = turn.n_visual_tokens
        wanted = 0 if args.visual_share is None else round(n_visual / args.visual_share) - n_visual  # text tokens
        self.question = _subtitles(model, wanted - n_text) + args.question
        # Our cache is sized to the prompt and the decoded tokens (what llama.cpp's used cells hold).
        n_prompt = n_turn + sum(len(model.tokenize(t)) for t in (self.before, self.question + self.after, self.header))
        self.n_ctx = n_prompt + args.decode_tokens + 1

    def llama_prompt(self, marker: str) -> str:
        """llama.cpp's layout of the same turn: every frame a mergeable bitmap, the question after them."""
        return self.before + marker * self.n_frames + self.question + self.after + self.header


def _measure(args: argparse.Namespace, setup: _Setup, ref: Optional[LlamaMtmd]) -> Dict[str, Dict]:
    """Every engine --reps times, interleaved so that background load hits each alike; median rows."""
    model, vision = setup.model, setup.vision
    warm = setup.frames[:2]  # untimed: weights paged in, compute buffers sized
    vision.encode_frames(warm)
    if ref is not None:
        ref.encode(setup.before + ref.marker * len(warm) + setup.header, warm)
        ref.prefill()
    model.session(n_ctx=64).add_tokens(model.tokenize(setup.before)[:32] or [0])
    reps: Dict[str, List[Dict]] = {name: [] for name in ENGINES}
    for _ in range(args.reps):
        if ref is not None:
            reps["llama_cpp"].append(
                _run_llama(ref, setup.llama_prompt(ref.marker), setup.frames, args.decode_tokens, model.info)
            )
        t0 = time.perf_counter()
        vision.encode_frames(setup.frames)  # what VideoTurn's encoding costs (the turn itself is reused)
        encode_s = time.perf_counter() - t0
        for name, config in (("dense", None), ("sparse", setup.sparse)):
            row = _run_ours(
                model, vision, setup.turn, setup.question, setup.header, setup.n_ctx, config, args.decode_tokens
            )
            reps[name].append({"encode_s": encode_s, **row})
    return {name: _finish(_median_rows(r), setup.n_frames, setup.decode_s) for name, r in reps.items() if r}


def run(args: argparse.Namespace) -> int:
    """`bench --video`: the three engines on one video question; prints the table and the ratios."""
    setup = _Setup(args)
    model, turn, settings = setup.model, setup.turn, setup.settings
    baseline, note, ref = "llama_cpp", None, None
    try:
        ref = LlamaMtmd(
            setup.text_path,
            setup.mmproj_path,
            setup.n_ctx + 2 * setup.n_frames,
            args.threads,
            model.device.upper() != "CPU",
        )  # its layout wraps every frame pair
    except (ImportError, OSError, AttributeError, RuntimeError) as exc:
        baseline, note = "dense", f"llama.cpp + libmtmd unavailable ({exc}); ratios are against our dense path"
        print(f"note: {note}", file=sys.stderr)
    print(
        f"model {os.path.basename(setup.text_path)} ({model.arch}, {model.n_layer} layers), device {model.device}, "
        f"{args.threads} threads; {setup.n_frames} frames {turn.plan.width}x{turn.plan.height}, "
        f"{turn.n_visual_tokens} visual tokens; keep_ratio {settings['keep_ratio']:g}, full_head_ratio "
        f"{settings['full_head_ratio']:.3g}, select_layer {settings['select_layer']}, prune_layer "
        f"{settings['prune_layer']}; median of {args.reps}",
        flush=True,
    )
    try:
        rows = _measure(args, setup, ref)
    finally:
        if ref is not None:
            ref.close()
    _print_table(rows)
    result = {
        "date": date.today().isoformat(),
        "command": _command_line(args, args.video),
        "machine": machine(),
        "model": os.path.basename(setup.text_path),
        "mmproj": os.path.basename(setup.mmproj_path),
        "demo_model": setup.demo,
        "arch": model.arch,
        "device": model.device,
        "threads": args.threads,
        "reps": args.reps,
        "question": setup.question,
        "video": {
            "source": os.path.basename(setup.path),
            "frames": setup.n_frames,
            "width": turn.plan.width,
            "height": turn.plan.height,
            "visual_tokens": turn.n_visual_tokens,
            "video_turn_s": round(setup.turn_s, 4),
        },
        "settings": {
            "keep_ratio": round(float(settings["keep_ratio"]), 6),
            "full_head_ratio": round(float(settings["full_head_ratio"]), 6),
            "select_layer": settings["select_layer"],
            "prune_layer": settings["prune_layer"],
            "max_visual_tokens": args.max_visual_tokens,
            "visual_share": args.visual_share,
            "decode_tokens": args.decode_tokens,
            "n_ctx": setup.n_ctx,
        },
        **{name: rows.get(name) for name in ENGINES},
        "baseline_note": note,
    }
    result["ratios"] = _ratios(rows, baseline, round(float(settings["keep_ratio"]), 6))
    if setup.demo:
        print("(demo model: random weights, so no answer is checked; speed and KV are real)")
    write_json(args.json, result)
    return 0
