"""`bench` as a user runs it: both engines measured, JSON with the agreed keys.
Tiny lengths keep it quick; the numbers themselves are not asserted (speed is
for BENCHMARKS.md, never a timed test)."""

import json
import subprocess
import sys

import pytest

pytest.importorskip("llama_cpp")


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "htsparse_llama", *args], capture_output=True, text=True, timeout=600)


def test_bench_writes_json_with_both_engines(smollm_gguf, tmp_path):
    out = tmp_path / "bench.json"
    proc = run_cli(
        "bench",
        "-m",
        smollm_gguf,
        "-t",
        "2",
        "--prefill",
        "32,64",
        "--decode-ctx",
        "64",
        "--decode-tokens",
        "4",
        "--reps",
        "1",
        "--dense-only",
        "--json",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr
    assert "prefill 64 tokens" in proc.stdout and "decode at 64 context" in proc.stdout
    result = json.loads(out.read_text())
    for engine in ("ours", "llama_cpp"):
        assert set(result["prefill_tok_s"][engine]) == {"32", "64"}
        assert all(v > 0 for v in result["prefill_tok_s"][engine].values())
        assert result["decode_tok_s"][engine] > 0
    assert result["threads"] == 2 and result["decode_tok_s"]["context"] == 64
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param(["--prefill", "0"], id="prefill=0"),
        pytest.param(["--prefill", "abc"], id="prefill=abc"),
        pytest.param(["--reps", "-1"], id="reps=-1"),
    ],
)
def test_bench_bad_arguments_give_one_line(bad):
    proc = run_cli("bench", "-m", "x.gguf", *bad)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_bench_missing_model_is_one_clear_line(tmp_path):
    proc = run_cli("bench", "-m", str(tmp_path / "absent.gguf"), "--reps", "1")
    assert proc.returncode == 1
    assert "absent.gguf" in proc.stderr and "Traceback" not in proc.stderr


def test_bench_sparse_comparison_writes_every_engine(smollm_gguf, tmp_path):
    out = tmp_path / "sparse.json"
    proc = run_cli(
        "bench",
        "-m",
        smollm_gguf,
        "-t",
        "2",
        "--context",
        "600",
        "--trials",
        "1",
        "--keep-ratio",
        "0.3",
        "--select-layer",
        "3",
        "--prune-layer",
        "5",
        "--task",
        "multikey",
        "--reroute",
        "--json",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    for engine in ("llama_cpp", "dense", "sparse", "random"):
        row = result[engine]
        assert set(row) >= {"prefill_tok_s", "ttft_ms", "decode_tok_s", "kv_bytes", "accuracy"}
        assert row["prefill_tok_s"] > 0 and row["decode_tok_s"] > 0 and 0 <= row["accuracy"] <= 1
    assert result["sparse"]["kv_bytes"] < result["dense"]["kv_bytes"]
    assert "needle_recall" in result["sparse"] and "needle_recall" in result["random"]
    assert result["settings"]["keep_ratio"] == 0.3 and result["settings"]["select_layer"] == 3
    assert result["settings"]["prune_layer"] == 5 and result["sparse"]["stage_ms"]["pruned_zone"] > 0
    assert result["settings"]["task"] == "multikey" and "--task multikey" in result["command"]
    # multikey asks a follow-up on our engines; --reroute selects anew for it.
    assert all("follow_up_accuracy" in result[e] for e in ("dense", "sparse", "random"))
    assert "follow_up_accuracy" not in result["llama_cpp"]
    assert "follow_up_recall" in result["sparse"] and result["sparse"]["stage_ms"]["reroute"] > 0
    assert result["settings"]["reroute"] is True and "--reroute" in result["command"]


def test_multikey_prompt_asks_for_one_of_several_keys(smollm_gguf):
    from htsparse_llama import Model
    from htsparse_llama.tasks.text import multikey

    model = Model(smollm_gguf, n_ctx=512, n_threads=2)
    p = multikey(model, seed=4, n_lines=40)
    text = model.detokenize(p.span)
    assert text.count("The pass key of") == 4
    needle_line = model.detokenize(p.span[p.needle.start : p.needle.stop])
    service = needle_line.split("The pass key of ")[1].split(" is ")[0]
    assert p.answer in needle_line and f"pass key of {service}?" in model.detokenize(p.suffix)
    assert p.needle.start in p.seg_starts


def test_bench_sweep_writes_one_point_per_context_and_keep_ratio(smollm_gguf, tmp_path):
    out = tmp_path / "sweep.json"
    proc = run_cli(
        "bench",
        "-m",
        smollm_gguf,
        "-t",
        "2",
        "--context",
        "300,500",
        "--trials",
        "1",
        "--keep-ratio",
        "0.2,0.5",
        "--select-layer",
        "3",
        "--json",
        str(out),
        "--plot",
        str(tmp_path / "c.png"),
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    points = result["points"]
    assert [(p["context"], p["keep_ratio"]) for p in points] == [(300, 0.2), (300, 0.5), (500, 0.2), (500, 0.5)]
    for a, b in (points[0:2], points[2:4]):
        assert a["llama_cpp"] == b["llama_cpp"]  # dense engines run once per prompt
        # 256-cell padding: at 300 tokens, keep 0.5 may pad to what the dense cache (now sized to the prompt) holds.
        assert a["sparse"]["kv_bytes"] <= b["sparse"]["kv_bytes"] <= b["dense"]["kv_bytes"]
        assert a["sparse"]["kv_bytes"] < a["dense"]["kv_bytes"]
    assert points[2]["n_tokens"] > points[0]["n_tokens"]
    assert result["settings"]["context"] == [300, 500] and "--keep-ratio 0.2,0.5" in result["command"]
    png = (tmp_path / "c.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 20_000


def test_bench_refuses_a_bad_keep_ratio_before_measuring(smollm_gguf):
    proc = run_cli("bench", "-m", smollm_gguf, "--context", "300", "--keep-ratio", "0.2,1.5")
    assert proc.returncode == 1 and "keep_ratio must be in (0, 1]" in proc.stderr


def test_timestamp_and_order_prompts(smollm_gguf):
    from htsparse_llama import Model
    from htsparse_llama.tasks.text import order, timestamp

    model = Model(smollm_gguf, n_ctx=512, n_threads=2)
    p = timestamp(model, seed=5, n_lines=30)
    needle_line = model.detokenize([p.span[i] for i in p.needle])
    time_asked = model.detokenize(p.suffix).split("logged at ")[1].split("?")[0]
    assert needle_line.startswith(time_asked) and needle_line.strip().endswith(p.answer)
    assert model.detokenize(p.span).count(time_asked) == 1
    p = order(model, seed=5, n_lines=30)
    lines = model.detokenize([p.span[i] for i in p.needle]).splitlines()
    assert len(lines) == 2 and p.answer in lines[0] and p.wrong in lines[1]
    assert p.is_right(f"The {p.answer}.") and not p.is_right(f"The {p.wrong}.")
    assert not p.is_right(f"The {p.answer} and then the {p.wrong}.")
