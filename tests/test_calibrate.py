"""`calibrate`: the htsparse.* keys it writes, read back by the runtime as
its defaults; tensors copied byte for byte; on real SmolLM2 weights (a GGUF
made by llama.cpp's own converter) the chosen select layer keeps the needle
and a session on the defaults answers like dense; refusals."""

import subprocess
import sys

import gguf
import numpy as np
import pytest

from htsparse_convert import write_gguf_with_metadata
from htsparse_llama import Model, SparseConfig
from htsparse_llama.bench.llama_cpp import load_llama
from htsparse_llama.calibrate import calibrate
from htsparse_llama.sparse_config import GGUF_KEYS
from support.haystack import QUESTION, haystack


def cli(*args):
    return subprocess.run([sys.executable, "-m", "htsparse_llama", *args], capture_output=True, text=True, timeout=600)


def same_tensors(a, b) -> bool:
    ra, rb = gguf.GGUFReader(str(a)), gguf.GGUFReader(str(b))
    return len(ra.tensors) == len(rb.tensors) and all(
        x.name == y.name and x.tensor_type == y.tensor_type and np.array_equal(x.data, y.data)
        for x, y in zip(ra.tensors, rb.tensors)
    )


def htsparse_keys(path):
    return {k: f for k, f in gguf.GGUFReader(str(path)).fields.items() if k.startswith("htsparse.")}


@pytest.fixture(scope="module")
def smollm_calibrated(smollm_gguf, tmp_path_factory):
    out = tmp_path_factory.mktemp("calibrated") / "smollm2-htsparse.gguf"
    result = calibrate(smollm_gguf, out, n_threads=2, n_samples=3, context=1024, keep_ratio=0.1)
    return result, out


def test_keys_become_the_runtime_defaults(smollm_calibrated, smollm_gguf):
    result, out = smollm_calibrated
    keys = htsparse_keys(out)
    # Every key written is one the runtime knows (names defined once per language).
    assert all(k in GGUF_KEYS or k.startswith("htsparse.calibration.") for k in keys)
    assert {"htsparse.select_layer", "htsparse.head_prior", "htsparse.calibration.samples"} <= set(keys)
    model = Model(str(out), n_ctx=512, n_threads=2)
    resolved = SparseConfig().resolve(model)
    assert resolved["select_layer"] == resolved["prune_layer"] == result.select_layer
    assert resolved["keep_ratio"] == pytest.approx(0.1)
    prior = np.asarray(resolved["head_prior"]).reshape(model.n_layer, model.info["n_head_kv"])
    assert np.allclose(prior, result.head_prior) and prior.max() == pytest.approx(1.0)
    # The input had none of this; its tensors are unchanged.
    assert not htsparse_keys(smollm_gguf) and same_tensors(smollm_gguf, out)


def test_chosen_layer_keeps_the_needle_and_answers(smollm_calibrated):
    """On real weights the earliest layer reaching recall 0.95 is chosen, and a
    sparse session with no settings of its own (the file's defaults) answers
    the pass key as a dense one does."""
    result, out = smollm_calibrated
    recall = result.recall_by_layer
    assert recall[result.select_layer] >= 0.95 and all(r < 0.95 for r in recall[: result.select_layer])
    assert result.select_layer < len(recall) // 2  # selection early enough to save work

    def ask(session):
        session.add_message(
            "user", [{"text": haystack(n_lines=60, where=25), "sparse": True}, {"text": "\n" + QUESTION}]
        )
        return session.generate(max_tokens=16, temperature=0, stream=False)

    model = Model(str(out), n_ctx=2048, n_threads=2)
    dense = ask(model.session())
    sparse = model.session(sparse=SparseConfig())
    assert ask(sparse) == dense and "42817" in dense
    assert sparse.stats().select_layer == result.select_layer


def test_recalibrating_replaces_the_keys(smollm_calibrated, tmp_path):
    _, out = smollm_calibrated
    again = tmp_path / "again.gguf"
    replaced = write_gguf_with_metadata(out, again, {"htsparse.select_layer": 3, "htsparse.version": 1})
    assert "htsparse.head_prior" in replaced and "htsparse.select_layer" in replaced
    keys = htsparse_keys(again)
    assert set(keys) == {"htsparse.select_layer", "htsparse.version"}
    assert int(keys["htsparse.select_layer"].contents()) == 3 and same_tensors(out, again)


