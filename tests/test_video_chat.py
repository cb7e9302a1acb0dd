"""`chat --video` driven as a person would: --prompt with the demo model
(random weights), --json, the interactive mode through a pseudo-terminal with
two questions (the second must not encode again), the disk cache across runs,
images, and bad input."""

import json
import os
import sys

import numpy as np
import pytest

from htsparse_llama.video.frames import sample_clip_path
from support.cli import cli

pytestmark = pytest.mark.real_model  # the demo model's tokenizer comes from the packaged Qwen GGUF

CLIP = str(sample_clip_path())
SMALL = ["--max-frames", "4", "--max-visual-tokens", "512", "-t", "2", "-n", "8", "--temp", "0"]


def test_prompt_answers_once_with_a_stats_line(demo_model):
    r = cli("chat", "--video", "packaged:clip", "--prompt", "What happens in the video?", *SMALL)  # the README's
    assert r.returncode == 0, r.stderr
    assert "random" in r.stderr and "meaningless" in r.stderr  # says honestly what runs
    assert "4 frames at" in r.stderr and "visual tokens" in r.stderr  # what the budget chose
    assert r.stdout.strip()  # some (meaningless) answer
    assert "kept" in r.stderr and "MiB" in r.stderr  # the stats line


def test_json_result(demo_model, tmp_path):
    r = cli("chat", "--video", CLIP, "--prompt", "Describe it.", "--json", "--cache-dir", str(tmp_path), *SMALL)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    visual = out["visual"]
    assert visual["frames"] == 4 and visual["visual_tokens"] <= 512 and not visual["from_cache"]
    assert visual["width"] % 28 == 0 and visual["height"] % 28 == 0
    stats = out["stats"]
    assert stats["n_sparse"] >= visual["visual_tokens"] and 0 < stats["n_kept"] < stats["n_sparse"]
    assert stats["kv_bytes"] < stats["kv_bytes_dense"] and isinstance(out["answer"], str)
    # A second run finds the embeddings in the cache and gives the same answer.
    again = json.loads(
        cli("chat", "--video", CLIP, "--prompt", "Describe it.", "--json", "--cache-dir", str(tmp_path), *SMALL).stdout
    )
    assert again["visual"]["from_cache"] and again["answer"] == out["answer"]
    # --dense keeps every visual token.
    dense = json.loads(
        cli(
            "chat",
            "--video",
            CLIP,
            "--prompt",
            "Describe it.",
            "--json",
            "--dense",
            "--cache-dir",
            str(tmp_path),
            *SMALL,
        ).stdout
    )
    assert dense["stats"]["n_sparse"] == 0 and dense["stats"]["kv_bytes"] >= dense["stats"]["kv_bytes_tokens"]


def test_interactive_two_questions_encode_once(demo_model):
    pexpect = pytest.importorskip("pexpect")
    child = pexpect.spawn(
        sys.executable,
        ["-m", "htsparse_llama", "chat", "--video", CLIP, *SMALL],
        encoding="utf-8",
        timeout=300,
        env=dict(os.environ, TERM="dumb"),
    )
    try:
        child.expect("ask about clip.mp4")
        child.expect("> ")
        child.sendline("What is shown first?")
        child.expect(r"kept (\d+) of (\d+) sparse tokens")  # the first answer's stats line
        kept, total = (int(v) for v in child.match.groups())
        assert 0 < kept < total
        child.expect("> ")
        child.sendline("And then?")
        child.expect("prompt tokens")  # the second answer's stats line
        second = child.before
        child.expect("> ")
        assert "encoding" not in second and "decoding frames" not in second  # nothing encoded again
        assert second.strip()  # an answer was streamed
        child.sendline("/exit")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0


def test_images(demo_model, tmp_path):
    from PIL import Image

    y, x = np.mgrid[0:168, 0:224]
    Image.fromarray(np.stack([x, y, (x + y) % 256], -1).astype(np.uint8)).save(tmp_path / "a.png")
    r = cli("chat", "--image", str(tmp_path / "a.png"), "--prompt", "What is this?", "--json", *SMALL)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["visual"]["visual_tokens"] == 48  # 224x168 px: 8x6 merged patches


@pytest.mark.parametrize(
    "make, fragment",
    [
        pytest.param(lambda d: str(d / "missing.mp4"), "missing.mp4", id="missing"),
        pytest.param(
            lambda d: (d / "notes.txt").write_text("hello") and str(d / "notes.txt"), "notes.txt", id="text-file"
        ),
        pytest.param(
            lambda d: (d / "empty.mp4").write_bytes(b"") is not None and str(d / "empty.mp4"),
            "empty.mp4",
            id="empty-file",
        ),
    ],
)
def test_bad_video(demo_model, tmp_path, make, fragment):
    r = cli("chat", "--video", make(tmp_path), "--prompt", "?", *SMALL)
    assert r.returncode == 1 and fragment in r.stderr and "Traceback" not in r.stderr


def test_bad_options(demo_model, tmp_path):
    r = cli("chat", "--video", CLIP, "--prompt", "?", "--max-visual-tokens", "10", *SMALL[:2], "-t", "2")
    assert r.returncode == 1 and "cannot hold" in r.stderr
    r = cli("chat", "-m", str(demo_model[0]), "--video", CLIP, "--prompt", "?")
    assert r.returncode == 1 and "--mmproj" in r.stderr
    # An mmproj of another family (and width) than the model.
    from htsparse_llama.fetch.packaged import fetch_packaged_model

    r = cli(
        "chat",
        "-m",
        str(fetch_packaged_model("smollm2-135m")),
        "--mmproj",
        str(demo_model[1]),
        "--video",
        CLIP,
        "--prompt",
        "?",
    )
    assert r.returncode == 1 and "is a Qwen2.5-VL vision tower" in r.stderr and "is llama" in r.stderr
    assert not list(tmp_path.iterdir())
