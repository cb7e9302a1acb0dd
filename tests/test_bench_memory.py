"""`bench --memory` as a user runs it (small, on SmolLM2-135M): three engines
each in a fresh process, the agreed JSON fields, and figures that hold
together (ggml's buffer sizes and the kernel's RSS; the sizes themselves are
BENCHMARKS.md's)."""

import json

import pytest

from support.cli import cli

pytestmark = pytest.mark.real_model


def test_memory_rows(smollm_gguf, tmp_path):
    out = tmp_path / "memory.json"
    r = cli(
        "bench",
        "--memory",
        "-m",
        smollm_gguf,
        "-t",
        "2",
        "--context",
        "3000",
        "--keep-ratio",
        "0.2,0.1",
        "--select-layer",
        "4",
        "--prune-layer",
        "4",
        "--json",
        str(out),
    )
    assert r.returncode == 0, r.stderr
    assert "peak KV" in r.stdout and "HT-Sparse keep 0.1 vs llama.cpp" in r.stdout
    result = json.loads(out.read_text())
    (point,) = result["points"]
    assert point["n_tokens"] > 2500 and result["keep_ratios"] == [0.2, 0.1] and "bench --memory" in result["command"]
    assert abs(point["sparse_share"] - 0.9) < 0.01
    assert set(point["sparse"]) == {"0.2", "0.1"}
    rows = [point["llama_cpp"], point["dense"], *point["sparse"].values()]
    for row in rows:
        assert set(row) >= {"kv_bytes_peak", "kv_bytes", "compute_bytes_peak", "rss_peak_bytes", "prefill_s"}
        assert row["rss_peak_bytes"] > row["kv_bytes_peak"] > 0 and row["compute_bytes_peak"] > 0
    llama, dense, sparse, sparse_01 = rows
    # llama.cpp allocates its context at once; ours grow to the prompt; HT-Sparse holds (P + 1) / L of it at most.
    assert llama["kv_bytes_peak"] >= sparse["kv_bytes_tokens"]
    assert dense["kv_bytes_peak"] >= dense["kv_bytes_tokens"]
    assert sparse["kv_bytes_peak"] < 0.5 * dense["kv_bytes_peak"] and sparse["kv_bytes"] < sparse["kv_bytes_peak"]
    assert sparse_01["kv_bytes"] < sparse["kv_bytes"]  # a smaller keep ratio keeps fewer cells


def test_skip_dense_leaves_out_our_dense_row(smollm_gguf, tmp_path):
    out = tmp_path / "memory.json"
    r = cli("bench", "--memory", "--skip-dense", "-m", smollm_gguf, "-t", "2", "--context", "1500", "--json", str(out))
    assert r.returncode == 0, r.stderr
    (point,) = json.loads(out.read_text())["points"]
    assert "dense" not in point and set(point) >= {"llama_cpp", "sparse"}
    assert "--skip-dense" in json.loads(out.read_text())["command"]
    assert "HT-Sparse keep 0.2 vs llama.cpp" in r.stdout and "\n  dense " not in r.stdout
