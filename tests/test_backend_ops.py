"""Every ggml op our graphs build runs on Metal, CUDA and Vulkan: no Apple (or
GPU) machine is needed to catch a graph change that the scheduler would send
back to the CPU there.

The graphs run here on the CPU with op recording on (_native._set_op_recording,
runtime/src/graph_runner.cpp records every node handed to a backend: op,
unary/GLU sub-op, types, layouts, the parameters supports_op reads). Each
recorded node is then put to the supports_op functions of the pinned
llama.cpp's Metal, CUDA and Vulkan backends, as read by support/backend_support.py
(its docstring says what that parse decides from the source, what from a
hand-written rule, and what it cannot see: device properties are assumed
those of a current GPU, shapes beyond head sizes and buffer limits are not
known).

Scenarios, so that every graph the runtime builds is seen at least once:
- dense prefill (several micro-batches) and decode, per architecture: llama
  and qwen2 on the real small models (their quantisation mixes: SmolLM2 Q4_1
  with a Q8_0 embedding table; Qwen2.5-Coder Q5_0/Q4_K/Q6_K/Q8_0 with a Q5_0
  table), and on tiny models with real head sizes (llama 64 in f16, q8_0 and
  Q4_K_M; qwen2vl 128 in f16, with M-RoPE embedding rows);
- HT-Sparse: staged prefill with the query capture, saliency (one key chunk,
  and several: a span longer than the 4096-key chunk), segment selection,
  retroactive KV compaction, routed decode (full and sparse groups in one
  layer), the pruned zone, S = P, P = L, re-routing on a follow-up.
Tiny models with the head size 16 of tiny_models.py are not used: no Metal
or CUDA flash-attention kernel has it, and no real model does.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Dict, List

import numpy as np
import pytest
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

from htsparse_convert import K_QUANTS, quantize_gguf
from htsparse_llama import Model, SparseConfig
from htsparse_llama._native_loader import native
from htsparse_llama.tasks.text import follow_up_tokens, passkey
from support import backend_support as bs
from support.parity import image_layout
from support.tiny_models import VISION_2_5, convert, randomize_
from support.upstream_converter import UpstreamUnavailable

pytestmark = pytest.mark.real_model  # the tiny models carry real vocabularies

BACKENDS = ("Metal", "CUDA", "Vulkan")
# Tiny decoders with the head sizes of the models we target: 64 (Qwen2.5 0.5B,
# SmolLM2, SmolVLM2) and 128 (Qwen2-VL / Qwen2.5-VL 2B-7B). Width 256 so that
# K-quants apply (rows of 256).
LLAMA_64 = dict(
    hidden_size=256,
    intermediate_size=512,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=8192,
    rms_norm_eps=1e-5,
)
QWEN2VL_128 = dict(LLAMA_64, num_attention_heads=2, num_key_value_heads=1)
MROPE_128 = [16, 24, 24]  # t, h, w pairs of a 128 head (Qwen2-VL's own)


# -- the graphs -----------------------------------------------------------------------------


def _recording(fn) -> List[bs.Node]:
    native._set_op_recording(True)
    try:
        fn()
        return [bs.Node.of(d) for d in native._recorded_ops()]
    finally:
        native._set_op_recording(False)


def _dense(model: Model, ids: List[int]) -> None:
    s = model.session(n_ctx=max(1024, len(ids) + 16), n_batch=32)  # several micro-batches, then decode
    s.add_tokens(ids)
    s.generate(max_tokens=3, temperature=0, stream=False)


def _sparse(model: Model, prompt, config: SparseConfig, follow_up: str = "") -> None:
    n = len(prompt.prefix) + len(prompt.span) + len(prompt.suffix)
    s = model.session(n_ctx=max(1024, n + 64), n_batch=128, sparse=config)
    s.add_tokens(prompt.prefix)
    s.add_text(model.detokenize(prompt.span), sparse=True)
    s.add_tokens(prompt.suffix)
    s.generate(max_tokens=3, temperature=0, stream=False)
    assert s.stats().n_kept < s.stats().n_sparse, "the selection kept everything: the sparse paths did not run"
    if follow_up:
        s.add_tokens(follow_up_tokens(model, follow_up))
        s.generate(max_tokens=3, temperature=0, stream=False)


def _sparse_configs(n_layer: int) -> Dict[str, SparseConfig]:
    """Routed and pruned zones, S = P (FastV-like), P = L (routing only),
    re-routing. S<P<L keeps a quarter of the (layer, KV head) pairs of [0, P)
    full: one of the tiny llama's four, so one layer holds a full and a sparse
    group (routed attention's concat)."""
    s = max(1, n_layer // 6)
    p = min(n_layer - 1, 2 * s)
    return {
        "sparse S<P<L": SparseConfig(keep_ratio=0.3, select_layer=s, prune_layer=p, full_head_ratio=0.25),
        "sparse S=P": SparseConfig(keep_ratio=0.3, select_layer=s, prune_layer=s, full_head_ratio=0.5),
        "sparse P=L": SparseConfig(keep_ratio=0.3, select_layer=s, prune_layer=n_layer, full_head_ratio=0.5),
        "reroute": SparseConfig(keep_ratio=0.3, select_layer=s, prune_layer=p, full_head_ratio=0.5, reroute=True),
    }


def _text_scenarios(name: str, model: Model, n_lines: int = 24, configs=None) -> Dict[str, List[bs.Node]]:
    prompt = passkey(model, seed=3, n_lines=n_lines)
    out = {f"{name} dense": _recording(lambda: _dense(model, prompt.prefix + prompt.span + prompt.suffix))}
    for label, config in (configs or _sparse_configs(model.n_layer)).items():
        follow = "Which node ran the last backup?" if config.reroute else ""
        out[f"{name} {label}"] = _recording(lambda c=config, f=follow: _sparse(model, prompt, c, f))
    return out


def _tiny_llama(vocab, path, out_type: str):
    config = LlamaConfig(vocab_size=vocab.n_tokens, tie_word_embeddings=False, rope_theta=100000.0, **LLAMA_64)
    model = LlamaForCausalLM(config)
    randomize_(model, seed=11)
    if out_type in K_QUANTS:
        f16 = convert(model, path.with_suffix(".f16.gguf"), vocab, out_type="f16")
        return quantize_gguf(f16, path, out_type)
    return convert(model, path, vocab, out_type=out_type)


def _qwen2vl_scenarios(vocab, path) -> Dict[str, List[bs.Node]]:
    """qwen2vl (M-RoPE, head 128): text, a grid of embedding rows at image
    positions (dense, then as a sparse span of frames), text; decode."""
    text = dict(
        QWEN2VL_128,
        vocab_size=vocab.n_tokens,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": MROPE_128},
    )
    config = Qwen2_5_VLConfig(
        text_config=text, vision_config=dict(VISION_2_5, out_hidden_size=256), tie_word_embeddings=False
    )
    hf = Qwen2_5_VLForConditionalGeneration(config)
    randomize_(hf, seed=12)
    model = Model(str(convert(hf, path, vocab, out_type="f16")), n_ctx=1024, n_threads=2)
    positions, chunks = image_layout(n_text_before=12, grid=(4, 6, 8), n_text_after=20)
    (n_before, _), (n_grid, grid_pos), (n_after, _) = chunks
    rng = np.random.default_rng(5)
    ids = [int(t) for t in rng.integers(0, 150000, size=n_before + n_after)]
    rows = rng.normal(0, 0.05, size=(n_grid, 256)).astype(np.float32)
    frames = list(range(0, n_grid, n_grid // 4))

    def run(config):
        s = model.session(n_ctx=1024, n_batch=64, sparse=config)
        s.add_tokens(ids[:n_before])
        if config is None:
            s.add_embeddings(rows, positions=grid_pos, placeholder=151655)
        else:
            s.add_embeddings(rows, positions=grid_pos, placeholder=151655, sparse=True, segments=frames)
        s.add_tokens(ids[n_before:])
        s.generate(max_tokens=3, temperature=0, stream=False)

    out = {"qwen2vl-f16 dense (M-RoPE rows)": _recording(lambda: run(None))}
    for label, config in _sparse_configs(4).items():
        if not config.reroute:
            out[f"qwen2vl-f16 {label} (M-RoPE rows)"] = _recording(lambda c=config: run(c))
    return out


@pytest.fixture(scope="module")
def backends() -> Dict[str, bs.Backend]:
    try:
        return bs.load_backends()
    except UpstreamUnavailable as exc:
        pytest.skip(f"no network to fetch the llama.cpp sources: {exc}")


@pytest.fixture(scope="module")
def recorded(qwen_gguf, smollm_gguf, qwen_vocab, smollm_vocab, tiny_dir) -> Dict[str, List[bs.Node]]:
    """scenario -> the distinct nodes its graphs handed to the backend."""
    if not hasattr(native, "_set_op_recording"):
        pytest.skip("this _native predates op recording (graph_runner.cpp): rebuild the package")
    out: Dict[str, List[bs.Node]] = {}
    qwen = Model(qwen_gguf, n_ctx=1024, n_threads=2)
    out.update(_text_scenarios("qwen2.5-coder-0.5b (Q5_0/Q4_K/Q6_K/Q8_0)", qwen))
    smol = Model(smollm_gguf, n_ctx=1024, n_threads=2)
    out.update(_text_scenarios("smollm2-135m (Q4_1)", smol))
    configs = _sparse_configs(4)
    for out_type in ("f16", "q8_0", "Q4_K_M"):
        path = _tiny_llama(smollm_vocab, tiny_dir / f"llama-h64-{out_type}.gguf", out_type)
        model = Model(str(path), n_ctx=8192, n_threads=2)
        out.update(
            _text_scenarios(
                f"llama-h64-{out_type}",
                model,
                configs=(configs if out_type == "f16" else {"sparse S<P<L": configs["sparse S<P<L"]}),
            )
        )
    # A span over 4096 keys: the saliency runs in several key chunks (concatenated).
    out.update(
        _text_scenarios(
            "llama-h64-Q4_K_M long span", model, n_lines=360, configs={"sparse S<P<L": configs["sparse S<P<L"]}
        )
    )
    out.update(_qwen2vl_scenarios(qwen_vocab, tiny_dir / "qwen2vl-h128-f16.gguf"))
    return out


# -- the checks -----------------------------------------------------------------------------


def _table(rows) -> str:
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def support_table(backends: Dict[str, bs.Backend], nodes: List[bs.Node]) -> str:
    """One row per op (and sub-op): the type signatures seen, and per backend
    how many of its nodes pass, decided from the source or by a rule, with
    the device properties assumed."""
    by_op = defaultdict(set)
    for n in nodes:
        by_op[f"{n.op}:{n.sub}" if n.sub else n.op].add(n)
    rows = [("op", "types seen (result <- sources)", *BACKENDS)]
    for op in sorted(by_op):
        group = sorted(by_op[op], key=lambda n: n.label())
        sigs = sorted({f"{n.type}<-{','.join(s or '-' for s in n.src)}" for n in group})
        cells = []
        for name in BACKENDS:
            verdicts = [bs.check_node(backends[name], n) for n in group]
            n_ok = sum(v.ok for v in verdicts)
            how = "/".join(sorted({v.how for v in verdicts}))
            assumed = sorted({a.split(".")[-1].split("->")[-1] for v in verdicts for a in v.assumed})
            cell = f"{'yes' if n_ok == len(group) else 'NO'} {n_ok}/{len(group)} {how}"
            cells.append(cell + (f" (assumes {', '.join(assumed)})" if assumed else ""))
        rows.append((op, " ".join(sigs), *cells))
    return _table(rows)


def test_the_rules_and_the_preambles_match_the_pinned_source(backends):
    assert bs.check_anchors(backends) == []


def test_the_scenarios_build_every_graph(recorded):
    """Recording works and the HT-Sparse paths ran: the ops and types that
    only those paths build are there."""
    nodes = {n for ns in recorded.values() for n in ns}
    seen = {(n.op, n.sub) for n in nodes}
    for op in [
        "FLASH_ATTN_EXT",
        "ARGSORT",
        "POOL_1D",
        "CONCAT",
        "SUM_ROWS",
        "DIV",
        "LOG",
        "CLAMP",
        "SCALE",
        "CPY",
        "GET_ROWS",
        "RMS_NORM",
        "ROPE",
        "MUL_MAT",
        "CONT",
        "TRANSPOSE",
    ]:
        assert (op, "") in seen, op
    assert ("UNARY", "EXP") in seen and ("GLU", "SWIGLU") in seen
    concat_dims = {n.param("dim") for n in nodes if n.op == "CONCAT"}
    assert concat_dims >= {"0", "1"}, "saliency over several key chunks (dim 0) and routed attention (dim 1)"
    rope_modes = {n.param("mode") for n in nodes if n.op == "ROPE"}
    assert rope_modes >= {"0", "2", "8"}, "llama (normal), qwen2 (NEOX), qwen2vl (M-RoPE)"
    weights = {n.src[0] for n in nodes if n.op == "MUL_MAT"}
    assert weights >= {"f16", "q8_0", "q4_1", "q4_K", "q6_K"}, weights
    assert any(n.op == "GET_ROWS" and n.src[0] == "f16" for n in nodes), "KV compaction gathers f16 cache rows"
    assert {n.param("dk") for n in nodes if n.op == "FLASH_ATTN_EXT"} == {"64", "128"}
    for scenario, ns in recorded.items():
        if "sparse" in scenario or "reroute" in scenario:
            assert {"ARGSORT", "POOL_1D", "FLASH_ATTN_EXT"} <= {n.op for n in ns}, f"{scenario}: no selection"
            assert any(n.op == "GET_ROWS" and n.src[0] == "f16" for n in ns), f"{scenario}: no compaction"


def test_every_recorded_op_runs_on_metal_cuda_and_vulkan(backends, recorded):
    nodes = sorted({n for ns in recorded.values() for n in ns}, key=lambda n: n.label())
    table = support_table(backends, nodes)
    print(f"\n{len(nodes)} distinct nodes over {len(recorded)} scenarios:\n{table}")
    failures = []
    for name in BACKENDS:
        for n in nodes:
            v = bs.check_node(backends[name], n)
            if not v.ok:
                where = [s for s, ns in recorded.items() if n in ns]
                more = f" and {len(where) - 1} more" if len(where) > 1 else ""
                failures.append(
                    f"{name}: {n.label()} layout {n.layout} / {','.join(n.src_layout)} "
                    f"({v.how}): {v.reason}; in {where[0]}{more}"
                )
    assert not failures, "ops that would fall back to the CPU:\n" + "\n".join(failures) + "\n\n" + table


# -- the checker itself ---------------------------------------------------------------------


def node(op, type_, *src, sub="", layout="c12red3", params="") -> bs.Node:
    return bs.Node.of(
        {
            "op": op,
            "sub": sub,
            "type": type_,
            "src": list(src),
            "layout": layout,
            "src_layout": [layout if s else "" for s in src],
            "params": params,
        }
    )


def test_the_parse_reads_each_switch(backends):
    for name, be in backends.items():
        assert len(be.cases) > 60, f"{name}: {len(be.cases)} cases"
        for op in ("MUL_MAT", "FLASH_ATTN_EXT", "GET_ROWS", "CPY", "ROPE", "UNARY", "GLU"):
            assert op in be.cases, f"{name} lists no {op}"
        assert be.default.verdict == "no"
    # Cases that read as plain `return true;`
    assert backends["CUDA"].static("CONT") == "yes" and backends["Vulkan"].static("RMS_NORM") == "yes"
    assert backends["Metal"].static("ROPE") == "yes" and backends["Metal"].static("ARGSORT") == "yes"
    assert backends["Metal"].static("UNARY", "EXP") == "conditional"
    assert backends["Metal"].static("UNARY", "NOT_AN_OP") == "no"  # the sub-switch's default


def test_the_checker_flags_what_a_backend_refuses(backends):
    """Controls: refusals found in the parse are reported as such."""
    metal, cuda, vulkan = (backends[b] for b in BACKENDS)
    # An op Metal has no case for (default: return false) while CUDA returns true.
    assert metal.static("DIAG_MASK_INF") == "no" and cuda.static("DIAG_MASK_INF") == "yes"
    mask_inf = node("DIAG_MASK_INF", "f32", "f32")
    v = bs.check_node(metal, mask_inf)
    assert not v.ok and v.how == "source" and "returns false" in v.reason
    assert bs.check_node(cuda, mask_inf).ok
    # Type conditions evaluated from the source.
    mixed_add = node("ADD", "f32", "f32", "f16")  # Metal wants src0 and src1 of one type
    assert not bs.check_node(metal, mixed_add).ok and bs.check_node(cuda, mixed_add).ok
    assert not bs.check_node(cuda, node("SCALE", "f16", "f16")).ok  # CUDA scales F32 / BF16 only
    assert not bs.check_node(vulkan, node("MUL_MAT", "f32", "q4_0", "bf16")).ok  # BF16 src1 only with BF16 src0
    strided_w = bs.Node("MUL_MAT", "", "f32", ("q4_K", "f32"), "c12red3", ("2r3", "c12red3"), ())
    assert not bs.check_node(cuda, strided_w).ok and bs.check_node(metal, strided_w).ok  # CUDA: nb[0] == type size
    # A case that needs what is not recorded (here a row length) is undecided, never supported.
    v = bs.check_node(cuda, node("GET_ROWS", "f32", "iq4_nl", "i32"))
    assert not v.ok and v.how == "undecided" and "ne[0]" in v.reason
    # Layout conditions: Vulkan's POOL_1D wants a contiguous source.
    pool = node("POOL_1D", "f32", "f32", params="pool=max")
    assert bs.check_node(vulkan, pool).ok
    strided = bs.Node("POOL_1D", "", "f32", ("f32",), "c12red3", ("2re3",), (("pool", "max"),))
    assert not bs.check_node(vulkan, strided).ok
    # Flash attention head sizes: 16 has no Metal or CUDA kernel, Vulkan takes any multiple of 8.
    fa = "dk={d},dv={d},gqa=2,mask_ne2=1,max_bias=0,prec=f32"
    fa16 = node("FLASH_ATTN_EXT", "f32", "f32", "f16", "f16", "f16", params=fa.format(d=16))
    assert not bs.check_node(metal, fa16).ok and bs.check_node(vulkan, fa16).ok
    v = bs.check_node(cuda, fa16)
    assert not v.ok and v.how == "rule" and "head size 16" in v.reason
    fa64 = node("FLASH_ATTN_EXT", "f32", "f32", "f16", "f16", "f16", params=fa.format(d=64))
    assert all(bs.check_node(b, fa64).ok for b in (metal, cuda, vulkan))
    q4k_kv = node("FLASH_ATTN_EXT", "f32", "f32", "q4_K", "q4_K", "f16", params=fa.format(d=64))
    assert not any(bs.check_node(b, q4k_kv).ok for b in (metal, cuda, vulkan))
    # Device properties are assumed, and say so.
    assert "dev->props.has_simdgroup_reduction" in bs.check_node(metal, node("SUM_ROWS", "f32", "f32")).assumed
