"""`chat`: a conversation on the terminal (or through a pipe), about text,
a video (--video) or images (--image). The video or the images go in the
first user turn as a sparse span, so each question keeps the frames it
needs; --context-file puts a long text there instead. Each answer streams,
followed by a stats line (always with a video or images, with --stats for
text). --prompt answers once (with --json, as one JSON object); without -m a
video runs the demo model (random weights), and says so. --explain rewrites
a picture of what each answer came from (video/explain.py).

Commands typed at the prompt: /reset forgets the conversation (a video
stays encoded), /exit quits.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from typing import Optional

from ..errors import ContextOverflowError, InvalidArgumentError
from ..fetch import resolve_model_path
from ..fetch.demo_model import demo_model_paths
from ..fetch.hf_repo import fetch_model, fetch_vlm
from ..model import Model, Session
from ..options import add_flags, from_args
from ..video.cache import EmbeddingCache
from ..video.explain import Explainer, check_output
from ..video.frames import sample_clip_path
from ..video.turn import VideoOptions, VideoTurn
from ..vision import Vision
from .args import (
    add_context_file_arg,
    add_model_args,
    add_sampling_args,
    add_sparse_args,
    load_model,
    read_context_file,
    sampling_kwargs,
    sparse_config,
    user_content,
)

HELP = "commands: /reset (forget the conversation), /exit (quit)"
PACKAGED_CLIP = "packaged:clip"


def register(sub) -> None:
    p = sub.add_parser(
        "chat",
        help="interactive chat",
        description="Chat with a GGUF model, about a video or images if given. Type /reset to forget the "
        "conversation, /exit or Ctrl-D to quit.",
    )
    add_model_args(p, model_required=False)
    p.add_argument("--system", default=None, help="a system message for the conversation")
    p.add_argument("--prompt", default=None, help="answer this question and exit (for scripts)")
    p.add_argument("--json", action="store_true", help="with --prompt: print a JSON result")
    add_sampling_args(p)
    add_context_file_arg(add_sparse_args(p, "HT-Sparse (a long context the question needs only parts of)"))
    g = p.add_argument_group("video and images (with an mmproj; without -m, a small default model runs)")
    g.add_argument(
        "--video", metavar="FILE", help=f"a video to ask about ({PACKAGED_CLIP}: a short clip shipped with the package)"
    )
    g.add_argument("--image", metavar="FILE", action="append", help="an image to ask about (repeatable)")
    g.add_argument("--mmproj", metavar="FILE", help="the vision tower GGUF made with the model")
    g.add_argument(
        "--hf-repo",
        metavar="OWNER/NAME[:QUANT]",
        default=None,
        help="instead of -m/--mmproj: a model GGUF (QUANT, default Q4_K_M) and its mmproj from a Hugging "
        "Face repository, downloaded once (needs network and huggingface_hub); without --video/--image, "
        "the model GGUF alone (a text model's repository, as Qwen/Qwen3-8B-GGUF)",
    )
    add_flags(g, VideoOptions, defaults={"max_visual_tokens": "auto"})
    g.add_argument("--cache-dir", default=None, help="keep visual embeddings here between runs")
    g.add_argument(
        "--explain",
        metavar="OUT.png",
        default=None,
        help="after each answer, write a PNG: the frames with the visual tokens the question kept as "
        "a red heat map, and the full heads listed (not with --dense)",
    )
    p.set_defaults(run=run)


def read_line(interactive: bool) -> Optional[str]:
    """The next line the user types (after a "> " prompt on a terminal), or
    None at the end of input."""
    if interactive:
        try:
            return input("> ")
        except EOFError:
            return None
    line = sys.stdin.readline()
    return None if line == "" else line.rstrip("\n")


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
            bar = self.bars[stage] = tqdm(
                total=total, desc=stage, unit="frame" if "frame" in stage else "chunk", leave=False, file=sys.stderr
            )
        bar.update(done - bar.n)
        if done >= total:
            bar.close()


# -- what the conversation is about ------------------------------------------------------------


def _check(args: argparse.Namespace) -> None:
    """Flags that do not go together fail before anything loads."""
    visual = bool(args.video or args.image)
    if visual and args.context_file:
        raise InvalidArgumentError("--context-file and --video/--image cannot be combined yet")
    if args.hf_repo and (args.model or args.mmproj):
        raise InvalidArgumentError("give either --hf-repo or -m/--mmproj, not both")
    if not visual:
        if args.model is None and not args.hf_repo:
            raise InvalidArgumentError(
                "chat needs -m MODEL or --hf-repo (or --video/--image, which run a demo model without -m)"
            )
        if args.mmproj or args.explain:
            raise InvalidArgumentError("--mmproj and --explain go with --video or --image")
    if args.prompt is not None and not args.prompt.strip():
        raise InvalidArgumentError("--prompt is empty")
    if args.explain is not None:
        # A dense session keeps every token: a picture of what was kept would show nothing.
        if args.dense:
            raise InvalidArgumentError("--explain shows what HT-Sparse kept; it cannot be combined with --dense")
        check_output(args.explain)


def _open_vlm(args: argparse.Namespace):
    """(model, vision) for --video / --image: -m/--mmproj, --hf-repo or the demo model."""
    if args.hf_repo:
        model_path, mmproj_path = fetch_vlm(args.hf_repo)
    elif args.model is None:
        model_path, mmproj_path = demo_model_paths("running")
    else:
        if not args.mmproj:
            raise InvalidArgumentError("--video and --image need --mmproj (the vision tower made with the model)")
        model_path, mmproj_path = resolve_model_path(args.model), args.mmproj
    model = Model(model_path, n_ctx=args.ctx, n_threads=args.threads, device=args.device, verbose=args.verbose)
    return model, Vision(model, mmproj_path, n_threads=args.threads)


def _load_turn(args: argparse.Namespace, vision: Vision) -> VideoTurn:
    cache, progress = EmbeddingCache(args.cache_dir), _Bars(sys.stderr.isatty())
    if args.video:
        path = str(sample_clip_path()) if args.video == PACKAGED_CLIP else args.video
        args.video = path
        sparse = sparse_config(args)
        settings = sparse.resolve(vision.model) if sparse is not None else None
        options, why = VideoOptions(**from_args(VideoOptions, args)).resolved(vision.model, settings)
        if why:
            print(why, file=sys.stderr)
        return VideoTurn.load_video(vision, path, options, cache, progress)
    return VideoTurn.load_images(vision, args.image, cache, progress)


class _Conversation:
    """The session and what its first user turn carries: a video or images
    (turn), a long text (context), or only the question."""

    def __init__(
        self,
        args: argparse.Namespace,
        session: Session,
        vision: Optional[Vision],
        turn: Optional[VideoTurn],
        context: Optional[str],
    ) -> None:
        self.args, self.session, self.vision, self.turn, self.context = args, session, vision, turn, context
        self.first = True
        self.start()

    def start(self) -> None:
        self.session.reset()
        if self.args.system:
            self.session.add_message("system", self.args.system)
        self.first = True

    def ask(self, question: str) -> None:
        """The user's turn: with the visual span or the context file the first time."""
        if self.first and self.turn is not None:
            self.turn.ask(self.session, self.vision, question, sparse=not self.args.dense)
        elif self.first:
            self.session.add_message("user", user_content(question, self.context))
        else:
            self.session.add_message("user", question)
        self.first = False