def test_cli_writes_a_loadable_file_and_refuses_to_overwrite(tiny_llama, tmp_path):
    src, out = str(tiny_llama.gguf_path), tmp_path / "tiny-htsparse.gguf"
    r = cli("calibrate", "-m", src, "-o", str(out), "--samples", "2", "--context", "256", "-t", "2")
    assert r.returncode == 0, r.stderr
    assert "select layer" in r.stdout and "calibrating: prompt 2/2" in r.stderr

    llm = load_llama(str(out), n_ctx=64, verbose=False)  # upstream still loads it
    assert llm.n_vocab() == tiny_llama.n_vocab
    llm.close()
    r = cli("calibrate", "-m", src, "-o", str(out), "--samples", "1", "--context", "256")
    assert r.returncode == 1 and "exists" in r.stderr and "--force" in r.stderr
    r = cli("calibrate", "-m", str(out), "-o", str(tmp_path / "second.gguf"), "--samples", "1", "--context", "256")
    assert r.returncode == 0 and "already had" in r.stderr and "replaced" in r.stderr


@pytest.mark.parametrize(
    "extra, fragment",
    [
        pytest.param(["-m", "/nonexistent.gguf"], "nonexistent", id="missing-model"),
        pytest.param(["--samples", "0"], "n_samples", id="samples=0"),
        pytest.param(["--keep-ratio", "1.5"], "keep_ratio", id="keep-ratio=1.5"),
        pytest.param(["--video", "clip.mp4"], "goes with --mmproj", id="video-without-mmproj"),
        pytest.param(["--mmproj", "missing-mmproj.gguf"], "missing-mmproj.gguf", id="missing-mmproj"),
    ],
)
def test_cli_bad_input(tiny_llama, tmp_path, extra, fragment):
    args = ["calibrate", "-m", str(tiny_llama.gguf_path), "-o", str(tmp_path / "out.gguf"), "--context", "256", *extra]
    r = cli(*args)
    assert r.returncode == 1 and fragment in r.stderr, r.stderr
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_needle_image_shows_the_code():
    from htsparse_llama.tasks.needle import needle_image

    img = needle_image(448, 224, 48213)
    dark = (img.mean(axis=2) < 128).mean()
    assert img.shape == (224, 448, 3) and 0.02 < dark < 0.5  # large black digits on white


def test_video_calibration_on_the_demo_model(qwen_gguf, tmp_path):
    """--mmproj: needle-frame prompts from the shipped clip through libmtmd.
    The demo model's weights are random, so only the mechanics are checked:
    keys, recall per layer, defaults read back, tensors unchanged."""
    from htsparse_llama.fetch.demo_model import default_model_paths

    text, mmproj = default_model_paths()
    out = tmp_path / "demo-htsparse.gguf"
    r = cli("calibrate", "-m", str(text), "--mmproj", str(mmproj), "-o", str(out), "--samples", "2", "-t", "2")
    assert r.returncode == 0, r.stderr
    keys = htsparse_keys(out)
    assert keys["htsparse.calibration.data"].contents() == "video:needle-frame"
    recall = keys["htsparse.calibration.recall_by_layer"].contents()
    model = Model(str(out), n_ctx=256, n_threads=2)
    assert len(recall) == model.n_layer and all(v in (0.0, 0.5, 1.0) for v in recall)  # 2 prompts
    assert SparseConfig().resolve(model)["select_layer"] == int(keys["htsparse.select_layer"].contents())
    assert same_tensors(text, out)


# -- video calibration on Qwen3-VL ------------------------------------------------------------


@pytest.fixture(scope="module")
def qwen3_vlm(qwen_vocab, tiny_dir):
    """The tiny Qwen3-VL of support/tiny_vlms.py: text GGUF + mmproj (8-px patches, 2 DeepStack taps)."""
    from support.tiny_vlms import build

    return build("qwen3_vl", qwen_vocab, tiny_dir / "vision-qwen3_vl")


