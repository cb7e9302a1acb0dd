"""`chat --video/--image --explain out.png`: a picture of what the last
answer came from. The sampled frames (or images) in a grid, each with its
time (or file name); the visual tokens HT-Sparse kept for the question as a
translucent red heat map over the frame; below, the question, how many visual
tokens were kept, and the full heads (KV heads that keep the whole video) as
layer:head.

    pictures = video_pictures("clip.mp4", turn.times, (plan.width, plan.height))
    write_explanation("out.png", pictures, turn.chunks, session.selection, "What happens?")

Mapping tokens to places: the sparse span runs from the first image chunk to
the last one, text between them included (Session.add_chunks), so span
rows are found by walking the chunks, whatever text lies between frames.
A chunk covers `n_images` pictures (2: a Qwen-VL frame pair, which gets one
map drawn on both frames). On M-RoPE models (Qwen-VL) token i sits at row
i // nx, column i % nx of the chunk's grid. Other models (SmolVLM) give no
grid: a token count that is a perfect square (8x8 = 64 per tile) is drawn as
a square grid in raster order, the pixel-shuffle output order; otherwise, or
when several chunks (tiles) share a picture, whose layout libmtmd does not
tell, the whole picture is shaded by the share of its tokens kept.

A dense session keeps everything, so there is nothing to explain: the CLI
refuses --explain with --dense before loading the model, rather than draw a
picture that says nothing. The PNG also carries its facts as JSON text
(key "htsparse-explain") for scripts and tests.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import InvalidArgumentError
from ..vision import Chunks
from . import frames as vf

MARGIN = 8
MIN_WIDTH = 480  # room for the text block under a small grid
MAX_GRID_WIDTH = 2400  # thumbnails shrink (down to MIN_BOX) to keep long videos viewable
MIN_BOX, MAX_BOX = 128, 320
HEAT_RGB = np.array([255, 32, 0], dtype=np.float32)
HEAT_ALPHA = 0.55  # a kept cell still shows what is under it
METADATA_KEY = "htsparse-explain"


# -- which span rows are which tokens ------------------------------------------------------


def span_rows(chunks: Chunks) -> Tuple[np.ndarray, np.ndarray]:
    """For each row of the sparse span: the index in `chunks` of the chunk it
    comes from and its token index in that chunk (text rows included)."""
    images = [i for i, c in enumerate(chunks) if c.is_image]
    if not images:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    span = range(images[0], images[-1] + 1)
    sizes = [chunks[i].n_tokens for i in span]
    owner = np.repeat(np.array(span, dtype=np.int64), sizes)
    index = np.concatenate([np.arange(n, dtype=np.int64) for n in sizes])
    return owner, index


def kept_masks(chunks: Chunks, kept_in_span: Sequence[int]) -> Tuple[Dict[int, np.ndarray], int, int]:
    """Per image chunk (by index), which of its tokens were kept; and the
    kept and total text rows of the span (delimiters, timestamps)."""
    owner, index = span_rows(chunks)
    kept = np.asarray(kept_in_span, dtype=np.int64)
    kept = kept[(kept >= 0) & (kept < len(owner))]  # rows of other spans are not this turn's
    is_image = np.array([c.is_image for c in chunks], dtype=bool)[owner]
    masks = {i: np.zeros(c.n_tokens, bool) for i, c in enumerate(chunks) if c.is_image}
    for i, mask in masks.items():
        mask[index[kept[owner[kept] == i]]] = True
    return masks, int((~is_image[kept]).sum()), int((~is_image).sum())


@dataclass
class Heat:
    """One picture's map: per cell the share of its tokens kept (0..1)."""

    grid: np.ndarray  # (rows, cols) float
    kept: int
    total: int


def _cells(c) -> Optional[Tuple[np.ndarray, np.ndarray, int, int]]:
    """Row and column of each token, and the grid shape; None without a grid."""
    i = np.arange(c.n_tokens)
    if c.ny > 1 and c.nx * c.ny == c.n_tokens:
        return i // c.nx, i % c.nx, c.ny, c.nx
    side = math.isqrt(c.n_tokens)
    if c.n_tokens > 1 and side * side == c.n_tokens:
        return i // side, i % side, side, side
    return None


def picture_heats(chunks: Chunks, masks: Dict[int, np.ndarray], n_pictures: int) -> List[Heat]:
    """One Heat per input picture (frame or image)."""
    heats = []
    for p in range(n_pictures):
        own = [i for i, c in enumerate(chunks) if c.is_image and c.first_image <= p < c.first_image + c.n_images]
        kept = sum(int(masks[i].sum()) for i in own)
        total = sum(chunks[i].n_tokens for i in own)
        cells = _cells(chunks[own[0]]) if len(own) == 1 else None
        if cells is None:
            grid = np.full((1, 1), kept / total if total else 0.0)
        else:
            rows, cols, ny, nx = cells
            grid = np.zeros((ny, nx))
            grid[rows, cols] = masks[own[0]]
        heats.append(Heat(grid, kept, total))
    return heats