def _stream(session: Session, args: argparse.Namespace, out) -> str:
    text = ""
    for piece in session.generate(**sampling_kwargs(args)):
        text += piece
        if out is not None:
            out.write(piece)
            out.flush()
    if out is not None:
        out.write("\n")
        out.flush()
    return text


def run(args: argparse.Namespace) -> int:
    _check(args)
    visual = bool(args.video or args.image)
    context = read_context_file(args)
    if visual:
        model, vision = _open_vlm(args)
        turn = _load_turn(args, vision)
        print(turn.describe(), file=sys.stderr)
        n_ctx = max(args.ctx, turn.n_visual_tokens + 1024)
    else:
        if args.hf_repo:
            args.model = fetch_model(args.hf_repo)
        model, vision, turn = load_model(args), None, None
        n_ctx = args.ctx
    conv = _Conversation(args, model.session(n_ctx=n_ctx, sparse=sparse_config(args)), vision, turn, context)
    explainer = Explainer(args.explain, turn, args.video, args.image or ()) if args.explain else None
    interactive = sys.stdin.isatty() and args.prompt is None
    if interactive:
        about = f"; ask about {turn.source}" if turn is not None else ""
        print(f"{model.arch} model on {model.device}{about}; {HELP}", file=sys.stderr)
    while True:
        line = args.prompt if args.prompt is not None else read_line(interactive)
        if line is None or line.strip() == "/exit":
            return 0
        question = line.strip()
        if not question:
            continue
        if question == "/reset":
            conv.start()
            print("(conversation reset" + ("; the video stays encoded)" if turn is not None else ")"), file=sys.stderr)
            continue
        if question.startswith("/"):
            print(f"unknown command {question!r}; {HELP}", file=sys.stderr)
            continue
        selects = conv.first or bool(args.reroute)
        try:
            conv.ask(question)
            answer = _stream(conv.session, args, None if args.json else sys.stdout)
        except ContextOverflowError as exc:
            print(f"error: {exc}; type /reset to start over", file=sys.stderr)
            if args.prompt is not None:
                return 1
            continue
        stats = conv.session.stats()
        if visual or args.stats:
            print(stats.line(), file=sys.stderr)
        if explainer is not None:
            print(explainer.answered(conv.session.selection, question, selects), file=sys.stderr)
        if args.prompt is not None:
            if args.json:
                result = {"answer": answer, "finish_reason": conv.session.finish_reason, "stats": asdict(stats)}
                if turn is not None:
                    result["visual"] = turn.summary()
                print(json.dumps(result))
            return 0
