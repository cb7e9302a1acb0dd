#include "graph_context.h"

#include "hts_ops.h"
#include "kv_cache.h"
#include "model.h"

#include <cmath>

namespace hts {

GraphContext::GraphContext(const Model & model, const KvCache & kv_cache, ggml_context * ctx, ggml_cgraph * graph,
                           const MicroBatch & mb)
    : ctx0(ctx), gf(graph), hp(model.hparams()), w(model.weights()), kv(kv_cache), n_tokens(mb.n_tokens),
      first_cell(mb.first_cell), n_outputs(mb.n_outputs), end_cell(mb.end_cell()), n_kv(kv_cache.n_kv_for(mb.kv_end())),
      n_kv_swa(kv_cache.n_kv_window(end_cell)), layer_begin(mb.layer_begin),
      layer_end(mb.layer_end < 0 ? model.hparams().n_layer : mb.layer_end), first_sparse_cell(mb.first_sparse_cell),
      n_kv_sparse(kv_cache.is_split() ? kv_cache.n_sparse_kv_for(mb.first_sparse_cell + mb.n_tokens) : 0),
      capture_q(mb.capture_q), kv_only(mb.kv_only), embd_input(mb.embd_input), cells(mb.cells),
      window_cells(mb.window_cells), window_pruned_from(mb.window_pruned_from),
      n_deepstack_in(mb.kv_only ? 0 : mb.n_deepstack_in), captured_q(model.hparams().n_layer, nullptr) {}

// The query window's roped queries, for saliency after the pass (selection).
void GraphContext::capture_queries(ggml_tensor * q, int il) {
    if (capture_q <= 0) return;
    ggml_tensor * tail = ggml_view_3d(ctx0, q, q->ne[0], q->ne[1], capture_q, q->nb[1], q->nb[2],
                                      size_t(n_tokens - capture_q) * q->nb[2]);
    tail = ggml_cont(ctx0, tail);  // [head_dim, n_head, capture_q]
    name(tail, "captured_q", il);
    ggml_set_output(tail);
    ggml_build_forward_expand(gf, tail);
    captured_q[il] = tail;
}

void GraphContext::name(ggml_tensor * t, const char * nm, int il) const {
    if (il >= 0)
        ggml_format_name(t, "%s-%d", nm, il);
    else
        ggml_set_name(t, nm);
}

ggml_tensor * GraphContext::build_inp_stream() {
    if (n_deepstack_in > 0) {
        inp_deepstack = ggml_new_tensor_2d(ctx0, GGML_TYPE_F32, int64_t(hp.n_embd) * n_deepstack_in, n_tokens);
        ggml_set_input(inp_deepstack);
        name(inp_deepstack, "inp_deepstack", layer_begin);
    }
    if (layer_begin == 0 && !embd_input) return build_inp_embd();
    inp_residual = ggml_new_tensor_2d(ctx0, GGML_TYPE_F32, hp.n_embd, n_tokens);
    ggml_set_input(inp_residual);
    name(inp_residual, "inp_residual", layer_begin);
    return inp_residual;
}

ggml_tensor * GraphContext::build_inp_embd() {
    inp_tokens = ggml_new_tensor_1d(ctx0, GGML_TYPE_I32, n_tokens);
    ggml_set_input(inp_tokens);
    name(inp_tokens, "inp_tokens", -1);
    ggml_tensor * x = ggml_get_rows(ctx0, w.tok_embd, inp_tokens);  // [n_embd, n_tokens]
    name(x, "inp_embd", -1);
    if (hp.embd_scale > 0.0f) {  // token ids only: embedding rows (images) come in at their scale
        x = ggml_scale(ctx0, x, hp.embd_scale);
        name(x, "inp_scaled", -1);
    }
    return x;
}

void GraphContext::build_attn_inputs() {
    inp_pos = ggml_new_tensor_1d(ctx0, GGML_TYPE_I32, int64_t(n_tokens) * hp.n_pos_per_token);
    ggml_set_input(inp_pos);
    name(inp_pos, "inp_pos", -1);
    inp_kq_mask = ggml_new_tensor_2d(ctx0, GGML_TYPE_F16, n_kv, n_tokens);
    ggml_set_input(inp_kq_mask);
    name(inp_kq_mask, "inp_kq_mask", -1);
    if (hp.n_swa > 0) {
        inp_kq_mask_swa = ggml_new_tensor_2d(ctx0, GGML_TYPE_F16, n_kv_swa, n_tokens);
        ggml_set_input(inp_kq_mask_swa);
        name(inp_kq_mask_swa, "inp_kq_mask_swa", -1);
        if (has_pruned_window_layers()) {
            inp_kq_mask_swa_pruned = ggml_new_tensor_2d(ctx0, GGML_TYPE_F16, n_kv_swa, n_tokens);
            ggml_set_input(inp_kq_mask_swa_pruned);
            name(inp_kq_mask_swa_pruned, "inp_kq_mask_swa_pruned", -1);
        }
        if (window_cells) {
            inp_window_rows = ggml_new_tensor_1d(ctx0, GGML_TYPE_I32, n_tokens);
            ggml_set_input(inp_window_rows);
            name(inp_window_rows, "inp_window_rows", -1);
        }
    }
    if (kv.is_split()) build_routed_inputs();
    if (n_outputs < n_tokens) {
        inp_out_ids = ggml_new_tensor_1d(ctx0, GGML_TYPE_I32, n_outputs);
        ggml_set_input(inp_out_ids);
        name(inp_out_ids, "inp_out_ids", -1);
    }
}

ggml_tensor * GraphContext::build_norm(ggml_tensor * x, ggml_tensor * weight, const char * nm, int il) {
    ggml_tensor * cur = ggml_mul(ctx0, ggml_rms_norm(ctx0, x, hp.rms_eps), weight);
    name(cur, nm, il);
    return cur;
}

static ggml_tensor * project(ggml_context * ctx, ggml_tensor * wt, ggml_tensor * bias, ggml_tensor * x) {
    ggml_tensor * cur = ggml_mul_mat(ctx, wt, x);
    return bias ? ggml_add(ctx, cur, bias) : cur;
}

QKV GraphContext::build_qkv(const LayerWeights & l, ggml_tensor * x, int il) {
    const int64_t d = hp.n_embd_head;
    QKV r;
    r.q = ggml_reshape_3d(ctx0, project(ctx0, l.wq, l.bq, x), d, hp.n_head, n_tokens);
    r.k = ggml_reshape_3d(ctx0, project(ctx0, l.wk, l.bk, x), d, hp.n_head_kv, n_tokens);
    r.v = ggml_reshape_3d(ctx0, project(ctx0, l.wv, l.bv, x), d, hp.n_head_kv, n_tokens);
    name(r.q, "Qcur", il);
    name(r.k, "Kcur", il);
    name(r.v, "Vcur", il);
    return r;
}

ggml_tensor * GraphContext::build_rope(ggml_tensor * x, const char * nm, int il) {
    // No YaRN: ext_factor 0, attn_factor 1, beta_fast 32, beta_slow 1 (llama.cpp defaults).
    // Sliding-window layers have their own base and no scaling (llama.cpp: rope_freq_base_train_swa).
    const bool swa = hp.is_swa(il);
    const float base = swa ? hp.rope_freq_base_swa : hp.rope_freq_base, scale = swa ? 1.0f : hp.rope_freq_scale;
    ggml_tensor * cur;
    if (hp.rope_type == GGML_ROPE_TYPE_MROPE || hp.rope_type == GGML_ROPE_TYPE_IMROPE) {
        int sections[4];
        for (int i = 0; i < 4; ++i) sections[i] = hp.rope_sections[i];
        cur = ggml_rope_multi(ctx0, x, inp_pos, nullptr, hp.n_rot, sections, hp.rope_type, hp.n_ctx_train, base, scale,
                              0.0f, 1.0f, 32.0f, 1.0f);
    } else {
        cur = ggml_rope_ext(ctx0, x, inp_pos, w.rope_freqs, hp.n_rot, hp.rope_type, hp.n_ctx_train, base, scale, 0.0f,
                            1.0f, 32.0f, 1.0f);
    }
    name(cur, nm, il);
    return cur;
}

void GraphContext::build_routed_inputs() {
    auto input = [&](int64_t ne0, const char * nm, int il) {
        if (ne0 == 0) return (ggml_tensor *)nullptr;
        ggml_tensor * t = ggml_new_tensor_2d(ctx0, GGML_TYPE_I32, ne0, n_tokens);
        ggml_set_input(t);
        name(t, nm, il);
        return t;
    };
    inp_kq_mask_sparse = ggml_new_tensor_2d(ctx0, GGML_TYPE_F16, n_kv_sparse, n_tokens);
    ggml_set_input(inp_kq_mask_sparse);
    name(inp_kq_mask_sparse, "inp_kq_mask_sparse", -1);
    inp_routed.assign(hp.n_layer, {});
    for (int il = layer_begin; il < layer_end; ++il) {
        if (kv.is_window(il)) continue;  // not routed
        const int g_full = kv.n_full_heads(il);
        inp_routed[il] = {input(hp.n_head, "inp_head_perm", il), input(hp.n_head, "inp_head_unperm", il),
                          input(g_full, "inp_full_heads", il), input(hp.n_head_kv - g_full, "inp_sparse_heads", il)};
    }
}

ggml_tensor * GraphContext::build_routed_attn(const LayerWeights & l, const QKV & qkv, int il) {
    const RoutedLayerInputs & in = inp_routed[il];
    kv.store_split(ctx0, gf, il, qkv.k, qkv.v, in.full_heads, in.sparse_heads, first_cell, first_sparse_cell);
    auto kv_view = [&](ggml_tensor * t) {
        return t ? ggml_permute(ctx0, t, 0, 2, 1, 3) : nullptr;
    };  // [head_dim, n, G_group]
    const bool has_full = in.full_heads != nullptr, has_sparse = in.sparse_heads != nullptr;
    ggml_tensor * kf = has_full ? kv_view(kv.group_keys(ctx0, il, true, n_kv)) : nullptr;
    ggml_tensor * vf = has_full ? kv_view(kv.group_values(ctx0, il, true, n_kv)) : nullptr;
    ggml_tensor * ks = has_sparse ? kv_view(kv.group_keys(ctx0, il, false, n_kv_sparse)) : nullptr;
    ggml_tensor * vs = has_sparse ? kv_view(kv.group_values(ctx0, il, false, n_kv_sparse)) : nullptr;
    auto [q, scale] = scaled_q(qkv.q);
    ggml_tensor * cur = hts_routed_attention(ctx0, q, in.head_perm, in.head_unperm, kf, vf, inp_kq_mask, ks, vs,
                                             inp_kq_mask_sparse, scale);  // [head_dim, n_head, n_tokens]
    name(cur, "attn_routed", il);
    cur = ggml_reshape_2d(ctx0, cur, int64_t(hp.n_embd_head) * hp.n_head, n_tokens);
    cur = ggml_mul_mat(ctx0, l.wo, cur);  // [n_embd, n_tokens]
    name(cur, "attn_out", il);
    return cur;
}

std::pair<ggml_tensor *, float> GraphContext::scaled_q(ggml_tensor * q) const {
    if (hp.attn_q_scale > 0.0f) return {ggml_scale(ctx0, q, hp.attn_q_scale), 1.0f};  // gemma3 (as llama.cpp rounds)
    return {q, 1.0f / std::sqrt(float(hp.n_embd_head))};
}

bool GraphContext::is_pruned_window(int il) const {
    return kv.is_window(il) && kv.is_split() && il >= window_pruned_from;
}

bool GraphContext::has_pruned_window_layers() const {
    for (int il = layer_begin; il < layer_end; ++il) {
        if (is_pruned_window(il)) return true;
    }
    return false;
}

ggml_tensor * GraphContext::build_attn(const LayerWeights & l, const QKV & qkv, int il) {
    capture_queries(qkv.q, il);
    const bool window = hp.is_swa(il);
    if (kv.is_split() && !window) return build_routed_attn(l, qkv, il);  // window layers are not routed
    if (window && window_cells)
        kv.store_rows(ctx0, gf, il, qkv.k, qkv.v, inp_window_rows);  // kept tokens, not contiguous
    else if (!cells)
        kv.store(ctx0, gf, il, qkv.k, qkv.v, first_cell);  // a replay's K/V are in the cache already
    auto [q, scale] = scaled_q(qkv.q);
    q = ggml_permute(ctx0, q, 0, 2, 1, 3);                                        // [head_dim, n_tokens, n_head]
    const int rows = window ? n_kv_swa : n_kv;                                    // a window layer's ring, or cells
    ggml_tensor * k = ggml_permute(ctx0, kv.keys(ctx0, il, rows), 0, 2, 1, 3);    // [head_dim, rows, n_head_kv]
    ggml_tensor * v = ggml_permute(ctx0, kv.values(ctx0, il, rows), 0, 2, 1, 3);  // [head_dim, rows, n_head_kv]
    ggml_tensor * mask = !window ? inp_kq_mask : is_pruned_window(il) ? inp_kq_mask_swa_pruned : inp_kq_mask_swa;
    ggml_tensor * cur = ggml_flash_attn_ext(ctx0, q, k, v, mask, scale, 0.0f, 0.0f);  // [head_dim, n_head, n_tokens]
    ggml_prec_set_acc(cur, GGML_PREC_F32);
    name(cur, "attn_fa", il);
    cur = ggml_reshape_2d(ctx0, cur, int64_t(hp.n_embd_head) * hp.n_head, n_tokens);
    cur = ggml_mul_mat(ctx0, l.wo, cur);  // [n_embd, n_tokens]
    name(cur, "attn_out", il);
    return cur;
}

ggml_tensor * GraphContext::add_deepstack(ggml_tensor * x, int il) {
    const int slot = il - layer_begin;
    if (!inp_deepstack || slot < 0 || slot >= n_deepstack_in) return x;
    ggml_tensor * ds = ggml_view_2d(ctx0, inp_deepstack, hp.n_embd, n_tokens, inp_deepstack->nb[1],
                                    size_t(slot) * hp.n_embd * sizeof(float));  // [n_embd, n_tokens]
    x = ggml_add(ctx0, x, ds);
    name(x, "deepstack_out", il);
    return x;
}

ggml_tensor * GraphContext::build_kv_probe(const QKV & qkv, int il) {
    capture_queries(qkv.q, il);
    kv.store(ctx0, gf, il, qkv.k, qkv.v, first_cell);
    return qkv.k;
}

ggml_tensor * GraphContext::build_ffn_swiglu(const LayerWeights & l, ggml_tensor * x, int il) {
    ggml_tensor * gate = ggml_mul_mat(ctx0, l.ffn_gate, x);  // [n_ff, n_tokens]
    ggml_tensor * up = ggml_mul_mat(ctx0, l.ffn_up, x);      // [n_ff, n_tokens]
    ggml_tensor * cur = ggml_swiglu_split(ctx0, gate, up);
    cur = ggml_mul_mat(ctx0, l.ffn_down, cur);  // [n_embd, n_tokens]
    name(cur, "ffn_out", il);
    return cur;
}

ggml_tensor * GraphContext::build_ffn_geglu(const LayerWeights & l, ggml_tensor * x, int il) {
    ggml_tensor * gate = ggml_mul_mat(ctx0, l.ffn_gate, x);  // [n_ff, n_tokens]
    ggml_tensor * up = ggml_mul_mat(ctx0, l.ffn_up, x);      // [n_ff, n_tokens]
    ggml_tensor * cur = ggml_geglu_split(ctx0, gate, up);    // GELU, tanh approximation
    cur = ggml_mul_mat(ctx0, l.ffn_down, cur);               // [n_embd, n_tokens]
    name(cur, "ffn_out", il);
    return cur;
}

ggml_tensor * GraphContext::select_outputs(ggml_tensor * x) {
    return inp_out_ids ? ggml_get_rows(ctx0, x, inp_out_ids) : x;
}

ggml_tensor * GraphContext::build_lm_head(ggml_tensor * x) {
    ggml_tensor * cur = build_norm(x, w.output_norm, "result_norm", -1);
    cur = ggml_mul_mat(ctx0, w.output, cur);  // [n_vocab, n_outputs]
    if (hp.final_logit_softcap > 0.0f) {
        cur = ggml_scale(ctx0, cur, 1.0f / hp.final_logit_softcap);
        cur = ggml_tanh(ctx0, cur);
        cur = ggml_scale(ctx0, cur, hp.final_logit_softcap);
    }
    name(cur, "result_output", -1);
    return cur;
}

}  // namespace hts