def full_heads(full_kv: Sequence[Sequence[bool]]) -> List[str]:
    """The KV heads that keep the whole span, as "layer:head"."""
    return [f"{il}:{g}" for il, layer in enumerate(full_kv) for g, full in enumerate(layer) if full]


# -- the pictures ------------------------------------------------------------------------------


def _font():
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=13)
    except TypeError:  # Pillow < 10.1: the bitmap font only
        return ImageFont.load_default()


@dataclass(frozen=True)
class Layout:
    """Where everything goes: a grid of boxes, a label line under each, text below."""

    n: int
    cols: int
    rows: int
    box_w: int
    box_h: int
    line_h: int

    @property
    def width(self) -> int:
        return max(MIN_WIDTH, MARGIN + self.cols * (self.box_w + MARGIN))

    @property
    def text_top(self) -> int:
        return MARGIN + self.rows * (self.box_h + self.line_h + MARGIN)

    def height(self, n_lines: int) -> int:
        return self.text_top + n_lines * self.line_h + MARGIN

    def origin(self, i: int) -> Tuple[int, int]:
        """Top-left corner of picture i's box."""
        r, c = divmod(i, self.cols)
        return MARGIN + c * (self.box_w + MARGIN), MARGIN + r * (self.box_h + self.line_h + MARGIN)

    def thumb_size(self, width: int, height: int) -> Tuple[int, int]:
        """A picture's size scaled to fit its box (up or down, aspect kept)."""
        s = min(self.box_w / width, self.box_h / height)
        return max(1, round(width * s)), max(1, round(height * s))


