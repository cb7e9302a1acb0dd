#include "sparse_select.h"

#include "errors.h"
#include "graph_runner.h"
#include "hts_ops.h"
#include "kv_cache.h"
#include "model.h"
#include "context.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <stdexcept>

namespace hts {

namespace {

// Keys per saliency block: [chunk, n_q, H] F32 scores exist a few at a time
// (at 64 queries and 14 heads, 3.7 MB each), however long the context.
constexpr int64_t kKeyChunk = 1024;

struct LayerSaliency {
    std::vector<std::vector<float>> head_score;  // [layer][q head], weighted over the spans
    std::vector<std::vector<float>> token_attn;  // select layer, per span: [n_head][n_v]
    size_t graph_bytes = 0;                      // the saliency graph's device memory
};

// Causal mask of the query window within its own cells (the last n_q of the
// context; every cell before them is visible to it): F32 [n_q, n_q].
std::vector<float> window_mask(int n_q) {
    std::vector<float> mask(size_t(n_q) * n_q, 0.0f);
    for (int j = 0; j < n_q; ++j) {
        for (int c = j + 1; c < n_q; ++c) mask[size_t(j) * n_q + c] = -INFINITY;
    }
    return mask;
}

// Saliency at layers [0, n_measured): those whose queries the window captured.
LayerSaliency measure(const Model & model, const Context & context, const std::vector<SparseSpan> & spans,
                      int select_layer, int n_measured) {
    const HParams & hp = model.hparams();
    const int n_used = context.n_past(), n_q = context.n_captured_q();
    const int64_t n_chunks = (n_used + kKeyChunk - 1) / kKeyChunk;
    const size_t n_spans = spans.size();
    GraphRunner runner(model.backends().main(),
                       size_t(32 * (n_chunks + 2) * std::max(n_measured, 1) * (n_spans + 1) + 1024));
    ggml_context * ctx = runner.ctx();
    ggml_tensor * mask = runner.input_f32(window_mask(n_q), {n_q, n_q});
    const float scale = 1.0f / std::sqrt(float(hp.n_embd_head));
    std::vector<ggml_tensor *> outputs;  // head scores: layer-major, then span; none for window layers
    std::vector<int> first_output(n_measured, -1);
    std::vector<ggml_tensor *> token_attn;
    for (int il = 0; il < n_measured; ++il) {
        // A window layer sees no span behind the window: it neither scores nor keeps.
        if (hp.is_swa(il)) continue;
        first_output[il] = int(outputs.size());
        const std::vector<float> & captured = context.captured_queries()[il];
        if (captured.size() != size_t(hp.n_embd_head) * hp.n_head * n_q) {
            fail(ErrorKind::InvalidArgument, format("no captured queries at layer %d", il));
        }
        ggml_tensor * q = runner.input_f32(captured, {hp.n_embd_head, hp.n_head, n_q});
        q = ggml_cont(ctx, ggml_permute(ctx, q, 0, 2, 1, 3));                                       // [d, n_q, H]
        ggml_tensor * k = ggml_permute(ctx, context.kv_cache().keys(ctx, il, n_used), 0, 2, 1, 3);  // [d, n_used, G]
        ggml_tensor * lse = hts_attn_lse(ctx, q, k, mask, scale, kKeyChunk);  // once for every span
        for (const SparseSpan & span : spans) {
            hts_saliency s = hts_head_saliency(ctx, q, k, lse, span.begin, span.end, scale, kKeyChunk);
            outputs.push_back(s.head_score);
            if (il == select_layer) token_attn.push_back(s.token_attn);
        }
    }
    std::vector<ggml_tensor *> all = outputs;
    all.insert(all.end(), token_attn.begin(), token_attn.end());
    runner.compute(all);

    int n_sparse = 0;
    for (const SparseSpan & span : spans) n_sparse += span.end - span.begin;
    LayerSaliency out;
    for (int il = 0; il < hp.n_layer; ++il) {
        std::vector<float> score(hp.n_head, 0.0f);
        for (size_t i = 0; il < n_measured && first_output[il] >= 0 && i < n_spans; ++i) {
            const float w = float(spans[i].end - spans[i].begin) / float(n_sparse);
            const std::vector<float> s = GraphRunner::read_f32(outputs[size_t(first_output[il]) + i]);
            for (int h = 0; h < hp.n_head; ++h) score[h] += w * s[h];
        }
        out.head_score.push_back(score);
    }
    for (ggml_tensor * t : token_attn) out.token_attn.push_back(GraphRunner::read_f32(t));
    out.graph_bytes = runner.bytes();
    return out;
}

// Ranks segments on the device (hts_select_tokens), picks on the host.
std::vector<int32_t> pick_tokens(const Model & model, const SparseSpan & span, const std::vector<float> & token_attn,
                                 std::vector<float> head_w, const SparseConfig & config, size_t & graph_bytes) {
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
    graph_bytes = std::max(graph_bytes, runner.bytes());
    hts_pick_params p;
    p.keep_ratio = config.keep_ratio;
    p.keep_mass = config.keep_mass;
    p.token_keep = config.token_keep;
    p.segment_floor = config.segment_floor;
    return hts_pick_segments(span.seg_starts, n_v, GraphRunner::read_i32(o.order),
                             GraphRunner::read_f32(o.segment_score), GraphRunner::read_f32(o.token_score), p);
}

// Every KV head of layers [0, first_routed) is full; of the (layer, KV head)
// pairs of layers [first_routed, n_routed) the top full_head_ratio by score
// are; the heads of later layers (pruned zone) are sparse.
std::vector<std::vector<bool>> route_heads(const HParams & hp, const std::vector<std::vector<float>> & kv_score,
                                           float full_head_ratio, int first_routed, int n_routed) {
    std::vector<std::pair<float, std::pair<int, int>>> ranked;
    for (size_t il = size_t(first_routed); il < size_t(n_routed); ++il) {
        if (hp.is_swa(int(il))) continue;  // window layers keep their window, every head: not routed
        for (size_t g = 0; g < kv_score[il].size(); ++g) ranked.push_back({kv_score[il][g], {int(il), int(g)}});
    }
    std::stable_sort(ranked.begin(), ranked.end(), [](const auto & a, const auto & b) { return a.first > b.first; });
    const size_t n_full = size_t(std::lround(double(full_head_ratio) * ranked.size()));
    std::vector<std::vector<bool>> full(kv_score.size(),
                                        std::vector<bool>(kv_score.empty() ? 0 : kv_score[0].size(), false));
    for (size_t i = 0; i < n_full; ++i) full[ranked[i].second.first][ranked[i].second.second] = true;
    for (int il = 0; il < first_routed; ++il) full[il].assign(full[il].size(), !hp.is_swa(il));
    return full;
}

}  // namespace

namespace {

void check_spans(const std::vector<SparseSpan> & spans, int n_used, int n_q) {
    if (spans.empty()) fail(ErrorKind::InvalidArgument, "no sparse span to select from");
    for (size_t i = 0; i < spans.size(); ++i) {
        const SparseSpan & s = spans[i];
        const int floor = i > 0 ? spans[i - 1].end : 0;
        if (s.begin < floor || s.begin >= s.end || s.end > n_used - n_q) {
            fail(ErrorKind::InvalidArgument,
                 format("sparse span [%d, %d) must be non-empty, after the previous one and before the %d-token "
                        "query window of %d cells",
                        s.begin, s.end, n_q, n_used));
        }
    }
}

}  // namespace

SparseSelection select_sparse(const Model & model, const Context & context, const std::vector<SparseSpan> & spans,
                              const SparseConfig & config) {
    const HParams & hp = model.hparams();
    const int n_used = context.n_past(), n_q = context.n_captured_q();
    if (context.kv_cache().is_split()) fail(ErrorKind::InvalidArgument, "this context's cache is already compacted");
    if (n_q <= 0 || int(context.captured_queries().size()) != hp.n_layer) {
        fail(ErrorKind::InvalidArgument, "no query window: evaluate the question with query capture on");
    }
    check_spans(spans, n_used, n_q);
    const int select_layer = std::min(config.select_layer, hp.n_layer - 1);  // a global layer (sparse_config.cpp)
    // Staged prefill holds tokens at P: queries exist for layers [0, P), and
    // for layer P too when S = P (the probe). Routing covers layers [0, P).
    const int n_routed = config.prune_layer;
    const int n_measured = std::min(hp.n_layer, std::max(n_routed, select_layer + 1));
    LayerSaliency sal = measure(model, context, spans, select_layer, n_measured);

    SparseSelection sel;
    sel.graph_bytes = sal.graph_bytes;
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
                ranking[il][g] = 0.5f * ranking[il][g] / score_max +
                                 0.5f * config.head_prior[size_t(il) * hp.n_head_kv + g] / prior_max;
            }
        }
    }
    // Re-routing rebuilds layers [S, L) for each question, so the dense zone
    // keeps every token (no retroactive compaction there).
    const int first_routed = config.reroute ? std::min(select_layer, n_routed) : 0;
    sel.full_kv = route_heads(hp, ranking, config.full_head_ratio, first_routed, n_routed);

    // Head weights at the select layer: normalised scores (uniform if all vanish).
    std::vector<float> head_w = sal.head_score[select_layer];
    const float total = std::accumulate(head_w.begin(), head_w.end(), 0.0f);
    for (float & w : head_w) w = total > 0.0f ? w / total : 1.0f / float(head_w.size());
    // Each span keeps its share; cells outside the spans are all kept.
    int cell = 0;
    for (size_t i = 0; i < spans.size(); ++i) {
        for (; cell < spans[i].begin; ++cell) sel.kept_cells.push_back(cell);
        for (int32_t v : pick_tokens(model, spans[i], sal.token_attn[i], head_w, config, sel.graph_bytes)) {
            sel.kept_in_span.push_back(spans[i].begin - spans[0].begin + v);
            sel.kept_cells.push_back(spans[i].begin + v);
        }
        cell = spans[i].end;
    }
    for (; cell < n_used; ++cell) sel.kept_cells.push_back(cell);
    return sel;
}

}  // namespace hts
