#include "sparse_select.h"

#include "errors.h"
#include "graph_runner.h"
#include "hts_ops.h"
#include "kv_cache.h"
#include "model.h"
#include "session.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <stdexcept>

namespace hts {

namespace {

constexpr int64_t kKeyChunk = 4096;  // keys per saliency block: bounded memory at long contexts

struct LayerSaliency {
    std::vector<std::vector<float>> head_score;  // [layer][q head]
    std::vector<float> token_attn;               // select layer: [n_head][n_v]
};

// Causal mask of the query window (the last n_q of n_used cells): F32 [n_used, n_q].
std::vector<float> window_mask(int n_used, int n_q) {
    std::vector<float> mask(size_t(n_used) * n_q, 0.0f);
    for (int j = 0; j < n_q; ++j) {
        for (int c = n_used - n_q + j + 1; c < n_used; ++c) mask[size_t(j) * n_used + c] = -INFINITY;
    }
    return mask;
}

// Saliency at layers [0, n_measured): those whose queries the window captured.
LayerSaliency measure(const Model & model, const Session & session, const SparseSpan & span, int select_layer,
                      int n_measured) {
    const HParams & hp = model.hparams();
    const int n_used = session.n_past(), n_q = session.n_captured_q();
    const int64_t n_chunks = (n_used + kKeyChunk - 1) / kKeyChunk;
    GraphRunner runner(model.backends().main(), size_t(64 * (n_chunks + 2) * hp.n_layer + 1024));
    ggml_context * ctx = runner.ctx();
    ggml_tensor * mask = runner.input_f32(window_mask(n_used, n_q), {n_used, n_q});
    const float scale = 1.0f / std::sqrt(float(hp.n_embd_head));
    std::vector<ggml_tensor *> outputs;
    ggml_tensor * token_attn = nullptr;
    for (int il = 0; il < n_measured; ++il) {
        const std::vector<float> & captured = session.captured_queries()[il];
        if (captured.size() != size_t(hp.n_embd_head) * hp.n_head * n_q) {
            fail(ErrorKind::InvalidArgument, format("no captured queries at layer %d", il));
        }
        ggml_tensor * q = runner.input_f32(captured, {hp.n_embd_head, hp.n_head, n_q});
        q = ggml_cont(ctx, ggml_permute(ctx, q, 0, 2, 1, 3));                                        // [d, n_q, H]
        ggml_tensor * k = ggml_permute(ctx, session.kv_cache().keys(ctx, il, n_used), 0, 2, 1, 3);  // [d, n_used, G]
        ggml_tensor * lse = hts_attn_lse(ctx, q, k, mask, scale, kKeyChunk);
        hts_saliency s = hts_head_saliency(ctx, q, k, lse, span.begin, span.end, scale, kKeyChunk);
        outputs.push_back(s.head_score);
        if (il == select_layer) token_attn = s.token_attn;
    }
    outputs.push_back(token_attn);
    runner.compute(outputs);
    LayerSaliency out;
    for (int il = 0; il < hp.n_layer; ++il) {
        out.head_score.push_back(il < n_measured ? GraphRunner::read_f32(outputs[il]) : std::vector<float>(hp.n_head, 0.0f));
    }
    out.token_attn = GraphRunner::read_f32(token_attn);
    return out;
}

// Ranks segments on the device (hts_select_tokens), picks on the host.
std::vector<int32_t> pick_tokens(const Model & model, const SparseSpan & span, const std::vector<float> & token_attn,
                                 std::vector<float> head_w, const SparseConfig & config) {
    const int n_v = span.end - span.begin, n_head = int(head_w.size());
    int64_t max_len = 0;
    std::vector<int32_t> index;
    try {
        index = hts_segment_index(span.seg_starts, n_v, max_len);
    } catch (const std::invalid_argument & e) {
        fail(ErrorKind::InvalidArgument, e.what());
    }
    GraphRunner runner(model.backends().main());
    ggml_tensor * ta = runner.input_f32(token_attn, {n_v, n_head});
    ggml_tensor * w = runner.input_f32(head_w, {n_head});
    ggml_tensor * idx = runner.input_i32(index, {int64_t(index.size())});
    hts_segment_order o = hts_select_tokens(runner.ctx(), ta, w, idx, max_len);
    runner.compute({o.token_score, o.segment_score, o.order});
    hts_pick_params p;
    p.keep_ratio = config.keep_ratio;
    p.keep_mass = config.keep_mass;
    p.token_keep = config.token_keep;
    p.segment_floor = config.segment_floor;
    return hts_pick_segments(span.seg_starts, n_v, GraphRunner::read_i32(o.order), GraphRunner::read_f32(o.segment_score),
                             GraphRunner::read_f32(o.token_score), p);
}

// Every KV head of layers [0, first_routed) is full; of the (layer, KV head)
// pairs of layers [first_routed, n_routed) the top full_head_ratio by score
// are; the heads of later layers (pruned zone) are sparse.
std::vector<std::vector<bool>> route_heads(const std::vector<std::vector<float>> & kv_score, float full_head_ratio,
                                           int first_routed, int n_routed) {
    std::vector<std::pair<float, std::pair<int, int>>> ranked;
    for (size_t il = size_t(first_routed); il < size_t(n_routed); ++il) {
        for (size_t g = 0; g < kv_score[il].size(); ++g) ranked.push_back({kv_score[il][g], {int(il), int(g)}});
    }
    std::stable_sort(ranked.begin(), ranked.end(), [](const auto & a, const auto & b) { return a.first > b.first; });
    const size_t n_full = size_t(std::lround(double(full_head_ratio) * ranked.size()));
    std::vector<std::vector<bool>> full(kv_score.size(), std::vector<bool>(kv_score.empty() ? 0 : kv_score[0].size(), false));
    for (size_t i = 0; i < n_full; ++i) full[ranked[i].second.first][ranked[i].second.second] = true;
    for (int il = 0; il < first_routed; ++il) full[il].assign(full[il].size(), true);
    return full;
}

}  // namespace

SparseSelection select_sparse(const Model & model, const Session & session, const SparseSpan & span,
                              const SparseConfig & config) {
    const HParams & hp = model.hparams();
    const int n_used = session.n_past(), n_q = session.n_captured_q();
    if (session.kv_cache().is_split()) fail(ErrorKind::InvalidArgument, "this session's cache is already compacted");
    if (n_q <= 0 || int(session.captured_queries().size()) != hp.n_layer) {
        fail(ErrorKind::InvalidArgument, "no query window: evaluate the question with query capture on");
    }
    if (span.begin < 0 || span.begin >= span.end || span.end > n_used - n_q) {
        fail(ErrorKind::InvalidArgument, format("the sparse span [%d, %d) must lie before the %d-token query window of %d cells",
                                                span.begin, span.end, n_q, n_used));
    }
    const int select_layer = std::min(config.select_layer, hp.n_layer - 1);
    // Staged prefill holds tokens at P: queries exist for layers [0, P), and
    // for layer P too when S = P (the probe). Routing covers layers [0, P).
    const int n_routed = config.prune_layer;
    const int n_measured = std::min(hp.n_layer, std::max(n_routed, select_layer + 1));
    LayerSaliency sal = measure(model, session, span, select_layer, n_measured);

    SparseSelection sel;
    const int group = hp.n_gqa();
    for (int il = 0; il < hp.n_layer; ++il) {
        std::vector<float> kv(hp.n_head_kv, 0.0f);
        for (int h = 0; h < hp.n_head; ++h) kv[h / group] += sal.head_score[il][h] / group;
        sel.kv_head_score.push_back(kv);
    }
    std::vector<std::vector<float>> ranking = sel.kv_head_score;
    if (!config.head_prior.empty()) {
        // Blend with the calibrated prior: each on its own scale, equal weight.
        const float prior_max = std::max(1e-30f, *std::max_element(config.head_prior.begin(), config.head_prior.end()));
        float score_max = 1e-30f;
        for (const auto & l : ranking) score_max = std::max(score_max, *std::max_element(l.begin(), l.end()));
        for (int il = 0; il < hp.n_layer; ++il) {
            for (int g = 0; g < hp.n_head_kv; ++g) {
                ranking[il][g] = 0.5f * ranking[il][g] / score_max + 0.5f * config.head_prior[size_t(il) * hp.n_head_kv + g] / prior_max;
            }
        }
    }
    // Re-routing rebuilds layers [S, L) for each question, so the dense zone
    // keeps every token (no retroactive compaction there).
    const int first_routed = config.reroute ? std::min(select_layer, n_routed) : 0;
    sel.full_kv = route_heads(ranking, config.full_head_ratio, first_routed, n_routed);

    // Head weights at the select layer: normalised scores (uniform if all vanish).
    std::vector<float> head_w = sal.head_score[select_layer];
    const float total = std::accumulate(head_w.begin(), head_w.end(), 0.0f);
    for (float & w : head_w) w = total > 0.0f ? w / total : 1.0f / float(head_w.size());
    sel.kept_in_span = pick_tokens(model, span, sal.token_attn, head_w, config);

    for (int c = 0; c < span.begin; ++c) sel.kept_cells.push_back(c);
    for (int32_t v : sel.kept_in_span) sel.kept_cells.push_back(span.begin + v);
    for (int c = span.end; c < n_used; ++c) sel.kept_cells.push_back(c);
    return sel;
}

}  // namespace hts
