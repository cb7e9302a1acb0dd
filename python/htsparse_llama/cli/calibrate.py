"""`calibrate`: measure HT-Sparse on a GGUF, write a copy with htsparse.* keys."""

from __future__ import annotations

import argparse
import sys

from ..calibrate import calibrate
from ..fetch import resolve_model_path


def register(sub) -> None:
    p = sub.add_parser(
        "calibrate",
        help="measure HT-Sparse on a GGUF and write its defaults into a copy",
        description="Run a GGUF through HT-Sparse on retrieval prompts (a long log marked sparse, a needle in it), "
        "pick the earliest select layer whose selection keeps the needle, measure each KV head's "
        "saliency, and write a copy of the GGUF with the htsparse.* keys the runtime reads as its "
        "defaults. Tensors are copied unchanged.",
    )
    p.add_argument("-m", "--model", required=True, help="GGUF model file (any supported architecture)")
    p.add_argument("-o", "--output", required=True, help="the calibrated GGUF to write")
    p.add_argument(
        "--mmproj",
        default=None,
        help="calibrate on video with this mmproj (Qwen2-VL, Qwen2.5-VL, Qwen3-VL): needle frames in --video clips",
    )
    p.add_argument(
        "--video",
        action="append",
        default=[],
        help="a video for --mmproj calibration (repeatable; default: the clip shipped with the package)",
    )
    p.add_argument("--task", default="passkey", choices=("passkey", "multikey"), help="calibration prompts")
    p.add_argument("--samples", type=int, default=8, help="calibration prompts (default: 8)")
    p.add_argument("--context", type=int, default=2048, help="tokens per prompt (default: 2048)")
    p.add_argument("--keep-ratio", type=float, default=0.1, help="share of the span kept (default: 0.1)")
    p.add_argument(
        "--min-recall", type=float, default=0.95, help="needle recall the select layer must reach (default: 0.95)"
    )
    p.add_argument("-t", "--threads", type=int, default=None, help="CPU threads (default: all)")
    p.add_argument("--force", action="store_true", help="overwrite the output file")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.video and not args.mmproj:
        print("error: --video goes with --mmproj", file=sys.stderr)
        return 1

    def progress(i: int, n: int) -> None:
        print(f"\rcalibrating: prompt {i}/{n}", end="\n" if i == n else "", file=sys.stderr, flush=True)

    try:
        result = calibrate(
            resolve_model_path(args.model),
            args.output,
            force=args.force,
            n_threads=args.threads,
            log=lambda msg: print(msg, file=sys.stderr),
            mmproj=args.mmproj,
            videos=args.video,
            task=args.task,
            n_samples=args.samples,
            context=args.context,
            keep_ratio=args.keep_ratio,
            min_recall=args.min_recall,
            progress=progress,
        )
    except (ValueError, FileExistsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{args.output}: {result.line()}")
    return 0
