"""`--explain out.png`: span rows mapped back to frames and cells on
synthetic chunks (text inside the span, a Qwen frame pair, a SmolVLM square
tile, a token count with no grid), the picture drawn from synthetic frames
(untouched where nothing was kept, tinted where it was), the file written
atomically with clear errors, and the CLI with the demo model."""

import json
import os
import sys

import numpy as np
import pytest
from PIL import Image

from htsparse_llama import Chunks
from htsparse_llama.errors import InvalidArgumentError
from htsparse_llama.video import explain
from support.cli import cli


def chunks(*items):
    """A runtime Chunks list of 4-wide rows from chunk items (text, image_chunk, smol_chunk)."""
    return Chunks.from_arrays(list(items), 4, 0)


def text_chunk(*tokens):
    return {"tokens": np.array(tokens, np.int32)}


def image_chunk(nx, ny, first, n_images=1):
    n = nx * ny
    return {
        "embd": np.zeros((n, 4), np.float32),
        "positions": np.zeros((3, n), np.int32),
        "meta": np.array([nx, ny, max(nx, ny), first, n_images], np.int32),
    }  # nx ny n_pos first n_images


def smol_chunk(n, first):
    """Not M-RoPE: no grid, nx = n_tokens, ny = 1."""
    return {
        "embd": np.zeros((n, 4), np.float32),
        "positions": np.arange(n, dtype=np.int32)[None],
        "meta": np.array([n, 1, n, first, 1], np.int32),
    }


# Span rows: pair 0-7, text 8-10, (empty text), image 11-14, text 15, smol 16-24, odd 25-29.
CHUNKS = chunks(
    text_chunk(1, 2),  # before the span: not in it
    image_chunk(4, 2, first=0, n_images=2),  # frames 0 and 1
    text_chunk(5, 6, 7),
    text_chunk(),
    image_chunk(2, 2, first=2),
    text_chunk(9),
    smol_chunk(9, first=3),  # 3x3 square tile
    smol_chunk(5, first=4),  # no grid: shaded by share kept
    text_chunk(3),
)  # after the span
KEPT = [0, 5, 9, 12, 15, 16, 20, 24, 25, 26, 99]  # 9, 15: text; 99: beyond this span


def test_span_rows_walk_the_chunks():
    owner, index = explain.span_rows(CHUNKS)
    assert len(owner) == 8 + 3 + 4 + 1 + 9 + 5
    expect = {
        0: (1, 0),
        7: (1, 7),
        8: (2, 0),
        10: (2, 2),
        11: (4, 0),
        15: (5, 0),
        16: (6, 0),
        24: (6, 8),
        25: (7, 0),
        29: (7, 4),
    }
    for row, (chunk, token) in expect.items():
        assert (owner[row], index[row]) == (chunk, token), row
    assert explain.span_rows(chunks(text_chunk(1)))[0].size == 0  # no image, no span


def test_kept_masks_and_heats():
    masks, text_kept, text_total = explain.kept_masks(CHUNKS, KEPT)
    assert sorted(masks) == [1, 4, 6, 7]
    assert np.flatnonzero(masks[1]).tolist() == [0, 5]
    assert np.flatnonzero(masks[4]).tolist() == [1]
    assert np.flatnonzero(masks[6]).tolist() == [0, 4, 8]
    assert np.flatnonzero(masks[7]).tolist() == [0, 1]
    assert (text_kept, text_total) == (2, 4)

    heats = explain.picture_heats(CHUNKS, masks, 5)
    pair = np.zeros((2, 4))
    pair[0, 0] = pair[1, 1] = 1  # tokens 0 and 5 of a 4-wide grid
    for h in heats[:2]:  # both frames of the pair get its map
        np.testing.assert_array_equal(h.grid, pair)
        assert (h.kept, h.total) == (2, 8)
    np.testing.assert_array_equal(heats[2].grid, [[0, 1], [0, 0]])
    np.testing.assert_array_equal(heats[3].grid, np.eye(3))  # raster order in the square tile
    assert heats[4].grid.shape == (1, 1) and heats[4].grid[0, 0] == pytest.approx(2 / 5)
    assert (heats[4].kept, heats[4].total) == (2, 5)


