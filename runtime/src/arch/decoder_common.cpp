#include "decoder_common.h"

#include "errors.h"

namespace hts {

void load_decoder_hparams(const GgufFile & file, const std::string & arch, HParams & hp) {
    const std::string p = arch + ".";
    hp.arch = arch;
    hp.n_layer = static_cast<int>(file.get_int(p + "block_count"));
    hp.n_embd = static_cast<int>(file.get_int(p + "embedding_length"));
    hp.n_head = static_cast<int>(file.get_int(p + "attention.head_count"));
    hp.n_head_kv = static_cast<int>(file.get_int(p + "attention.head_count_kv", hp.n_head));
    hp.n_ff = static_cast<int>(file.get_int(p + "feed_forward_length"));
    hp.n_ctx_train = static_cast<int>(file.get_int(p + "context_length", 4096));
    hp.rms_eps = static_cast<float>(file.get_float(p + "attention.layer_norm_rms_epsilon", 1e-6));
    hp.rope_freq_base = static_cast<float>(file.get_float(p + "rope.freq_base", 10000.0));
    const double scale = file.get_float(p + "rope.scaling.factor", 0.0);
    hp.rope_freq_scale = scale > 0.0 ? static_cast<float>(1.0 / scale) : 1.0f;
    if (hp.n_layer <= 0 || hp.n_embd <= 0 || hp.n_head <= 0 || hp.n_head_kv <= 0 || hp.n_head % hp.n_head_kv != 0) {
        fail(ErrorKind::InvalidFile, format("'%s': inconsistent head counts (n_head=%d, n_head_kv=%d)",
                                            file.path().c_str(), hp.n_head, hp.n_head_kv));
    }
    hp.n_embd_head = static_cast<int>(file.get_int(p + "attention.key_length", hp.n_embd / hp.n_head));
    hp.n_rot = static_cast<int>(file.get_int(p + "rope.dimension_count", hp.n_embd_head));
    // Checked here because ggml would abort on them inside the graph.
    if (hp.n_embd_head <= 0 || hp.n_rot <= 0 || hp.n_rot > hp.n_embd_head || hp.n_rot % 2 != 0 || hp.n_ff <= 0) {
        fail(ErrorKind::InvalidFile, format("'%s': inconsistent sizes (head_dim=%d, rope dims=%d, n_ff=%d)",
                                            file.path().c_str(), hp.n_embd_head, hp.n_rot, hp.n_ff));
    }
    const ggml_tensor * embd = file.find_tensor("token_embd.weight");
    if (!embd) fail(ErrorKind::InvalidFile, format("'%s' lacks the tensor 'token_embd.weight'", file.path().c_str()));
    hp.n_vocab = static_cast<int>(embd->ne[1]);
}

void load_mrope_sections(const GgufFile & file, const std::string & arch, HParams & hp) {
    const std::string key = arch + ".rope.dimension_sections";
    hp.n_pos_per_token = 4;
    const std::vector<int64_t> sections = file.get_int_array(key);
    if (sections.size() < 3 || sections.size() > 4) {
        fail(ErrorKind::InvalidFile, format("'%s': %s must hold 3 or 4 values", file.path().c_str(), key.c_str()));
    }
    int64_t total = 0;
    for (size_t i = 0; i < sections.size(); ++i) {
        hp.rope_sections[i] = static_cast<int>(sections[i]);
        total += sections[i];
    }
    // Each section counts rotary pairs, so together they cover n_rot / 2.
    if (sections[0] < 0 || total * 2 > hp.n_rot) {
        fail(ErrorKind::InvalidFile, format("'%s': rope sections cover %lld pairs but rope has %d dimensions",
                                            file.path().c_str(), (long long)total, hp.n_rot));
    }
}

static std::string layer_tensor(int il, const char * name) { return "blk." + std::to_string(il) + "." + name; }

void load_decoder_tensors(TensorLoader & loader, const HParams & hp, ModelWeights & w, DecoderLayout layout) {
    const int64_t n_embd = hp.n_embd, n_vocab = hp.n_vocab, n_ff = hp.n_ff;
    const int64_t n_q = int64_t(hp.n_embd_head) * hp.n_head, n_kv = hp.n_embd_kv();
    // The embedding table stays on the host: a lookup needs no accelerator.
    w.tok_embd = loader.require("token_embd.weight", {n_embd, n_vocab}, WeightUse::GetRows, /*on_host=*/true);
    w.output_norm = loader.require("output_norm.weight", {n_embd}, WeightUse::Elementwise);
    w.output = loader.optional("output.weight", {n_embd, n_vocab}, WeightUse::MatMul);
    if (!w.output) w.output = loader.duplicate("token_embd.weight", {n_embd, n_vocab}, WeightUse::MatMul);
    w.rope_freqs = loader.optional("rope_freqs.weight", {hp.n_rot / 2}, WeightUse::Elementwise);
    w.layers.resize(hp.n_layer);
    for (int il = 0; il < hp.n_layer; ++il) {
        LayerWeights & l = w.layers[il];
        l.attn_norm = loader.require(layer_tensor(il, "attn_norm.weight"), {n_embd}, WeightUse::Elementwise);
        l.wq = loader.require(layer_tensor(il, "attn_q.weight"), {n_embd, n_q}, WeightUse::MatMul);
        l.wk = loader.require(layer_tensor(il, "attn_k.weight"), {n_embd, n_kv}, WeightUse::MatMul);
        l.wv = loader.require(layer_tensor(il, "attn_v.weight"), {n_embd, n_kv}, WeightUse::MatMul);
        if (layout.qkv_bias) {
            l.bq = loader.require(layer_tensor(il, "attn_q.bias"), {n_q}, WeightUse::Elementwise);
            l.bk = loader.require(layer_tensor(il, "attn_k.bias"), {n_kv}, WeightUse::Elementwise);
            l.bv = loader.require(layer_tensor(il, "attn_v.bias"), {n_kv}, WeightUse::Elementwise);
        }
        if (layout.qk_norm) {
            const int64_t d = hp.n_embd_head;
            l.attn_q_norm = loader.require(layer_tensor(il, "attn_q_norm.weight"), {d}, WeightUse::Elementwise);
            l.attn_k_norm = loader.require(layer_tensor(il, "attn_k_norm.weight"), {d}, WeightUse::Elementwise);
        }
        l.wo = loader.require(layer_tensor(il, "attn_output.weight"), {n_q, n_embd}, WeightUse::MatMul);
        l.ffn_norm = loader.require(layer_tensor(il, "ffn_norm.weight"), {n_embd}, WeightUse::Elementwise);
        l.ffn_gate = loader.require(layer_tensor(il, "ffn_gate.weight"), {n_embd, n_ff}, WeightUse::MatMul);
        l.ffn_up = loader.require(layer_tensor(il, "ffn_up.weight"), {n_embd, n_ff}, WeightUse::MatMul);
        l.ffn_down = loader.require(layer_tensor(il, "ffn_down.weight"), {n_ff, n_embd}, WeightUse::MatMul);
    }
}

}  // namespace hts