def test_qwen3vl_needle_pair_is_one_segment_of_its_own_grid(qwen3_vlm):
    """Qwen3-VL's needle video: frames planned in its own units (2 x 8 px on
    the tiny tower, not Qwen2's 28), so libmtmd encodes every pair as planned
    and within the budget; the needle pair is one segment of the span, the
    timestamp text before it included, and it is what the calibration asks
    the selection to keep."""
    from htsparse_llama.calibrate.video import measure_prompt
    from htsparse_llama.tasks.needle import QUESTION as NEEDLE_QUESTION
    from htsparse_llama.tasks.needle import frames_with_needle
    from htsparse_llama.video.frames import sample_clip_path
    from htsparse_llama.video.turn import encode_video, vision_grid
    from htsparse_llama.vision import Vision

    model = qwen3_vlm.model()
    vision = Vision(model, qwen3_vlm.mmproj, n_threads=2)
    grid = vision_grid(vision)
    assert (vision.video_family, grid.patch, grid.temporal) == ("qwen3vl", 16, 2)
    budget = 2048  # measure_video's default: 4 pairs of the clip, each at least 224 px a side
    times, frames, unit, code = frames_with_needle(str(sample_clip_path()), grid, np.random.default_rng(3), budget, 8)
    h, w = frames[0].shape[:2]
    n_pairs = len(frames) // 2
    assert len(frames) == len(times) == 8 and 0 < unit < n_pairs - 1  # neither the first nor the last pair
    assert np.array_equal(frames[2 * unit], frames[2 * unit + 1]) and not np.array_equal(frames[0], frames[2 * unit])

    chunks = encode_video(vision, frames, times)
    pairs = [c for c in chunks if c.is_image]
    assert [p.n_tokens for p in pairs] == [(w // 16) * (h // 16)] * n_pairs  # the planned grid, not resized
    assert chunks.n_visual_tokens <= budget

    s = model.session(n_ctx=chunks.n_tokens + 256, sparse=SparseConfig(keep_ratio=0.1, select_layer=0, prune_layer=3))
    vision.add_media_turn(s, chunks, NEEDLE_QUESTION)
    (begin, end), starts = s.sparse.spans[0], s.sparse.seg_starts[0]
    assert len(starts) == n_pairs
    ends = starts[1:] + [end - begin]
    between = len(chunks[2 * unit].tokens)  # <|vision_end|><t seconds><|vision_start|> before the needle pair
    assert chunks[2 * unit].kind == "text" and chunks[2 * unit + 1].is_image  # text, pair, text, pair, ..., text
    assert ends[unit] - starts[unit] == between + pairs[unit].n_tokens

    # The prompt measure_prompt makes is this one (then the question runs for the trial selections).
    (kept_at, scores), n_past = measure_prompt(model, vision, times, frames, unit, 0.1, 64)
    assert len(kept_at) == model.n_layer and scores.shape == (model.n_layer, model.info["n_head_kv"])
    assert n_past > s.n_past > chunks.n_tokens


def test_video_calibration_on_qwen3vl(qwen3_vlm, tmp_path):
    """calibrate --mmproj with a Qwen3-VL mmproj (refused before: Qwen2-VL /
    Qwen2.5-VL only): random weights, so the mechanics as on the demo model."""
    out = tmp_path / "qwen3vl-htsparse.gguf"
    r = cli(
        "calibrate", "-m", str(qwen3_vlm.text), "--mmproj", str(qwen3_vlm.mmproj), "-o", str(out),
        "--samples", "2", "-t", "2",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    keys = htsparse_keys(out)
    assert keys["htsparse.calibration.data"].contents() == "video:needle-frame"
    recall = keys["htsparse.calibration.recall_by_layer"].contents()
    model = Model(str(out), n_ctx=256, n_threads=2)
    assert model.arch == "qwen3vl" and len(recall) == model.n_layer and all(v in (0.0, 0.5, 1.0) for v in recall)
    assert SparseConfig().resolve(model)["select_layer"] == int(keys["htsparse.select_layer"].contents())
    assert same_tensors(qwen3_vlm.text, out)


def test_video_calibration_refuses_a_tower_without_frame_pairs(smolvlm, tmp_path):
    """SmolVLM2 (one tile per frame) has no frame pairs to hide the needle in: one line naming the projector."""
    out = tmp_path / "smolvlm-htsparse.gguf"
    r = cli("calibrate", "-m", str(smolvlm.text), "--mmproj", str(smolvlm.mmproj), "-o", str(out), "--samples", "1")
    assert r.returncode == 1 and not out.exists()
    assert r.stderr.strip().splitlines() == [
        "error: video calibration needs a Qwen2-VL, Qwen2.5-VL or Qwen3-VL mmproj (frame pairs); this one is "
        "idefics3 (video family smolvlm); calibrate this model on text (without --mmproj)"
    ]
