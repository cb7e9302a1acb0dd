#include "sparse_state.h"

#include "errors.h"
#include "model.h"

#include <algorithm>
#include <chrono>

namespace hts {

namespace {
double ms_since(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}
}  // namespace

std::vector<int32_t> line_segments(const Model & model, const std::vector<int32_t> & span, int max_tokens) {
    std::vector<int32_t> starts{0};
    int run = 0;
    for (size_t i = 0; i + 1 < span.size(); ++i) {
        ++run;
        if (model.vocab().token_to_piece(span[i], false).find('\n') != std::string::npos || run >= max_tokens) {
            starts.push_back(static_cast<int32_t>(i + 1));
            run = 0;
        }
    }
    return starts;
}

SparseState::SparseState(Context & context, const SparseConfig & config)
    : context_(context), config_(resolve_sparse_config(config, context.model().file(), context.model().hparams())) {
    // The whole conversation's residual stream at S, for re-running layers
    // [S, L) with each new question's selection.
    if (config_.reroute) context_.log_residual_at(config_.select_layer);
}

void SparseState::queue(const std::vector<int32_t> & tokens) {
    pending_.insert(pending_.end(), tokens.begin(), tokens.end());
}

void SparseState::begin_span() {
    if (n_selections_ > 0) {
        fail(ErrorKind::InvalidArgument,
             "sparse spans go before the first question; call reset() to start over with new ones");
    }
    if (spans_.empty()) {
        if (config_.prune_layer < context_.model().hparams().n_layer) {
            // Stage 1 now, the pruned zone after selection; at S = P the held
            // tokens write layer P's keys for selection as they pass.
            context_.hold_from_layer(config_.prune_layer, config_.select_layer >= config_.prune_layer);
        }
    } else if (!pending_.empty()) {
        // Text between two spans is no query window: it runs now, with the spans.
        context_.eval(pending_, false);
        pending_.clear();
    }
}

void SparseState::add_span(const std::vector<int32_t> & tokens) {
    const std::vector<int32_t> segments = line_segments(context_.model(), tokens, config_.segment_tokens);
    begin_span();
    const int begin = context_.n_past();
    context_.eval(tokens, false);
    spans_.push_back({begin, begin + static_cast<int>(tokens.size()), segments});
}

void SparseState::add_embedding_span(const std::vector<float> & rows, int32_t placeholder,
                                     const TokenPositions * positions, const std::vector<int32_t> * segments,
                                     const std::vector<int32_t> * blocks) {
    const int width = context_.model().hparams().n_embd_inp();  // DeepStack rows included
    const int n = static_cast<int>(rows.size() / std::max(1, width));
    std::vector<int32_t> starts;
    if (segments) {
        starts = *segments;
    } else {
        for (int i = 0; i < n; i += config_.segment_tokens) starts.push_back(i);
    }
    bool ascending = !starts.empty() && starts[0] == 0 && starts.back() < n;
    for (size_t i = 1; ascending && i < starts.size(); ++i) ascending = starts[i] > starts[i - 1];
    if (!ascending) {
        fail(ErrorKind::InvalidArgument, format("segments must start at 0, ascend and stay below the %d rows", n));
    }
    begin_span();
    const int begin = context_.n_past();
    context_.eval_embd(rows, placeholder, false, positions, blocks);
    spans_.push_back({begin, begin + n, starts});
}

std::vector<int32_t> SparseState::kept_cells(const std::vector<int32_t> & kept_in_span) const {
    const int n_past = context_.n_past();
    std::vector<bool> in_span(n_past, false);
    for (const SparseSpan & s : spans_) std::fill(in_span.begin() + s.begin, in_span.begin() + s.end, true);
    std::vector<int32_t> cells;
    for (int c = 0; c < n_past; ++c) {
        if (!in_span[c]) cells.push_back(c);
    }
    for (int32_t v : kept_in_span) cells.push_back(spans_.front().begin + v);
    std::sort(cells.begin(), cells.end());
    return cells;
}

std::optional<SelectTimings> SparseState::select(const KeptReplacer * replace_kept) {
    if (pending_.empty()) {
        if (n_selections_ == 0) fail(ErrorKind::InvalidArgument, "a sparse span needs a question after it");
        selected_ = true;  // a continuation, no new question: the routing stands
        return std::nullopt;
    }
    const std::vector<int32_t> window = std::move(pending_);
    pending_.clear();
    SelectTimings t;
    auto t0 = std::chrono::steady_clock::now();
    if (n_selections_ > 0) {
        context_.rewind_to_logged_layer(config_.prune_layer);  // re-route: [S, L) start over, the span waits at P again
    }
    context_.set_query_capture(std::min(static_cast<int>(window.size()), config_.q_window));
    try {
        context_.eval(window, false);
        t.held = context_.n_held() > 0;
        if (t.held && config_.select_layer >= config_.prune_layer)
            context_.probe_held_layer();  // S = P: keys for selection (of tokens not probed as they passed)
    } catch (...) {
        context_.set_query_capture(0);
        throw;
    }
    context_.set_query_capture(0);
    t.question = ms_since(t0);

    t0 = std::chrono::steady_clock::now();
    SparseSelection sel = select_sparse(context_.model(), context_, spans_, config_);
    context_.note_graph_bytes(sel.graph_bytes);
    if (replace_kept) {
        std::vector<int32_t> kept = (*replace_kept)(sel.kept_in_span);
        std::sort(kept.begin(), kept.end());
        sel.kept_in_span = std::move(kept);
        sel.kept_cells = kept_cells(sel.kept_in_span);
    }
    t.select = ms_since(t0);
    // The kept held tokens' rows at P, recomputed while layers [0, P) still hold every cell.
    t0 = std::chrono::steady_clock::now();
    if (t.held) context_.replay_held(&sel.kept_cells);
    t.pruned_zone = ms_since(t0);
    t0 = std::chrono::steady_clock::now();
    context_.compact_kv(sel.full_kv, sel.kept_cells, t.held ? config_.prune_layer : context_.model().hparams().n_layer);
    selection_ = std::move(sel);
    t.select += ms_since(t0);

    t0 = std::chrono::steady_clock::now();
    if (t.held) context_.finish_held();
    t.pruned_zone = t.held ? t.pruned_zone + ms_since(t0) : 0.0;
    selected_ = true;
    ++n_selections_;
    return t;
}

std::vector<SparseSelection> SparseState::trial_selections(const std::vector<std::pair<int, int>> & zones) {
    const Model & model = context_.model();
    const int n_layer = model.hparams().n_layer;
    if (config_.prune_layer != n_layer) {
        fail(ErrorKind::InvalidArgument,
             format("trial selections need the spans in every layer: prune_layer %d, got %d", n_layer,
                    config_.prune_layer));
    }
    if (n_selections_ > 0 || pending_.empty()) {
        fail(ErrorKind::InvalidArgument, "trial selections need a first question waiting after the span(s)");
    }
    const std::vector<int32_t> window = std::move(pending_);
    pending_.clear();
    context_.set_query_capture(std::min(static_cast<int>(window.size()), config_.q_window));
    try {
        context_.eval(window, false);
    } catch (...) {
        context_.set_query_capture(0);
        throw;
    }
    context_.set_query_capture(0);
    selected_ = true;  // the question ran densely: nothing waits any more
    std::vector<SparseSelection> out;
    for (const auto & [select_layer, prune_layer] : zones) {
        SparseConfig zone = config_;
        zone.select_layer = select_layer;
        zone.prune_layer = prune_layer;
        out.push_back(
            select_sparse(model, context_, spans_, resolve_sparse_config(zone, model.file(), model.hparams())));
    }
    return out;
}

void SparseState::answered() {
    if (config_.reroute && selected_) selected_ = false;
}

}  // namespace hts