def test_tiles_of_one_image_are_shaded_as_a_whole():
    tiles = chunks(smol_chunk(4, first=0), text_chunk(7), smol_chunk(4, first=0))  # two tiles of image 0
    masks, _, _ = explain.kept_masks(tiles, [0, 1, 5])
    (heat,) = explain.picture_heats(tiles, masks, 1)
    assert heat.grid.shape == (1, 1) and heat.grid[0, 0] == pytest.approx(3 / 8)


def test_full_heads_listed():
    full_kv = [[True, False], [False, False], [False, True], [True, True]]
    heads = explain.full_heads(full_kv)
    assert heads == ["0:0", "2:1", "3:0", "3:1"]
    facts = {
        "question": "q?",
        "selected_by": "first?",
        "visual_kept": 3,
        "visual_total": 12,
        "text_kept": 0,
        "text_total": 0,
        "pairs": True,
        "full_heads": heads,
        "n_kv_heads": 8,
    }
    lines = explain.summary_lines(facts)
    assert lines[0] == "question: q?" and "first?" in lines[1]  # says which question's selection stands
    assert "3 of 12 (25%)" in lines[2] and "text tokens" not in lines[2]
    listed = lines[3].split("layer:head: ")[1].split()
    assert listed == heads and "4 of 8 KV heads" in lines[3]


def test_layout_fits():
    lay = explain.layout([(224, 112)] * 5)
    assert (lay.cols, lay.rows) == (3, 2) and lay.thumb_size(224, 112) == (320, 160)  # upscaled to the box
    assert lay.width == 8 + 3 * (320 + 8) and lay.text_top == 8 + 2 * (160 + lay.line_h + 8)
    assert explain.layout([(224, 112)]).width == explain.MIN_WIDTH  # room for the text
    boxes = [lay.origin(i) for i in range(5)]
    assert len(set(boxes)) == 5
    for x, y in boxes:
        assert x + lay.box_w <= lay.width and y + lay.box_h + lay.line_h <= lay.text_top
    assert lay.height(3) == lay.text_top + 3 * lay.line_h + explain.MARGIN
    long = explain.layout([(640, 360)] * 400)  # thumbnails shrink, the picture stays viewable
    assert long.box_w == explain.MIN_BOX and long.width <= 20 * (explain.MIN_BOX + explain.MARGIN) + explain.MARGIN
    tall = explain.layout([(100, 400), (400, 100)])  # mixed images: each fits the box, aspect kept
    w, h = tall.thumb_size(100, 400)
    assert h <= tall.box_h and w <= tall.box_w and abs(w * 4 - h) <= 4


