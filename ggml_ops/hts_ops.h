// HT-Sparse operators, built as ggml subgraphs from stock ops only, so that
// every ggml backend (CPU, CUDA, Metal, Vulkan) runs them with upstream's
// kernels. Each function adds nodes to a graph being built in `ctx` and
// returns the result tensors; nothing is computed until the graph runs.
//
// Shapes are in ggml order (ne0 first). Names used below:
//   d      head size              n_q    query-window tokens
//   H      query heads            G      KV heads (H % G == 0: GQA, a KV
//   n_kv   keys (cache cells)            head serves H/G consecutive q heads)
//   n_v    keys of a sparse span  n_seg  segments of that span
//
// Example, saliency of a span at the select layer:
//
//     ggml_tensor * lse = hts_attn_lse(ctx, q, k, mask, scale, 4096);
//     hts_saliency s = hts_head_saliency(ctx, q, k, lse, v0, v1, scale, 4096);
//     hts_segment_order o = hts_select_tokens(ctx, s.token_attn, head_w, seg_index, seg_len_max);
//     // compute, read o.order back, then hts_pick_segments() on the host.
#pragma once

#include "ggml.h"

#include <cstdint>
#include <vector>

// Log-sum-exp of the scaled attention scores of each query over all the keys
// it may see, computed in chunks of `chunk` keys so that no more than
// [chunk, n_q, H] scores exist at once (bounded memory at 128K keys).
//   q     F32 [d, n_q, H]        roped queries of the query window
//   k     F16/F32 [d, n_kv, G]   roped keys (a strided view of a cache is fine)
//   mask  F32 [n_m, n_q]         the last n_m <= n_kv keys: 0 where visible, -INF
//                                where hidden; every key before them is visible to
//                                every query (the window's own block is enough). May be null
// returns F32 [n_q, H]: lse(q, h) = log sum_k exp(scale * q.k + mask)
ggml_tensor * hts_attn_lse(ggml_context * ctx, ggml_tensor * q, ggml_tensor * k, ggml_tensor * mask, float scale,
                           int64_t chunk);

struct hts_saliency {
    ggml_tensor * token_attn;  // F32 [n_v, H]: mean over queries of a_h(q, v)
    ggml_tensor * head_mass;   // F32 [1, H]:   m_h = sum_v token_attn(v, h)
    ggml_tensor * head_conc;   // F32 [1, H]:   c_h = 1 - entropy(p_h) / log(n_v)
    ggml_tensor * head_score;  // F32 [1, H]:   s_h = m_h * c_h
};

// Attention that the query window pays to the keys [v_begin, v_end) of one
// sparse span, a_h(q, v) = exp(scale * q.k_v - lse(q, h)), i.e. the softmax
// over *all* visible keys restricted to the span; and per-head statistics.
// The span must be visible to every query (it lies before the query window).
//   q, k as for hts_attn_lse; lse from hts_attn_lse.   Needs n_v >= 1.
hts_saliency hts_head_saliency(ggml_context * ctx, ggml_tensor * q, ggml_tensor * k, ggml_tensor * lse, int64_t v_begin,
                               int64_t v_end, float scale, int64_t chunk);

struct hts_segment_order {
    ggml_tensor * token_score;    // F32 [n_v]:   t(v) = sum_h w_h token_attn(v, h)
    ggml_tensor * segment_score;  // F32 [n_seg]: max of t over the segment
    ggml_tensor * order;          // I32 [n_seg]: segments by score, best first
};

// Device half of token selection: token scores, segment scores, ranking.
//   token_attn  F32 [n_v, H]  (hts_saliency::token_attn)
//   head_w      F32 [H]       head weights w_h (normalised head scores)
//   seg_index   I32 [max_len * n_seg]: for segment s, the token indices of its
//               tokens in slots [s * max_len, (s + 1) * max_len), padded by
//               repeating one of its own tokens (a repeat cannot change a max)
// The variable-length choice that follows (budget, floor, token cut) has no
// static ggml shape; it is hts_pick_segments(), on n_seg numbers on the host.
hts_segment_order hts_select_tokens(ggml_context * ctx, ggml_tensor * token_attn, ggml_tensor * head_w,
                                    ggml_tensor * seg_index, int64_t max_len);

// seg_index for hts_select_tokens from segment starts (ascending, first 0)
// over n_v tokens; max_len receives the longest segment.
std::vector<int32_t> hts_segment_index(const std::vector<int32_t> & seg_starts, int32_t n_v, int64_t & max_len);

struct hts_pick_params {
    float keep_ratio = 0.2f;  // keep segments until this share of the span's tokens
    float keep_mass = 0.0f;   // > 0: instead, the fewest segments holding this share of the score
    float token_keep = 1.0f;  // < 1: inside kept segments keep this share of tokens, by token score
    int segment_floor = 0;    // at least one segment from each of this many equal stretches
};

// Host half of token selection: from the ranking, the kept token indices of
// the span, ascending. Always keeps at least one token of a non-empty span.
std::vector<int32_t> hts_pick_segments(const std::vector<int32_t> & seg_starts, int32_t n_v,
                                       const std::vector<int32_t> & order, const std::vector<float> & segment_score,
                                       const std::vector<float> & token_score, const hts_pick_params & params);

// Attention with KV heads routed to two caches: "full" KV heads attend over a
// full-length cache, "sparse" KV heads over a compacted one. Query heads are
// gathered to follow their KV head, each group runs ggml_flash_attn_ext, and
// the outputs are put back in head order.
//   q          F32 [d, H, n_tokens]         roped queries, heads in model order
//   head_perm  I32 [H, n_tokens]            q heads of the full group first (in
//              KV-head order), then the sparse group; the same row per token
//   head_unperm I32 [H, n_tokens]           inverse of head_perm
//   k_full, v_full     F16 [d, n_kv_full, G_full]   null when G_full == 0
//   k_sparse, v_sparse F16 [d, n_kv_sparse, G_sparse] null when G_sparse == 0
//   mask_full, mask_sparse F16 [n_kv_*, n_tokens]  0 visible, -INF hidden
// returns F32 [d, H, n_tokens], heads in model order
ggml_tensor * hts_routed_attention(ggml_context * ctx, ggml_tensor * q, ggml_tensor * head_perm,
                                   ggml_tensor * head_unperm, ggml_tensor * k_full, ggml_tensor * v_full,
                                   ggml_tensor * mask_full, ggml_tensor * k_sparse, ggml_tensor * v_sparse,
                                   ggml_tensor * mask_sparse, float scale);

// head_perm / head_unperm rows for hts_routed_attention: q heads of the KV
// heads flagged in is_full_kv (size G) first, in order, then the others.
void hts_head_permutation(const std::vector<bool> & is_full_kv, int n_head, std::vector<int32_t> & perm,
                          std::vector<int32_t> & unperm);