def layout(sizes: Sequence[Tuple[int, int]]) -> Layout:
    """The layout for pictures of these (width, height): about square."""
    n = len(sizes)
    cols = max(1, math.ceil(math.sqrt(n)))
    rows = max(1, math.ceil(n / cols))
    box_w = min(MAX_BOX, max(MIN_BOX, MAX_GRID_WIDTH // cols))
    box_h = min(2 * box_w, max((math.ceil(h * box_w / w) for w, h in sizes), default=box_w))
    bbox = _font().getbbox("Ag|")
    return Layout(n, cols, rows, box_w, box_h, bbox[3] + 4)


@dataclass
class Pictures:
    """Thumbnails, ready to draw on, with their labels."""

    thumbs: List[np.ndarray]  # (h, w, 3) uint8, each fitting layout's box
    labels: List[str]
    layout: Layout


def thumbnail(rgb: np.ndarray, lay: Layout) -> np.ndarray:
    from PIL import Image

    resample = getattr(Image, "Resampling", Image).BILINEAR
    h, w = rgb.shape[:2]
    return np.asarray(Image.fromarray(rgb).resize(lay.thumb_size(w, h), resample))


def video_pictures(path: str, times: Sequence[float], size: Tuple[int, int]) -> Pictures:
    """The sampled frames again (the turn may come from the embedding cache,
    without pixels), shrunk as they are decoded so long videos stay small."""
    lay = layout([size] * len(times))
    thumbs = [thumbnail(f.rgb, lay) for f in vf.iter_frames(path, times, size=size)]
    return Pictures(thumbs, [f"{t:.1f} s" for t in times], lay)


def image_pictures(paths: Sequence[str]) -> Pictures:
    images = [vf.read_image(p) for p in paths]
    lay = layout([(im.shape[1], im.shape[0]) for im in images])
    return Pictures([thumbnail(im, lay) for im in images], [Path(p).name for p in paths], lay)


def overlay(thumb: np.ndarray, heat: Heat) -> np.ndarray:
    """The thumbnail with each cell tinted by its kept share (untouched at 0)."""
    from PIL import Image

    h, w = thumb.shape[:2]
    cells = Image.fromarray(np.asarray(heat.grid * 255, dtype=np.uint8))
    alpha = np.asarray(cells.resize((w, h), getattr(Image, "Resampling", Image).NEAREST), np.float32)
    alpha = (alpha / 255 * HEAT_ALPHA)[..., None]
    return np.asarray(np.rint(thumb * (1 - alpha) + HEAT_RGB * alpha), dtype=np.uint8)


def wrap(text: str, width: int, font) -> List[str]:
    """Greedy word wrap to `width` pixels."""
    lines: List[str] = []
    for word in text.split(" "):
        if lines and font.getlength(lines[-1] + " " + word) <= width:
            lines[-1] += " " + word
        else:
            lines.append(word)
    return lines


def summary_lines(facts: Dict[str, object]) -> List[str]:
    """The text block from the facts (write_explanation), one paragraph per
    entry (wrapped when drawn)."""
    question, selected_by = facts["question"], facts["selected_by"]
    kept, total, heads = facts["visual_kept"], facts["visual_total"], facts["full_heads"]
    out = [f"question: {question}"]
    if selected_by != question:
        out.append(f'(tokens kept since the question "{selected_by}"; --reroute picks anew for each question)')
    share = f" ({100 * kept / total:.0f}%)" if total else ""
    line = f"red: visual tokens kept for the answer, {kept} of {total}{share}"
    if facts["text_total"]:
        line += f"; text tokens between frames kept: {facts['text_kept']} of {facts['text_total']}"
    if facts["pairs"]:
        line += "; the two frames of a pair share their tokens and map"
    out.append(line)
    out.append(
        f"full heads (keep the whole video), {len(heads)} of {facts['n_kv_heads']} KV heads, layer:head: "
        + (" ".join(heads) if heads else "none")
    )
    return out


def render(pictures: Pictures, heats: Sequence[Heat], paragraphs: Sequence[str]):
    """The picture (a PIL image) and the text lines drawn in it."""
    from PIL import Image, ImageDraw

    lay, font = pictures.layout, _font()
    lines = [line for p in paragraphs for line in wrap(p, lay.width - 2 * MARGIN, font)]
    img = Image.new("RGB", (lay.width, lay.height(len(lines))), "white")
    draw = ImageDraw.Draw(img)
    for i, (thumb, label, heat) in enumerate(zip(pictures.thumbs, pictures.labels, heats)):
        x, y = lay.origin(i)
        img.paste(Image.fromarray(overlay(thumb, heat)), (x, y))
        draw.text((x, y + lay.box_h + 2), f"{label}  kept {heat.kept}/{heat.total}", fill="black", font=font)
    for k, line in enumerate(lines):
        draw.text((MARGIN, lay.text_top + k * lay.line_h), line, fill="black", font=font)
    return img, lines


# -- the file ------------------------------------------------------------------------------


def check_output(path: str) -> Path:
    """Fails early (before the model loads) when the PNG could not be written."""
    p = Path(path)
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise InvalidArgumentError(f"--explain: the folder {parent} does not exist")
    if p.is_dir():
        raise InvalidArgumentError(f"--explain: {p} is a folder; give a file name such as {p / 'explain.png'}")
    return p


def _save(img, path: Path, facts: Dict[str, object]) -> None:
    """Temp file and rename: a reader never sees half a picture."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text(METADATA_KEY, json.dumps(facts))
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        img.save(tmp, format="PNG", pnginfo=info)
        os.replace(tmp, path)
    except OSError as exc:
        raise InvalidArgumentError(f"--explain: cannot write {path}: {exc.strerror or exc}") from exc
    finally:
        if tmp.exists():
            tmp.unlink()


def write_explanation(
    path: str,
    pictures: Pictures,
    chunks: Chunks,
    selection: Dict[str, object],
    question: str,
    selected_by: Optional[str] = None,
) -> Dict[str, object]:
    """Draws the last selection over the pictures and writes the PNG; returns
    the facts it shows (also stored in the PNG). selected_by: the question
    whose selection stands, when not this one (follow-ups without --reroute)."""
    masks, text_kept, text_total = kept_masks(chunks, selection["kept_in_span"])
    heats = picture_heats(chunks, masks, len(pictures.thumbs))
    facts: Dict[str, object] = {
        "question": question,
        "selected_by": selected_by or question,
        # counted per chunk: the two frames of a pair share their tokens
        "visual_kept": int(sum(m.sum() for m in masks.values())),
        "visual_total": int(sum(len(m) for m in masks.values())),
        "text_kept": text_kept,
        "text_total": text_total,
        "pairs": any(c.is_image and c.n_images > 1 for c in chunks),
        "full_heads": full_heads(selection["full_kv"]),
        "n_kv_heads": sum(len(layer) for layer in selection["full_kv"]),
        "pictures": [{"label": lab, "kept": h.kept, "total": h.total} for lab, h in zip(pictures.labels, heats)],
    }
    img, facts["lines"] = render(pictures, heats, summary_lines(facts))
    _save(img, check_output(path), facts)
    return facts


class Explainer:
    """--explain: the picture of the last answer, rewritten after each one.
    Frames are decoded again once, on the first answer (the turn may come
    from the embedding cache, without pixels)."""

    def __init__(self, path: str, turn, video: Optional[str] = None, images: Sequence[str] = ()) -> None:
        self.path, self.turn, self.video, self.images = path, turn, video, list(images)
        self.pictures: Optional[Pictures] = None
        self.selected_by: Optional[str] = None  # the question whose selection stands

    def answered(self, selection: Optional[Dict[str, object]], question: str, selected: bool) -> Optional[str]:
        """Writes the picture for `question`'s answer; selected: this question
        picked the tokens (the first one, or any with --reroute). Returns what
        to tell the user."""
        if selected:
            self.selected_by = question
        if selection is None:
            return "explain: no HT-Sparse selection to draw"
        if self.pictures is None:
            plan = self.turn.plan
            self.pictures = (
                video_pictures(self.video, self.turn.times, (plan.width, plan.height))
                if self.video
                else image_pictures(self.images)
            )
        write_explanation(self.path, self.pictures, self.turn.chunks, selection, question, self.selected_by)
        return f"explain: wrote {self.path}"