#include "graph_context.h"

namespace hts {

ggml_tensor * build_decoder_graph(GraphContext & gc) {
    ggml_tensor * inpL = gc.build_inp_stream();  // [n_embd, n_tokens]
    gc.build_attn_inputs();
    const int n_layer = gc.hp.n_layer;
    for (int il = gc.layer_begin; il < gc.layer_end; ++il) {
        const LayerWeights & l = gc.w.layers[il];
        ggml_tensor * cur = gc.build_norm(inpL, l.attn_norm, "attn_norm", il);
        QKV qkv = gc.build_qkv(l, cur, il);
        if (l.attn_q_norm) {  // [head_dim, n_head(_kv), n_tokens]: rms_norm runs over each head
            qkv.q = gc.build_norm(qkv.q, l.attn_q_norm, "Qcur_normed", il);
            qkv.k = gc.build_norm(qkv.k, l.attn_k_norm, "Kcur_normed", il);
        }
        qkv.q = gc.build_rope(qkv.q, "Qrope", il);
        qkv.k = gc.build_rope(qkv.k, "Krope", il);
        if (gc.kv_only) return gc.build_kv_probe(qkv, il);  // [head_dim, n_head_kv, n_tokens]
        cur = gc.build_attn(l, qkv, il);
        if (il == n_layer - 1) {
            // Only the output rows need the last FFN and the head.
            cur = gc.select_outputs(cur);
            inpL = gc.select_outputs(inpL);
        }
        ggml_tensor * ffn_inp = ggml_add(gc.ctx0, cur, inpL);
        gc.name(ffn_inp, "ffn_inp", il);
        cur = gc.build_norm(ffn_inp, l.ffn_norm, "ffn_norm", il);
        cur = gc.build_ffn_swiglu(l, cur, il);
        inpL = ggml_add(gc.ctx0, cur, ffn_inp);
        gc.name(inpL, "l_out", il);
        inpL = gc.add_deepstack(inpL, il);  // Qwen3-VL's visual rows after the first layers
    }
    return gc.ends_with_logits() ? gc.build_lm_head(inpL) : inpL;  // staged prefill: the residual
}

}  // namespace hts
