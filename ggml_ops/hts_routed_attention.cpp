// hts_routed_attention: per-head routing of attention between a full-length
// and a compacted KV cache, as two flash-attention calls.
#include "hts_ops.h"

namespace {

// Flash attention of q [d, n_head, n_tokens] (a view) over k, v [d, n_kv, G].
ggml_tensor * attend(ggml_context * ctx, ggml_tensor * q, ggml_tensor * k, ggml_tensor * v, ggml_tensor * mask,
                     float scale) {
    ggml_tensor * out = ggml_flash_attn_ext(ctx, ggml_permute(ctx, q, 0, 2, 1, 3), k, v, mask, scale, 0.0f, 0.0f);
    ggml_prec_set_acc(out, GGML_PREC_F32);  // as the dense path, so all-full equals dense
    return out;                             // [d, n_head, n_tokens]
}

}  // namespace

ggml_tensor * hts_routed_attention(ggml_context * ctx, ggml_tensor * q, ggml_tensor * head_perm,
                                   ggml_tensor * head_unperm, ggml_tensor * k_full, ggml_tensor * v_full,
                                   ggml_tensor * mask_full, ggml_tensor * k_sparse, ggml_tensor * v_sparse,
                                   ggml_tensor * mask_sparse, float scale) {
    const int64_t d = q->ne[0], n_head = q->ne[1], n_tokens = q->ne[2];
    const int64_t g_full = k_full ? k_full->ne[2] : 0, g_sparse = k_sparse ? k_sparse->ne[2] : 0;
    GGML_ASSERT(g_full + g_sparse > 0 && n_head % (g_full + g_sparse) == 0);
    const int64_t q_per_kv = n_head / (g_full + g_sparse);
    const int64_t h_full = g_full * q_per_kv, h_sparse = g_sparse * q_per_kv;

    // Query heads regrouped: the full group's heads first, then the sparse group's.
    ggml_tensor * qp = ggml_get_rows(ctx, q, head_perm);  // [d, H, n_tokens]
    ggml_tensor *out_full = nullptr, *out_sparse = nullptr;
    if (h_full > 0) {
        ggml_tensor * qf = ggml_view_3d(ctx, qp, d, h_full, n_tokens, qp->nb[1], qp->nb[2], 0);
        out_full = attend(ctx, qf, k_full, v_full, mask_full, scale);
        ggml_set_name(out_full, "hts_attn_full");
    }
    if (h_sparse > 0) {
        ggml_tensor * qs =
            ggml_view_3d(ctx, qp, d, h_sparse, n_tokens, qp->nb[1], qp->nb[2], size_t(h_full) * qp->nb[1]);
        out_sparse = attend(ctx, qs, k_sparse, v_sparse, mask_sparse, scale);
        ggml_set_name(out_sparse, "hts_attn_sparse");
    }
    ggml_tensor * joined = !out_sparse ? out_full : !out_full ? out_sparse : ggml_concat(ctx, out_full, out_sparse, 1);
    ggml_tensor * out = ggml_get_rows(ctx, joined, head_unperm);  // back to model head order
    ggml_set_name(out, "hts_routed_attn");
    return out;
}

void hts_head_permutation(const std::vector<bool> & is_full_kv, int n_head, std::vector<int32_t> & perm,
                          std::vector<int32_t> & unperm) {
    const int n_kv = int(is_full_kv.size());
    GGML_ASSERT(n_kv > 0 && n_head % n_kv == 0);
    const int group = n_head / n_kv;
    perm.clear();
    for (int pass = 0; pass < 2; ++pass) {
        const bool want_full = pass == 0;
        for (int g = 0; g < n_kv; ++g) {
            if (is_full_kv[g] != want_full) continue;
            for (int j = 0; j < group; ++j) perm.push_back(g * group + j);
        }
    }
    unperm.assign(n_head, 0);
    for (int i = 0; i < n_head; ++i) unperm[perm[i]] = i;
}