def frames(n, w=224, h=112):
    """Smooth, distinct, not reddish frames."""
    y, x = np.mgrid[0:h, 0:w]
    return [
        np.stack([x * 60 // w, 80 + y * 100 // h + 10 * k, 200 - x * 80 // w], -1).astype(np.uint8) for k in range(n)
    ]


def cell_diffs(png, lay, i, thumb, ny, nx):
    """Mean abs difference between picture i's thumbnail in the PNG and
    `thumb`, per token cell (the cell's inner half, away from edges)."""
    x0, y0 = lay.origin(i)
    th, tw = thumb.shape[:2]
    region = png[y0 : y0 + th, x0 : x0 + tw].astype(float)
    out = np.zeros((ny, nx))
    for r in range(ny):
        for c in range(nx):
            ys = slice(int((r + 0.25) * th / ny), int(np.ceil((r + 0.75) * th / ny)))
            xs = slice(int((c + 0.25) * tw / nx), int(np.ceil((c + 0.75) * tw / nx)))
            out[r, c] = np.abs(region[ys, xs] - thumb[ys, xs]).mean()
    return out, region


def thumb_of(rgb, lay):
    """The thumbnail, resized here independently of explain.py."""
    h, w = rgb.shape[:2]
    return np.asarray(Image.fromarray(rgb).resize(lay.thumb_size(w, h), Image.BILINEAR)).astype(float)


def test_picture_from_synthetic_frames(tmp_path):
    rgb = frames(4)
    lay = explain.layout([(224, 112)] * 4)
    pictures = explain.Pictures([explain.thumbnail(f, lay) for f in rgb], ["0.0 s", "0.5 s", "1.0 s", "1.5 s"], lay)
    pairs = chunks(text_chunk(1), image_chunk(8, 4, 0, 2), text_chunk(2, 3), image_chunk(8, 4, 2, 2), text_chunk(4))
    kept = [0, 9, 31, 33, 34]  # pair 0: cells (0,0) (1,1) (3,7); a text row; pair 1: (0,0)
    full_kv = [[True, False], [False, False], [False, True]]
    out = tmp_path / "out.png"
    facts = explain.write_explanation(
        str(out), pictures, pairs, {"kept_in_span": kept, "full_kv": full_kv}, "What now?"
    )
    assert sorted(os.listdir(tmp_path)) == ["out.png"]  # no temp file left
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size == (lay.width, lay.height(len(facts["lines"])))
        stored = json.loads(im.text[explain.METADATA_KEY])
        png = np.asarray(im.convert("RGB"))
    assert stored == facts
    assert (facts["visual_kept"], facts["visual_total"], facts["text_kept"], facts["text_total"]) == (4, 64, 1, 2)
    assert facts["full_heads"] == ["0:0", "2:1"] and facts["n_kv_heads"] == 6
    assert [p["kept"] for p in facts["pictures"]] == [3, 3, 1, 1]
    expect = [{(0, 0), (1, 1), (3, 7)}] * 2 + [{(0, 0)}] * 2
    for i, f in enumerate(rgb):
        thumb = thumb_of(f, lay)
        diffs, region = cell_diffs(png, lay, i, thumb, 4, 8)
        for r in range(4):
            for c in range(8):
                if (r, c) in expect[i]:
                    assert diffs[r, c] > 30, (i, r, c)  # tinted
                else:
                    assert diffs[r, c] < 1.5, (i, r, c)  # the frame as decoded
        ys, xs = slice(0, thumb.shape[0] // 8), slice(0, thumb.shape[1] // 16)  # inside cell (0, 0)
        assert region[ys, xs, 0].mean() > thumb[ys, xs, 0].mean() + 50  # redder
    text = png[lay.text_top :].astype(int)
    assert (text.sum(-1) < 300).sum() > 200  # dark glyphs in the text block


def test_uniform_shading_blends_by_share():
    thumb = frames(1)[0]
    heat = explain.Heat(np.full((1, 1), 0.4), 2, 5)
    got = explain.overlay(thumb, heat).astype(float)
    a = 0.4 * explain.HEAT_ALPHA
    want = thumb * (1 - a) + explain.HEAT_RGB * a
    assert np.abs(got - want).max() <= 1.5


def test_output_errors(tmp_path):
    with pytest.raises(InvalidArgumentError, match="does not exist"):
        explain.check_output(str(tmp_path / "nowhere" / "out.png"))
    with pytest.raises(InvalidArgumentError, match="is a folder"):
        explain.check_output(str(tmp_path))
    assert explain.check_output("out.png").name == "out.png"  # the current folder


# -- the CLI, with the demo model ---------------------------------------------------------------------

SMALL = ["--max-frames", "4", "--max-visual-tokens", "512", "-t", "2", "-n", "4", "--temp", "0"]


@pytest.mark.real_model
def test_cli_video_explain(demo_model, tmp_path):
    from htsparse_llama.video.frames import iter_frames, sample_clip_path

    out = tmp_path / "explain.png"
    r = cli("chat", "--video", "packaged:clip", "--prompt", "What happens?", "--json", "--explain", str(out), *SMALL)
    assert r.returncode == 0, r.stderr
    assert f"explain: wrote {out}" in r.stderr
    result = json.loads(r.stdout)
    visual, stats = result["visual"], result["stats"]
    size = (visual["width"], visual["height"])
    with Image.open(out) as im:
        facts = json.loads(im.text[explain.METADATA_KEY])
        lay = explain.layout([size] * visual["frames"])
        assert im.size == (lay.width, lay.height(len(facts["lines"])))  # the expected size
        assert im.size[0] == 8 + 2 * (320 + 8)  # 4 frames: 2 x 2 thumbnails 320 px wide
        png = np.asarray(im.convert("RGB"))
    assert facts["visual_total"] == visual["visual_tokens"] and facts["question"] == "What happens?"
    assert facts["visual_kept"] + facts["text_kept"] == stats["n_kept"]  # the stats line's kept tokens
    assert facts["full_heads"] == [f"{il}:{g}" for il, g in stats["full_heads"]]
    heads_line = next(line for line in facts["lines"] if line.startswith("full heads"))
    assert f"{len(stats['full_heads'])} of" in heads_line
    # Each frame is in the picture; tinted cells are exactly the kept tokens of its pair.
    nx, ny = size[0] // 28, size[1] // 28
    decoded = [f.rgb for f in iter_frames(str(sample_clip_path()), visual["times"], size=size)]
    assert len(decoded) == len(facts["pictures"]) == 4
    for i, rgb in enumerate(decoded):
        diffs, _ = cell_diffs(png, lay, i, thumb_of(rgb, lay), ny, nx)
        changed, same = diffs > 4, diffs < 1.5
        assert (changed | same).all(), diffs  # a cell is either tinted or untouched
        assert changed.sum() == facts["pictures"][i]["kept"] and facts["pictures"][i]["total"] == nx * ny


@pytest.mark.real_model
def test_cli_image_explain(demo_model, tmp_path):
    y, x = np.mgrid[0:168, 0:224]
    Image.fromarray(np.stack([x, y, (x + y) % 256], -1).astype(np.uint8)).save(tmp_path / "a.png")
    out = tmp_path / "ex.png"
    r = cli("chat", "--image", str(tmp_path / "a.png"), "--prompt", "What is this?", "--explain", str(out), *SMALL)
    assert r.returncode == 0, r.stderr
    with Image.open(out) as im:
        facts = json.loads(im.text[explain.METADATA_KEY])
        assert im.size == (explain.layout([(224, 168)]).width, explain.layout([(224, 168)]).height(len(facts["lines"])))
    assert facts["pictures"] == [{"label": "a.png", "kept": facts["visual_kept"], "total": 48}]


@pytest.mark.real_model
def test_cli_explain_refused_early(demo_model, tmp_path):
    r = cli("chat", "--video", "packaged:clip", "--prompt", "?", "--dense", "--explain", str(tmp_path / "x.png"))
    assert r.returncode == 1 and "--dense" in r.stderr and "Traceback" not in r.stderr
    assert "demo model" not in r.stderr  # refused before any model loads
    r = cli("chat", "--video", "packaged:clip", "--prompt", "?", "--explain", str(tmp_path / "no" / "x.png"))
    assert r.returncode == 1 and "does not exist" in r.stderr and "demo model" not in r.stderr
    assert not list(tmp_path.iterdir())


@pytest.mark.real_model
def test_cli_interactive_rewrites_after_each_answer(demo_model, tmp_path):
    pexpect = pytest.importorskip("pexpect")
    out = tmp_path / "ex.png"
    child = pexpect.spawn(
        sys.executable,
        ["-m", "htsparse_llama", "chat", "--video", "packaged:clip", "--explain", str(out), *SMALL],
        encoding="utf-8",
        timeout=300,
        env=dict(os.environ, TERM="dumb"),
    )
    questions = []
    try:
        for q in ("What is shown first?", "And then?"):
            child.expect("> ")
            child.sendline(q)
            child.expect("explain: wrote")
            with Image.open(out) as im:
                questions.append(json.loads(im.text[explain.METADATA_KEY]))
        child.expect("> ")
        child.sendline("/exit")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0
    first, second = questions
    assert first["question"] == first["selected_by"] == "What is shown first?"
    # The follow-up keeps the first question's tokens (no --reroute), and says so.
    assert second["question"] == "And then?" and second["selected_by"] == "What is shown first?"
    assert second["visual_kept"] == first["visual_kept"]
    assert any("--reroute" in line for line in second["lines"])
