// hts_select_tokens (device: scores and ranking) and hts_pick_segments (host:
// the variable-length choice of whole segments under a budget).
#include "hts_ops.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <stdexcept>

hts_segment_order hts_select_tokens(ggml_context * ctx, ggml_tensor * token_attn, ggml_tensor * head_w,
                                    ggml_tensor * seg_index, int64_t max_len) {
    const int64_t n_v = token_attn->ne[0], n_head = token_attn->ne[1];
    GGML_ASSERT(ggml_nelements(head_w) == n_head && max_len > 0 && ggml_nelements(seg_index) % max_len == 0);
    const int64_t n_seg = ggml_nelements(seg_index) / max_len;
    hts_segment_order out;

    // t(v) = sum_h w_h token_attn(v, h): [H, n_v] x [H, 1] -> [n_v, 1]
    ggml_tensor * ta_t = ggml_cont(ctx, ggml_transpose(ctx, token_attn));
    out.token_score = ggml_reshape_1d(ctx, ggml_mul_mat(ctx, ta_t, ggml_reshape_2d(ctx, head_w, n_head, 1)), n_v);
    ggml_set_name(out.token_score, "hts_token_score");

    // Gather each segment's scores into a padded row, then max over the row.
    ggml_tensor * rows =
        ggml_get_rows(ctx, ggml_reshape_2d(ctx, out.token_score, 1, n_v), seg_index);  // [1, max_len * n_seg]
    rows = ggml_reshape_2d(ctx, rows, max_len, n_seg);
    ggml_tensor * seg = ggml_pool_1d(ctx, rows, GGML_OP_POOL_MAX, int(max_len), int(max_len), 0);  // [1, n_seg]
    out.segment_score = ggml_reshape_1d(ctx, seg, n_seg);
    ggml_set_name(out.segment_score, "hts_segment_score");

    out.order = ggml_argsort(ctx, out.segment_score, GGML_SORT_ORDER_DESC);
    ggml_set_name(out.order, "hts_segment_order");
    return out;
}

std::vector<int32_t> hts_segment_index(const std::vector<int32_t> & seg_starts, int32_t n_v, int64_t & max_len) {
    if (seg_starts.empty() || seg_starts[0] != 0) throw std::invalid_argument("segments must start at token 0");
    for (size_t s = 1; s < seg_starts.size(); ++s) {
        if (seg_starts[s] <= seg_starts[s - 1] || seg_starts[s] >= n_v) {
            throw std::invalid_argument("segment starts must increase and lie inside the span");
        }
    }
    const size_t n_seg = seg_starts.size();
    auto seg_end = [&](size_t s) { return s + 1 < n_seg ? seg_starts[s + 1] : n_v; };
    max_len = 0;
    for (size_t s = 0; s < n_seg; ++s) max_len = std::max<int64_t>(max_len, seg_end(s) - seg_starts[s]);
    std::vector<int32_t> index(n_seg * size_t(max_len));
    for (size_t s = 0; s < n_seg; ++s) {
        for (int64_t j = 0; j < max_len; ++j) {
            const int32_t tok = seg_starts[s] + int32_t(j);
            index[s * max_len + j] = tok < seg_end(s) ? tok : seg_starts[s];  // pad with the segment's first token
        }
    }
    return index;
}

namespace {

struct Segments {
    const std::vector<int32_t> & starts;
    int32_t n_v;
    int32_t begin(size_t s) const { return starts[s]; }
    int32_t end(size_t s) const { return s + 1 < starts.size() ? starts[s + 1] : n_v; }
    int32_t size(size_t s) const { return end(s) - begin(s); }
};

// Best-first segments until the token budget (or score mass) is reached.
std::vector<bool> pick_by_budget(const Segments & seg, const std::vector<int32_t> & order,
                                 const std::vector<float> & token_score, const hts_pick_params & p) {
    std::vector<bool> kept(seg.starts.size(), false);
    if (p.keep_mass > 0.0f) {
        std::vector<double> mass(seg.starts.size(), 0.0);
        for (size_t s = 0; s < mass.size(); ++s) {
            for (int32_t v = seg.begin(s); v < seg.end(s); ++v) mass[s] += token_score[v];
        }
        const double total = std::accumulate(mass.begin(), mass.end(), 0.0), goal = p.keep_mass * total;
        double held = 0.0;
        for (int32_t s : order) {
            kept[s] = true;
            held += mass[s];
            if (held >= goal) break;
        }
        return kept;
    }
    const int64_t budget = std::max<int64_t>(1, int64_t(std::ceil(double(p.keep_ratio) * seg.n_v - 1e-9)));
    int64_t n_kept = 0;
    for (int32_t s : order) {
        if (n_kept >= budget) break;
        kept[s] = true;
        n_kept += seg.size(s);
    }
    return kept;
}

// The best segment of every one of `floor` equal stretches of the span that
// has none kept yet, so no stretch of a long video is left blind.
void apply_floor(const Segments & seg, const std::vector<int32_t> & order, int floor, std::vector<bool> & kept) {
    if (floor <= 0) return;
    auto stretch_of = [&](size_t s) { return int64_t(seg.begin(s)) * floor / seg.n_v; };
    std::vector<bool> covered(floor, false);
    for (size_t s = 0; s < kept.size(); ++s) {
        if (kept[s]) covered[stretch_of(s)] = true;
    }
    for (int32_t s : order) {
        if (!covered[stretch_of(s)]) {
            kept[s] = true;
            covered[stretch_of(s)] = true;
        }
    }
}

}  // namespace

std::vector<int32_t> hts_pick_segments(const std::vector<int32_t> & seg_starts, int32_t n_v,
                                       const std::vector<int32_t> & order, const std::vector<float> & segment_score,
                                       const std::vector<float> & token_score, const hts_pick_params & params) {
    if (n_v == 0) return {};
    if (order.size() != seg_starts.size() || segment_score.size() != seg_starts.size() ||
        token_score.size() != size_t(n_v)) {
        throw std::invalid_argument("segment order, scores and token scores do not match the segments");
    }
    const Segments seg{seg_starts, n_v};
    std::vector<bool> kept = pick_by_budget(seg, order, token_score, params);
    apply_floor(seg, order, params.segment_floor, kept);

    std::vector<int32_t> tokens;
    for (size_t s = 0; s < kept.size(); ++s) {
        if (!kept[s]) continue;
        for (int32_t v = seg.begin(s); v < seg.end(s); ++v) tokens.push_back(v);
    }
    if (params.token_keep < 1.0f && tokens.size() > 1) {
        // Token-level cut inside the kept segments: the best-scored share.
        const size_t n = std::max<size_t>(1, size_t(std::ceil(double(params.token_keep) * tokens.size() - 1e-9)));
        std::stable_sort(tokens.begin(), tokens.end(),
                         [&](int32_t a, int32_t b) { return token_score[a] > token_score[b]; });
        tokens.resize(n);
        std::sort(tokens.begin(), tokens.end());
    }
    return tokens;
}
