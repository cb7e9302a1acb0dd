"""`bench --video` as a user runs it, on the demo model (random weights) and
a small budget: three engines (llama.cpp + libmtmd, ours dense, ours
HT-Sparse), the agreed JSON fields, comparable prompts and KV figures, and
bad input. Speeds are never asserted (BENCHMARKS.md records them)."""

import json
import subprocess
import sys

import pytest

pytest.importorskip("llama_cpp")
pytestmark = pytest.mark.real_model  # the demo model's tokenizer comes from the packaged Qwen GGUF

ENGINES = ("llama_cpp", "dense", "sparse")
SMALL = ["--max-visual-tokens", "1024", "-t", "2", "--decode-tokens", "4"]  # 16 frames, 8 pairs of 128 tokens


def cli(*args, timeout=600):
    return subprocess.run(
        [sys.executable, "-m", "htsparse_llama", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


@pytest.fixture(scope="module")
def bench(qwen_gguf, tmp_path_factory):
    """One benchmark run (the demo model is made on first use): (process, JSON)."""
    from htsparse_llama.fetch.demo_model import default_model_paths

    default_model_paths()
    out = tmp_path_factory.mktemp("bench_video") / "video.json"
    proc = cli("bench", "--video", "packaged:clip", *SMALL, "--visual-share", "0.9", "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    return proc, json.loads(out.read_text())


def test_three_engines_and_every_field(bench):
    proc, result = bench
    for label in ("llama.cpp dense", "ours dense", "ours sparse"):
        assert label in proc.stdout
    assert "goal prefill >= 2.5x: M" in proc.stdout and "goal KV >= 2.5x less: M" in proc.stdout  # MET or MISS
    assert "random" in proc.stderr and "meaningless" in proc.stderr  # honest about the demo model
    assert result["demo_model"] is True and result["baseline_note"] is None
    assert result["ratios"]["baseline"] == "llama_cpp"
    for engine in ENGINES:
        row = result[engine]
        for key in (
            "frames_per_s",
            "encode_s",
            "frame_decode_s",
            "prefill_tok_s",
            "ttft_s",
            "decode_tok_s",
            "kv_bytes",
            "prompt_tokens",
            "visual_tokens",
        ):
            assert row[key] > 0, (engine, key)
        assert row["frames"] == result["video"]["frames"] == 16
    ratios = result["ratios"]
    for key in ("prefill_speedup", "kv_reduction", "ttft_speedup", "decode_speedup"):
        assert ratios[key] > 0
    assert isinstance(ratios["goals"]["prefill"], bool) and isinstance(ratios["goals"]["kv"], bool)
    assert "--video packaged:clip" in result["command"] and "--visual-share 0.9" in result["command"]
    assert result["settings"]["keep_ratio"] == 0.2 and result["threads"] == 2


def test_sparse_keeps_about_the_keep_ratio_and_less_kv(bench):
    _, result = bench
    sparse, n_pairs = result["sparse"], result["video"]["frames"] // 2
    # The span: the visual tokens and whatever text the layout puts between frame pairs.
    assert result["video"]["visual_tokens"] <= sparse["n_sparse"] <= result["video"]["visual_tokens"] + 10 * n_pairs
    # Whole frame pairs are kept: within one pair of 20% of the visual tokens.
    assert abs(sparse["n_kept"] - 0.2 * sparse["n_sparse"]) <= sparse["n_sparse"] / n_pairs
    assert 0 < sparse["n_kept"] < sparse["n_sparse"]
    assert sparse["kv_bytes"] < result["dense"]["kv_bytes"] and sparse["kv_bytes"] < result["llama_cpp"]["kv_bytes"]
    assert sparse["stage_ms"]["pruned_zone"] > 0


def test_prompts_and_kv_are_comparable(bench):
    _, result = bench
    ref, dense, sparse = (result[e] for e in ENGINES)
    n_pairs = result["video"]["frames"] // 2
    # The same visual tokens; the text differs only by the layout around the frame pairs
    # (llama.cpp: <|vision_start|>/<|vision_end|> per pair; ours: VideoTurn's layout).
    assert ref["visual_tokens"] == dense["visual_tokens"] == result["video"]["visual_tokens"]
    assert dense["prompt_tokens"] == sparse["prompt_tokens"]
    assert abs(ref["prompt_tokens"] - dense["prompt_tokens"]) <= 10 * n_pairs + 8
    for row in (ref, dense):
        assert 0.85 <= row["visual_share"] <= 0.95  # --visual-share 0.9
    # llama.cpp: K/V of its used cells, below what it allocates and what its state holds.
    assert ref["kv_bytes"] <= ref["kv_alloc_bytes"] and ref["kv_bytes"] <= ref["kv_state_bytes"]
    # Ours dense: a cache sized to the prompt and the decoded tokens (256-cell padding).
    assert 0.8 < dense["kv_bytes"] / ref["kv_bytes"] < 1.5


def test_missing_video_is_one_clear_line(tmp_path):
    r = cli("bench", "--video", str(tmp_path / "missing.mp4"), "-t", "2")
    assert r.returncode == 1 and "missing.mp4" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


@pytest.mark.parametrize(
    "args, fragment",
    [
        pytest.param(
            ["--video", "packaged:clip", "--keep-ratio", "0.2,0.3"], "one --keep-ratio", id="two-keep-ratios-with-video"
        ),
        pytest.param(["--video", "packaged:clip", "--visual-share", "1.5"], "--visual-share", id="visual-share=1.5"),
        pytest.param(["--video", "packaged:clip", "-m", "model.gguf"], "--mmproj", id="model-without-mmproj"),
        pytest.param([], "-m MODEL", id="no-model"),
    ],
)
def test_bad_options_are_one_clear_line(args, fragment):
    r = cli("bench", *args)
    assert r.returncode == 1 and fragment in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_without_llama_cpp_mtmd_the_baseline_is_our_dense_path(bench, monkeypatch, tmp_path, capsys):
    """Where libmtmd cannot be driven, the run still completes and says so."""
    from htsparse_llama.bench import video as bench_video
    from htsparse_llama.cli import main

    def unavailable(*_args, **_kwargs):
        raise RuntimeError("libmtmd could not load it")

    monkeypatch.setattr(bench_video, "LlamaMtmd", unavailable)
    out = tmp_path / "fallback.json"
    assert (
        main(
            [
                "bench",
                "--video",
                "packaged:clip",
                "--max-visual-tokens",
                "512",
                "-t",
                "2",
                "--decode-tokens",
                "2",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    captured = capsys.readouterr()
    assert "unavailable" in captured.err and "llama.cpp dense" not in captured.out
    result = json.loads(out.read_text())
    assert result["llama_cpp"] is None and result["ratios"]["baseline"] == "dense"
    assert "libmtmd could not load it" in result["baseline_note"]
    assert result["ratios"]["kv_reduction"] > 1
