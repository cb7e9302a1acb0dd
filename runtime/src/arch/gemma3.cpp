// gemma3: Gemma 3 text decoders (and the Gemma 3 VLMs' language model).
// Differs from the llama family in: token embeddings scaled by sqrt(n_embd);
// RMS norms before and after attention and FFN; per-head q/k norms; q scaled
// before attention (1/sqrt(head_dim), or 1/sqrt(n_embd/n_head) on the 27B);
// a GELU-gated FFN; sliding-window layers (window and pattern from the GGUF,
// by default five window layers then one global) with their own rope base;
// optional final logit soft-capping. Norm weights already hold Gemma's
// "1 + w" (upstream's converter adds the 1). Follows llama.cpp's
// src/models/gemma3.cpp.
#include "architecture.h"
#include "decoder_common.h"
#include "errors.h"
#include "graph_context.h"

#include <cmath>

namespace hts {
namespace {

constexpr int kDefaultSwaPattern = 6;  // llama.cpp's load_swa_pattern(ml, 6): every 6th layer is global

std::string layer_tensor(int il, const char * name) { return "blk." + std::to_string(il) + "." + name; }

void load_window(const GgufFile & file, HParams & hp) {
    hp.n_swa = static_cast<int>(file.get_int("gemma3.attention.sliding_window", 0));
    if (hp.n_swa <= 0) return;
    if (hp.n_swa > hp.n_ctx_train) {
        fail(ErrorKind::InvalidFile, format("'%s': sliding window %d is larger than the trained context %d",
                                            file.path().c_str(), hp.n_swa, hp.n_ctx_train));
    }
    hp.swa_layers.assign(hp.n_layer, false);
    const std::string key = "gemma3.attention.sliding_window_pattern";
    const std::vector<int64_t> flags = file.get_int_array(key);
    if (!flags.empty()) {  // one flag per layer
        if (int(flags.size()) < hp.n_layer)
            fail(ErrorKind::InvalidFile, format("'%s': %s has %zu flags for %d layers", file.path().c_str(),
                                                key.c_str(), flags.size(), hp.n_layer));
        for (int il = 0; il < hp.n_layer; ++il) hp.swa_layers[il] = flags[il] != 0;
    } else {
        const int64_t n = file.get_int(key, kDefaultSwaPattern);  // n - 1 window layers, then a global one
        if (n < 0) fail(ErrorKind::InvalidFile, format("'%s': %s is negative", file.path().c_str(), key.c_str()));
        for (int il = 0; il < hp.n_layer; ++il) hp.swa_layers[il] = n == 0 || il % n < n - 1;
    }
    hp.rope_freq_base_swa = static_cast<float>(file.get_float("gemma3.rope.freq_base_swa", 10000.0));
}

class Gemma3 final : public Architecture {
public:
    const char * name() const override { return "gemma3"; }

    void load_hparams(const GgufFile & file, HParams & hp) const override {
        load_decoder_hparams(file, "gemma3", hp);
        hp.rope_type = GGML_ROPE_TYPE_NEOX;
        load_window(file, hp);
        hp.final_logit_softcap = static_cast<float>(file.get_float("gemma3.final_logit_softcapping", 0.0));
        hp.embd_scale = std::sqrt(float(hp.n_embd));
        // gemma_pytorch's query_pre_attn_scalar: n_embd / n_head on the 27B (62 layers), head_dim elsewhere.
        hp.attn_q_scale = 1.0f / std::sqrt(float(hp.n_layer == 62 ? hp.n_embd / hp.n_head : hp.n_embd_head));
    }

    void load_tensors(TensorLoader & loader, const HParams & hp, ModelWeights & w) const override {
        DecoderLayout layout;
        layout.qk_norm = true;
        load_decoder_tensors(loader, hp, w, layout);
        for (int il = 0; il < hp.n_layer; ++il) {
            LayerWeights & l = w.layers[il];
            l.attn_post_norm =
                loader.require(layer_tensor(il, "post_attention_norm.weight"), {hp.n_embd}, WeightUse::Elementwise);
            l.ffn_post_norm =
                loader.require(layer_tensor(il, "post_ffw_norm.weight"), {hp.n_embd}, WeightUse::Elementwise);
        }
    }

    // x = x + post_norm(wo(attn(rope(norm_q(q)), rope(norm_k(k)), v))) over rms_norm(x)
    // x = x + post_norm(down(gelu(gate(h)) * up(h))),                   h = rms_norm(x)
    ggml_tensor * build_graph(GraphContext & gc) const override {
        ggml_tensor * inpL = gc.build_inp_stream();  // [n_embd, n_tokens]; token embeddings scaled
        gc.build_attn_inputs();
        const int n_layer = gc.hp.n_layer;
        for (int il = gc.layer_begin; il < gc.layer_end; ++il) {
            const LayerWeights & l = gc.w.layers[il];
            ggml_tensor * cur = gc.build_norm(inpL, l.attn_norm, "attn_norm", il);
            QKV qkv = gc.build_qkv(l, cur, il);  // [head_dim, n_head(_kv), n_tokens]
            qkv.q = gc.build_rope(gc.build_norm(qkv.q, l.attn_q_norm, "Qcur_normed", il), "Qrope", il);
            qkv.k = gc.build_rope(gc.build_norm(qkv.k, l.attn_k_norm, "Kcur_normed", il), "Krope", il);
            if (gc.kv_only) return gc.build_kv_probe(qkv, il);  // [head_dim, n_head_kv, n_tokens]
            cur = gc.build_attn(l, qkv, il);                    // [n_embd, n_tokens]
            if (il == n_layer - 1) {
                cur = gc.select_outputs(cur);
                inpL = gc.select_outputs(inpL);
            }
            cur = gc.build_norm(cur, l.attn_post_norm, "attn_post_norm", il);
            ggml_tensor * sa_out = ggml_add(gc.ctx0, cur, inpL);
            gc.name(sa_out, "sa_out", il);
            cur = gc.build_norm(sa_out, l.ffn_norm, "ffn_norm", il);
            cur = gc.build_ffn_geglu(l, cur, il);
            cur = gc.build_norm(cur, l.ffn_post_norm, "ffn_post_norm", il);
            inpL = ggml_add(gc.ctx0, cur, sa_out);
            gc.name(inpL, "l_out", il);
        }
        return gc.ends_with_logits() ? gc.build_lm_head(inpL) : inpL;  // staged prefill: the residual
    }
};

}  // namespace

const Architecture & gemma3_architecture() {
    static const Gemma3 arch;
    return arch;
}

}  // namespace hts
