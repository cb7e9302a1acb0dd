// hts_attn_lse and hts_head_saliency: how much attention the query window
// pays to each key of a sparse span, in log-sum-exp form, chunked over keys.
#include "hts_ops.h"

#include <algorithm>
#include <cfloat>
#include <cmath>

namespace {

// Keys [k0, k0 + n) of k [d, n_kv, G] as [d, n, G] (a view, no copy).
ggml_tensor * key_chunk(ggml_context * ctx, ggml_tensor * k, int64_t k0, int64_t n) {
    return ggml_view_3d(ctx, k, k->ne[0], n, k->ne[2], k->nb[1], k->nb[2], size_t(k0) * k->nb[1]);
}

// Row maximum of x [n, R] as [1, R]. Clamped so a row with every key hidden
// gives -FLT_MAX (not -INF) and exp(x - max) stays 0 instead of NaN.
ggml_tensor * row_max(ggml_context * ctx, ggml_tensor * x) {
    ggml_tensor * m = ggml_pool_1d(ctx, x, GGML_OP_POOL_MAX, int(x->ne[0]), int(x->ne[0]), 0);
    return ggml_clamp(ctx, m, -FLT_MAX, FLT_MAX);
}

// log sum exp along rows of x [n, R] -> [1, R].
ggml_tensor * row_lse(ggml_context * ctx, ggml_tensor * x) {
    ggml_tensor * m = row_max(ctx, x);
    ggml_tensor * e = ggml_exp(ctx, ggml_sub(ctx, x, m));
    return ggml_add(ctx, ggml_log(ctx, ggml_sum_rows(ctx, e)), m);
}

// Scaled scores of queries q [d, n_q, H] against keys [d, n, G] -> [n, n_q, H].
// mul_mat broadcasts the G key heads over the H query heads as GQA groups.
ggml_tensor * scores(ggml_context * ctx, ggml_tensor * keys, ggml_tensor * q, float scale) {
    return ggml_scale(ctx, ggml_mul_mat(ctx, keys, q), scale);
}

// Concatenates tensors along dim 0 as a balanced tree, so the copying grows
// with log(count) rather than count.
ggml_tensor * concat_rows(ggml_context * ctx, std::vector<ggml_tensor *> parts) {
    while (parts.size() > 1) {
        std::vector<ggml_tensor *> next;
        for (size_t i = 0; i + 1 < parts.size(); i += 2) next.push_back(ggml_concat(ctx, parts[i], parts[i + 1], 0));
        if (parts.size() % 2) next.push_back(parts.back());
        parts.swap(next);
    }
    return parts[0];
}

}  // namespace

ggml_tensor * hts_attn_lse(ggml_context * ctx, ggml_tensor * q, ggml_tensor * k, ggml_tensor * mask, float scale,
                           int64_t chunk) {
    GGML_ASSERT(q->ne[0] == k->ne[0] && q->ne[2] % k->ne[2] == 0 && chunk > 0);
    const int64_t n_kv = k->ne[1], n_q = q->ne[1], n_head = q->ne[2];
    const int64_t n_masked = mask ? mask->ne[0] : 0, m0 = n_kv - n_masked;  // keys [m0, n_kv) take the mask
    GGML_ASSERT(!mask || (n_masked <= n_kv && mask->ne[1] == n_q));
    std::vector<ggml_tensor *> chunk_lse;
    // Chunks of the keys every query sees, then chunks of the masked tail.
    for (const auto & [from, to] : {std::make_pair(int64_t(0), m0), std::make_pair(m0, n_kv)}) {
        for (int64_t k0 = from; k0 < to; k0 += chunk) {
            const int64_t n = std::min(chunk, to - k0);
            ggml_tensor * s = scores(ctx, key_chunk(ctx, k, k0, n), q, scale);  // [n, n_q, H]
            if (from == m0 && mask) {
                s = ggml_add(ctx, s, ggml_view_2d(ctx, mask, n, n_q, mask->nb[1], size_t(k0 - m0) * mask->nb[0]));
            }
            chunk_lse.push_back(row_lse(ctx, ggml_reshape_2d(ctx, s, n, n_q * n_head)));  // [1, n_q * H]
        }
    }
    // Combine the chunks: lse over chunks of their lse.
    ggml_tensor * all = concat_rows(ctx, chunk_lse);  // [n_chunks, n_q * H]
    ggml_tensor * lse = chunk_lse.size() == 1 ? all : row_lse(ctx, all);
    ggml_set_name(lse, "hts_attn_lse");
    return ggml_reshape_2d(ctx, lse, n_q, n_head);
}

hts_saliency hts_head_saliency(ggml_context * ctx, ggml_tensor * q, ggml_tensor * k, ggml_tensor * lse, int64_t v_begin,
                               int64_t v_end, float scale, int64_t chunk) {
    GGML_ASSERT(0 <= v_begin && v_begin < v_end && v_end <= k->ne[1] && chunk > 0);
    const int64_t n_q = q->ne[1], n_head = q->ne[2], n_v = v_end - v_begin;
    ggml_tensor * lse_b = ggml_reshape_3d(ctx, lse, 1, n_q, n_head);  // broadcast over keys
    std::vector<ggml_tensor *> parts;
    for (int64_t k0 = v_begin; k0 < v_end; k0 += chunk) {
        const int64_t n = std::min(chunk, v_end - k0);
        ggml_tensor * s = scores(ctx, key_chunk(ctx, k, k0, n), q, scale);        // [n, n_q, H]
        ggml_tensor * a = ggml_exp(ctx, ggml_sub(ctx, s, lse_b));                 // a_h(q, v)
        a = ggml_cont(ctx, ggml_permute(ctx, a, 1, 0, 2, 3));                     // [n_q, n, H]
        parts.push_back(ggml_reshape_2d(ctx, ggml_sum_rows(ctx, a), n, n_head));  // [n, H]
    }
    hts_saliency out;
    out.token_attn = ggml_scale(ctx, concat_rows(ctx, parts), 1.0f / float(n_q));  // [n_v, H]
    ggml_set_name(out.token_attn, "hts_token_attn");

    // Per head: mass, and concentration from the entropy of the normalised
    // distribution p = token_attn / mass (clamped so log(0) never appears).
    out.head_mass = ggml_sum_rows(ctx, out.token_attn);                          // [1, H]
    ggml_tensor * mass_safe = ggml_clamp(ctx, out.head_mass, FLT_MIN, FLT_MAX);  // a head that saw nothing
    ggml_tensor * p = ggml_div(ctx, out.token_attn, mass_safe);                  // [n_v, H]
    ggml_tensor * plogp = ggml_mul(ctx, p, ggml_log(ctx, ggml_clamp(ctx, p, 1e-30f, FLT_MAX)));
    ggml_tensor * neg_entropy = ggml_sum_rows(ctx, plogp);                 // [1, H]
    const float inv_log_n = n_v > 1 ? 1.0f / std::log(float(n_v)) : 0.0f;  // one key: fully concentrated
    out.head_conc = ggml_scale_bias(ctx, neg_entropy, inv_log_n, 1.0f);
    out.head_score = ggml_mul(ctx, out.head_mass, out.head_conc);
    ggml_set_name(out.head_mass, "hts_head_mass");
    ggml_set_name(out.head_conc, "hts_head_conc");
    ggml_set_name(out.head_score, "hts_head_score");
    return out;
}
