"""`chat --video clip.mp4` / `chat --image a.jpg`: the chat command's visual
mode. The video (or images) goes in the first user turn as a sparse span;
questions follow, each answered with a stats line; --prompt answers once.
Without -m, the default model (random weights) runs, and says so. --explain
rewrites a picture of what each answer came from (explain.py)."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict

from .errors import ContextOverflowError, InvalidArgumentError


def add_video_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("video and images (with an mmproj; without -m, a small default model runs)")
    g.add_argument("--video", metavar="FILE", help="a video to ask about (packaged:clip: a short clip shipped with "
                                                   "the package)")
    g.add_argument("--image", metavar="FILE", action="append", help="an image to ask about (repeatable)")
    g.add_argument("--mmproj", metavar="FILE", help="the vision tower GGUF made with the model")
    g.add_argument("--hf-repo", metavar="OWNER/NAME[:QUANT]", default=None,
                   help="instead of -m/--mmproj: a model GGUF (QUANT, default Q4_K_M) and its mmproj from a Hugging "
                        "Face repository, downloaded once (needs network and huggingface_hub)")
    g.add_argument("--fps", type=float, default=None, help="frames sampled per second (default: 2 for Qwen-VL)")
    g.add_argument("--max-frames", type=int, default=None, help="most frames sampled")
    g.add_argument("--start", type=float, default=None, help="start of the part to sample, in seconds")
    g.add_argument("--end", type=float, default=None, help="end of the part to sample, in seconds")
    g.add_argument("--max-visual-tokens", type=int, default=8192,
                   help="budget of visual tokens; frame count and size are chosen to fit (default: 8192)")
    g.add_argument("--cache-dir", default=None, help="keep visual embeddings here between runs")
    g.add_argument("--prompt", default=None, help="answer this question and exit (for scripts)")
    g.add_argument("--json", action="store_true", help="with --prompt: print a JSON result")
    g.add_argument("--explain", metavar="OUT.png", default=None,
                   help="after each answer, write a PNG: the frames with the visual tokens the question kept as "
                        "a red heat map, and the full heads listed (not with --dense)")


def wants_visual(args: argparse.Namespace) -> bool:
    return bool(args.video or args.image)


class _Bars:
    """tqdm bars per stage on a terminal; nothing in a pipe."""

    def __init__(self, enabled: bool) -> None:
        self.enabled, self.bars = enabled, {}

    def __call__(self, stage: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        from tqdm import tqdm

        bar = self.bars.get(stage)
        if bar is None:
            bar = self.bars[stage] = tqdm(total=total, desc=stage, unit="frame" if "frame" in stage else "chunk",
                                          leave=False, file=sys.stderr)
        bar.update(done - bar.n)
        if done >= total:
            bar.close()


def _open(args: argparse.Namespace):
    from .cli import resolve_model_path
    from .model import Model
    from .vision import Vision

    if args.hf_repo:
        if args.model or args.mmproj:
            raise InvalidArgumentError("give either --hf-repo or -m/--mmproj, not both")
        from .hf_repo import fetch_vlm

        model_path, mmproj_path = fetch_vlm(args.hf_repo)
    elif args.model is None:
        from .default_model import demo_model_paths

        model_path, mmproj_path = demo_model_paths("running")
    else:
        if not args.mmproj:
            raise InvalidArgumentError("--video and --image need --mmproj (the vision tower made with the model)")
        model_path, mmproj_path = resolve_model_path(args.model), args.mmproj
    model = Model(model_path, n_ctx=args.ctx, n_threads=args.threads, device=args.device, verbose=args.verbose)
    return model, Vision(model, mmproj_path, n_threads=args.threads)


def _load_turn(args, vision, progress):
    from .embedding_cache import EmbeddingCache
    from .video_chat import VideoOptions, VideoTurn

    cache = EmbeddingCache(args.cache_dir)
    if args.video == "packaged:clip":
        from .video_frames import sample_clip_path

        args.video = str(sample_clip_path())
    if args.video:
        options = VideoOptions(args.fps, args.max_frames, args.start, args.end, args.max_visual_tokens)
        return VideoTurn.load_video(vision, args.video, options, cache, progress)
    return VideoTurn.load_images(vision, args.image, cache, progress)


def _answer(session, args, out) -> str:
    from .cli import sampling_kwargs

    text = ""
    for piece in session.generate(**sampling_kwargs(args)):
        text += piece
        if out:
            out.write(piece)
            out.flush()
    if out:
        out.write("\n")
    return text


class _Explain:
    """--explain: the picture of the last answer, rewritten after each one.
    Frames are decoded again once, on the first answer (the turn may come
    from the embedding cache, without pixels)."""

    def __init__(self, args: argparse.Namespace, turn) -> None:
        self.args, self.turn = args, turn
        self.pictures = None
        self.selected_by = None  # the question whose selection stands

    def answered(self, session, question: str, selected: bool) -> None:
        """selected: this question picked the tokens (the first one, or any with --reroute)."""
        from . import explain

        if selected:
            self.selected_by = question
        if session.selection is None:
            print("explain: no HT-Sparse selection to draw", file=sys.stderr)
            return
        if self.pictures is None:
            plan = self.turn.plan
            self.pictures = (explain.video_pictures(self.args.video, self.turn.times, (plan.width, plan.height))
                             if self.args.video else explain.image_pictures(self.args.image))
        explain.write_explanation(self.args.explain, self.pictures, self.turn.chunks, session.selection, question,
                                  self.selected_by)
        print(f"explain: wrote {self.args.explain}", file=sys.stderr)


def _check_explain(args: argparse.Namespace) -> None:
    """Before the model loads: a dense session keeps every token, so a
    picture of what was kept would show nothing."""
    if args.explain is None:
        return
    if args.dense:
        raise InvalidArgumentError("--explain shows what HT-Sparse kept; it cannot be combined with --dense")
    from .explain import check_output

    check_output(args.explain)


def run(args: argparse.Namespace) -> int:
    from .cli import read_line, sparse_config

    _check_explain(args)
    interactive = sys.stdin.isatty() and args.prompt is None
    model, vision = _open(args)
    turn = _load_turn(args, vision, _Bars(sys.stderr.isatty()))
    print(turn.describe(), file=sys.stderr)
    n_ctx = max(args.ctx, turn.n_visual_tokens + 1024)
    session = model.session(n_ctx=n_ctx, sparse=sparse_config(args))
    explainer = _Explain(args, turn) if args.explain else None
    first = True
    if interactive:
        print(f"{model.arch} model on {model.device}; ask about {turn.source}. /reset starts over, /exit quits",
              file=sys.stderr)
    while True:
        question = args.prompt if args.prompt is not None else read_line(interactive)
        if question is None or question.strip() == "/exit":
            return 0
        question = question.strip()
        if not question:
            continue
        if question == "/reset":
            session.reset()
            first = True
            print("(conversation reset; the video stays encoded)", file=sys.stderr)
            continue
        selects = first or args.reroute
        try:
            if first:
                turn.ask(session, vision, question, sparse=not args.dense)
                first = False
            else:
                session.add_message("user", question)
            answer = _answer(session, args, None if args.json else sys.stdout)
        except ContextOverflowError as exc:
            print(f"error: {exc}; type /reset to start over", file=sys.stderr)
            if args.prompt is not None:
                return 1
            continue
        stats = session.stats()
        print(stats.line(), file=sys.stderr)
        if explainer:
            explainer.answered(session, question, selects)
        if args.prompt is not None:
            if args.json:
                from .video_chat import plan_summary

                print(json.dumps({"answer": answer, "finish_reason": session.finish_reason,
                                  "visual": plan_summary(turn), "stats": asdict(stats)}))
            return 0
