#include "context.h"

#include "errors.h"
#include "graph_context.h"
#include "op_recorder.h"
#include "hts_ops.h"
#include "model.h"

#include <algorithm>
#include <climits>
#include <cmath>

namespace hts {

namespace {
// Frees a ggml context on scope exit (the graph of one micro-batch).
struct ContextGuard {
    ggml_context * ctx;
    ~ContextGuard() { ggml_free(ctx); }
};
}  // namespace

Context::Context(const Model & model, const ContextParams & params) : model_(model) {
    if (params.n_ctx < 0) fail(ErrorKind::InvalidArgument, format("n_ctx must be >= 0, got %d", params.n_ctx));
    if (params.n_batch <= 0)
        fail(ErrorKind::InvalidArgument, format("n_batch must be positive, got %d", params.n_batch));
    n_ctx_ = params.n_ctx > 0 ? params.n_ctx : model.hparams().n_ctx_train;
    n_batch_ = std::min(params.n_batch, n_ctx_);
    kv_ = std::make_unique<KvCache>(model, n_ctx_, n_batch_);
    graph_size_ = static_cast<size_t>(64 * model.hparams().n_layer + 512);
    graph_meta_.resize(ggml_tensor_overhead() * graph_size_ + ggml_graph_overhead_custom(graph_size_, false));
    sched_ = model.backends().new_scheduler(graph_size_);
    // Neither the KV cache nor the compute buffers are allocated yet: both grow
    // with the tokens (the scheduler reallocates when a graph needs more).
}

Context::~Context() {
    if (sched_) ggml_backend_sched_free(sched_);
}

size_t Context::compute_bytes() const {
    size_t total = 0;
    for (int i = 0; i < ggml_backend_sched_get_n_backends(sched_); ++i) {
        total += ggml_backend_sched_get_buffer_size(sched_, ggml_backend_sched_get_backend(sched_, i));
    }
    return total;
}

void Context::note_compute_bytes() { compute_peak_ = std::max(compute_peak_, compute_bytes()); }

void Context::note_graph_bytes(size_t bytes) { compute_peak_ = std::max(compute_peak_, compute_bytes() + bytes); }

size_t Context::kv_bytes_peak() const { return std::max(retired_kv_peak_, kv_->peak_bytes()); }

size_t Context::kv_bytes_per_cell() const {
    const HParams & hp = model_.hparams();
    return size_t(2) * hp.n_layer * hp.n_embd_kv() * sizeof(ggml_fp16_t);
}

void Context::replace_cache(std::unique_ptr<KvCache> fresh) {
    retired_kv_peak_ = std::max(retired_kv_peak_, kv_->peak_bytes());
    kv_ = std::move(fresh);
}

int Context::n_logit_rows() const { return static_cast<int>(logits_.size() / model_.hparams().n_vocab); }

const float * Context::last_logits() const {
    if (logits_.empty()) fail(ErrorKind::InvalidArgument, "no logits yet: evaluate some tokens first");
    return logits_.data() + logits_.size() - model_.hparams().n_vocab;
}

void Context::reset() {
    kv_ = std::make_unique<KvCache>(model_, n_ctx_, n_batch_);  // empty again: its memory goes back
    retired_kv_peak_ = 0;
    compute_peak_ = compute_bytes();
    n_sparse_cells_ = 0;
    hidden_cells_.clear();
    kept_cells_.clear();
    window_pruned_from_ = kNoPrunedZone;
    window_hidden_.clear();
    cell_pos_.clear();
    cell_block_.clear();
    sparse_cell_block_.clear();
    n_blocks_ = 0;
    held_ = ResidualRows{};
    logged_ = ResidualRows{};
    n_past_ = 0;
    next_pos_ = 0;
    tokens_.clear();
    logits_.clear();
}

// Rope positions of n new tokens laid out as the graph input wants them:
// n_pos_per_token rows of n values (M-RoPE: t, h, w and a zero fourth row).
std::vector<int32_t> Context::rope_positions(int n, const TokenPositions * positions) const {
    const int n_rows = model_.hparams().n_pos_per_token;
    const int n_rope_streams = std::min(n_rows, 3);
    std::vector<int32_t> pos(size_t(n_rows) * n, 0);
    if (!positions) {
        for (int s = 0; s < n_rope_streams; ++s) {
            for (int i = 0; i < n; ++i) pos[size_t(s) * n + i] = next_pos_ + i;
        }
        return pos;
    }
    const int given = positions->n_streams;
    if ((given != 1 && given != n_rope_streams) || positions->values.size() != size_t(given) * n) {
        fail(ErrorKind::InvalidArgument,
             format("positions must hold 1%s row(s) of %d values, got %zu values in %d row(s)",
                    n_rope_streams == 3 ? " or 3" : "", n, positions->values.size(), given));
    }
    for (int s = 0; s < n_rope_streams; ++s) {
        const int32_t * src = positions->values.data() + size_t(given == 1 ? 0 : s) * n;
        for (int i = 0; i < n; ++i) {
            if (src[i] < 0) fail(ErrorKind::InvalidArgument, format("position %d is negative", src[i]));
            pos[size_t(s) * n + i] = src[i];
        }
    }
    return pos;
}

void Context::compact_kv(const std::vector<std::vector<bool>> & full_kv, const std::vector<int32_t> & kept_cells,
                         int pruned_from) {
    kv_->compact(full_kv, kept_cells, n_past_);
    n_sparse_cells_ = static_cast<int>(kept_cells.size());
    kept_cells_ = kept_cells;
    sparse_cell_block_.clear();
    for (int32_t c : kept_cells) sparse_cell_block_.push_back(block_of(c));
    window_pruned_from_ = pruned_from;
    window_hidden_.assign(n_past_, true);
    for (int32_t c : kept_cells) window_hidden_[c] = false;
}

size_t Context::kv_bytes_dense() const { return kv_bytes_per_cell() * size_t(GGML_PAD(n_ctx_, KvCache::kCellPad)); }

void Context::set_hidden_cells(const std::vector<int32_t> & cells) {
    if (kv_->is_split()) fail(ErrorKind::InvalidArgument, "hidden cells apply to a dense cache");
    hidden_cells_.assign(kv_->capacity(), false);
    for (int32_t c : cells) {
        if (c < 0 || c >= kv_->capacity()) fail(ErrorKind::InvalidArgument, format("cell %d is outside the cache", c));
        hidden_cells_[c] = true;
    }
}

void Context::check_fits(const std::vector<int32_t> & tokens) const {
    const int n = static_cast<int>(tokens.size());
    const int n_vocab = model_.hparams().n_vocab;
    if (n == 0) fail(ErrorKind::InvalidArgument, "no tokens to evaluate");
    for (int32_t t : tokens) {
        if (t < 0 || t >= n_vocab)
            fail(ErrorKind::InvalidArgument, format("token id %d is outside the vocabulary (%d)", t, n_vocab));
    }
    if (n_past_ + n > n_ctx_) {
        fail(ErrorKind::ContextOverflow,
             format("%d tokens do not fit in the context: %d of %d positions are used (raise n_ctx)", n, n_past_,
                    n_ctx_));
    }
}

void Context::eval(const std::vector<int32_t> & tokens, bool all_logits, const TokenPositions * positions) {
    eval_staged(tokens, all_logits, model_.hparams().n_layer, positions);
}

void Context::eval_staged(const std::vector<int32_t> & tokens, bool all_logits, int split,
                          const TokenPositions * positions) {
    eval_input(tokens, nullptr, all_logits, split, positions);
}

void Context::eval_embd(const std::vector<float> & embd, int32_t placeholder, bool all_logits,
                        const TokenPositions * positions, const std::vector<int32_t> * blocks) {
    const HParams & hp = model_.hparams();
    const size_t width = size_t(hp.n_embd_inp());  // n_embd, and a row per DeepStack layer
    if (embd.empty() || embd.size() % width != 0) {
        fail(ErrorKind::InvalidArgument,
             format("embeddings must be rows of %zu floats (n_embd %d x (1 + %d DeepStack layers)), got %zu values",
                    width, hp.n_embd, hp.n_deepstack, embd.size()));
    }
    if (held_.layer == 0 || logged_.layer == 0) {
        fail(ErrorKind::InvalidArgument, "embeddings cannot be held or logged at layer 0 (those keep token ids): "
                                         "use a select/prune layer of at least 1");
    }
    const size_t n = embd.size() / width;
    if (blocks && blocks->size() != n) {
        fail(ErrorKind::InvalidArgument,
             format("blocks must give one label per row: %zu for %zu rows", blocks->size(), n));
    }
    eval_input(std::vector<int32_t>(n, placeholder), embd.data(), all_logits, hp.n_layer, positions, blocks);
}

void Context::add_cell_blocks(int n, const std::vector<int32_t> * blocks) {
    cell_block_.resize(n_past_, -1);  // drops what a failed eval left
    int n_labels = 0;
    for (int i = 0; i < n; ++i) {
        const int32_t label = blocks ? (*blocks)[i] : -1;
        if (label < -1) fail(ErrorKind::InvalidArgument, format("block label %d is below -1", label));
        cell_block_.push_back(label < 0 ? -1 : n_blocks_ + label);
        n_labels = std::max(n_labels, label + 1);
    }
    n_blocks_ += n_labels;
}

int Context::block_end(int cell) const {
    const int b = block_of(cell);
    int end = cell + 1;
    if (b < 0) return end;
    while (size_t(end) < cell_block_.size() && cell_block_[end] == b) ++end;
    return end;
}

void Context::eval_input(const std::vector<int32_t> & tokens, const float * embd, bool all_logits, int split,
                         const TokenPositions * positions, const std::vector<int32_t> * blocks) {
    const int n_layer = model_.hparams().n_layer;
    if (split < 0 || split > n_layer)
        fail(ErrorKind::InvalidArgument, format("split layer %d is outside [0, %d]", split, n_layer));
    if (held_.layer >= 0 && (all_logits || split != n_layer)) {
        fail(ErrorKind::InvalidArgument,
             "tokens held at a layer give no logits and take no split: finish_held() first");
    }
    if (logged_.layer >= 0 && split != n_layer && split != logged_.layer) {
        fail(ErrorKind::InvalidArgument, "a context that logs its residual stream splits at the logged layer only");
    }
    check_fits(tokens);
    const int n = static_cast<int>(tokens.size());
    const std::vector<int32_t> pos = rope_positions(n, positions);
    const int n_embd = model_.hparams().n_embd;
    cell_pos_.resize(n_past_);  // drops what a failed eval left
    cell_pos_.insert(cell_pos_.end(), pos.begin(), pos.begin() + n);
    add_cell_blocks(n, blocks);
    sparse_cell_block_.resize(n_sparse_cells_);
    if (kv_->is_split()) sparse_cell_block_.insert(sparse_cell_block_.end(), cell_block_.end() - n, cell_block_.end());

    // The tokens run [0, stop): every layer, or up to the hold layer P (staged
    // prefill: the rest in finish_held()). On the way the residual stream is
    // kept at `mid`: the logged layer S (into the log, then read back from
    // it), or the requested split.
    const int stop = held_.layer >= 0 ? held_.layer : n_layer;
    const bool logging = logged_.layer >= 0;
    const int mid = logging ? logged_.layer : split;
    const size_t n_logged = logged_.tokens.size(), n_held_before = held_.tokens.size();
    try {
        const RowSpan logged_rows =
            logging ? logged_.extend(n_past_, tokens.data(), n, pos.data(), n_embd, embd == nullptr) : RowSpan{};
        const RowSpan held_rows =
            held_.layer >= 0 ? held_.extend(n_past_, tokens.data(), n, pos.data(), n_embd, embd == nullptr) : RowSpan{};
        std::vector<float> at_mid;  // a split without a log
        LayerRun run;
        run.tokens = tokens.data();
        run.residual_in = embd;  // at layer 0: the embeddings, if any
        const int n_ds = model_.hparams().n_deepstack;
        const size_t width = size_t(model_.hparams().n_embd_inp());
        if (embd) {
            run.residual_in_stride = width;
            if (n_ds > 0) run.deepstack = embd + n_embd, run.deepstack_stride = width;  // layer 0's row first
        }
        run.pos = pos.data();
        run.n = n;
        run.first_cell = n_past_;
        run.first_sparse_cell = n_sparse_cells_;
        if (mid > 0 && mid < stop) {
            run.end = mid;
            if (logging) {
                run.output(logged_rows);
            } else {
                at_mid.resize(size_t(n) * n_embd);
                run.residual_out = at_mid.data();
            }
            run_layers(run);
            run.begin = mid;
            run.input(logging ? logged_rows : RowSpan{at_mid.data(), nullptr});
            run.residual_in_stride = 0;
            run.deepstack = run.deepstack && mid < n_ds ? run.deepstack + size_t(mid) * n_embd : nullptr;
            run.output(RowSpan{});
        }
        if (stop < n_layer) {
            if (stop > 0) {  // at 0 the tokens themselves are the input
                run.end = stop;
                run.output(held_rows);  // none for tokens replayed later (replay_held)
                run.probe_end = held_.probe;
                run_layers(run);
                if (logging && mid == stop) copy_rows(held_rows, logged_rows, size_t(n) * n_embd);
                if (held_.probe) held_.n_probed = held_.tokens.size();
                if (embd && held_.n_ds > 0) {  // the DeepStack rows of layers [P, D) wait with them
                    float * ds = held_.deepstack_rows(n_held_before, n_embd);
                    const size_t per = size_t(held_.n_ds) * n_embd;
                    for (int t = 0; t < n; ++t)
                        std::copy_n(embd + t * width + size_t(1 + stop) * n_embd, per, ds + t * per);
                }
            }
            logits_.clear();
        } else {
            run.end = n_layer;
            run.all_logits = all_logits;
            run_layers(run);
        }
    } catch (...) {
        logged_.truncate(n_logged);
        held_.truncate(n_held_before);
        throw;
    }
    n_past_ += n;
    if (kv_->is_split()) n_sparse_cells_ += n;
    tokens_.insert(tokens_.end(), tokens.begin(), tokens.end());
    next_pos_ = std::max(next_pos_, *std::max_element(pos.begin(), pos.end()) + 1);
}

void Context::run_layers(const LayerRun & run) {
    const int n_vocab = model_.hparams().n_vocab, n_embd = model_.hparams().n_embd, n = run.n;
    // The layers grow once to what the whole run needs, not batch by batch.
    if (!run.kv_only) {
        const int n_kv_sparse = kv_->is_split() ? kv_->n_sparse_kv_for(run.first_sparse_cell + n) : 0;
        const int32_t * at = run.cells ? run.cells : run.window_cells;
        // A replayed token sees its whole block, stored in the first pass.
        const int end_cell = run.cells ? block_end(at[n - 1]) : at ? at[n - 1] + 1 : run.first_cell + n;
        kv_->prepare(run.begin, run.end + (run.probe_end ? 1 : 0), kv_->n_kv_for(end_cell),
                     run.cells ? n_past_ : run.first_cell, n_kv_sparse, run.first_sparse_cell);
    }
    const bool logits = run.end == model_.hparams().n_layer && !run.kv_only;
    if (logits) logits_.assign(size_t(run.all_logits ? n : 1) * n_vocab, 0.0f);
    // The last micro-batch starts early enough to hold the whole query window.
    const int capture = std::min({capture_q_, n_batch_, n});
    int last_start = n - (n % n_batch_ == 0 ? std::min(n_batch_, n) : n % n_batch_);
    if (n - last_start < capture) last_start = n - capture;
    std::vector<float> in_rows, out_rows;  // one micro-batch of F16 rows as F32 (or the probe's F32 input)
    std::vector<float> ds_rows;            // one micro-batch of DeepStack rows, gathered
    const size_t in_stride = run.residual_in_stride ? run.residual_in_stride : size_t(n_embd);
    const int n_ds = run.deepstack && !run.kv_only ? std::max(0, model_.hparams().n_deepstack - run.begin) : 0;
    for (int i = 0; i < n;) {
        int nb = i < last_start ? std::min(n_batch_, last_start - i) : n - i;
        if (run.window_cells) nb = window_batch(run.window_cells + i, nb);
        if (!run.cells) nb = block_batch(run, i, nb);  // a replay stores nothing: its blocks are whole already
        const bool last = i + nb == n;
        MicroBatch mb;
        mb.n_tokens = nb;
        mb.first_cell = run.cells ? run.cells[i] : run.window_cells ? run.window_cells[i] : run.first_cell + i;
        mb.cells = run.cells ? run.cells + i : nullptr;
        if (run.cells) mb.attend_end = block_end(run.cells[i + nb - 1]);
        mb.window_cells = run.window_cells ? run.window_cells + i : nullptr;
        mb.n_outputs = !logits || run.all_logits ? nb : 1;  // intermediate batches: one row keeps the graph uniform
        mb.layer_begin = run.begin;
        mb.layer_end = run.end;
        mb.first_sparse_cell = run.first_sparse_cell + i;
        mb.capture_q = last ? capture : 0;
        mb.kv_only = run.kv_only;
        mb.embd_input = run.begin == 0 && run.residual_in != nullptr;
        mb.n_deepstack_in = n_ds;
        const size_t rows = size_t(nb) * n_embd;
        float * out = nullptr;
        if (run.residual_out_half) {
            out_rows.resize(rows);
            out = out_rows.data();
        } else if (run.residual_out)
            out = run.residual_out + size_t(i) * n_embd;
        else if (logits && run.all_logits)
            out = logits_.data() + size_t(i) * n_vocab;
        else if (logits && last)
            out = logits_.data();
        if (run.probe_end && !out) {  // the probe reads this batch's rows at `end`, kept nowhere else
            out_rows.resize(rows);
            out = out_rows.data();
        }
        const float * res = run.residual_in ? run.residual_in + size_t(i) * in_stride : nullptr;
        if (res && in_stride != size_t(n_embd)) {  // wide input rows (DeepStack): the embedding part
            in_rows.resize(rows);
            for (int t = 0; t < nb; ++t) std::copy_n(res + t * in_stride, n_embd, in_rows.data() + size_t(t) * n_embd);
            res = in_rows.data();
        }
        if (n_ds > 0) {
            const size_t per = size_t(n_ds) * n_embd;
            ds_rows.resize(nb * per);
            for (int t = 0; t < nb; ++t)
                std::copy_n(run.deepstack + size_t(i + t) * run.deepstack_stride, per, ds_rows.data() + t * per);
        }
        if (run.residual_in_half) {
            in_rows.resize(rows);
            ggml_fp16_to_fp32_row(run.residual_in_half + size_t(i) * n_embd, in_rows.data(), int64_t(rows));
            res = in_rows.data();
        }
        eval_micro_batch(run.tokens ? run.tokens + i : nullptr, res, run.pos + i, n, mb, out,
                         n_ds > 0 ? ds_rows.data() : nullptr);
        if (run.probe_end) {  // selection at S = P: layer `end` writes its K/V (and captures q) from these rows
            MicroBatch probe = mb;
            probe.layer_begin = run.end;
            probe.layer_end = run.end + 1;
            probe.kv_only = true;
            probe.embd_input = false;
            probe.n_deepstack_in = 0;
            eval_micro_batch(run.tokens ? run.tokens + i : nullptr, out, run.pos + i, n, probe, nullptr);
        }
        if (run.residual_out_half) {
            ggml_fp32_to_fp16_row(out_rows.data(), run.residual_out_half + size_t(i) * n_embd, int64_t(rows));
        }
        i += nb;
        if (batch_callback_ && !batch_callback_(i, n)) fail(ErrorKind::Aborted, "stopped by the progress callback");
    }
}

int Context::window_batch(const int32_t * cells, int nb) const {
    // A ring row is rewritten by the cell one ring further on: the batch's
    // cells must lie closer together than the ring's rows beyond the window
    // (n_batch, padded), or a later token would overwrite what an earlier one sees.
    const int span = kv_->window_rows() > 0 ? kv_->window_rows() - model_.hparams().n_swa : INT_MAX;
    int k = 1;
    while (k < nb && cells[k] - cells[0] < span) ++k;
    return k;
}

int Context::block_batch(const LayerRun & run, int i, int nb) const {
    if (i + nb >= run.n) return nb;
    const auto cell = [&](int t) { return run.window_cells ? run.window_cells[t] : run.first_cell + t; };
    const int b = block_of(cell(i + nb - 1));
    if (b < 0 || block_of(cell(i + nb)) != b) return nb;
    int start = i + nb - 1;  // the block's first token in this batch
    while (start > i && block_of(cell(start - 1)) == b) --start;
    return start > i ? start - i : nb;
}

void Context::hold_from_layer(int layer, bool probe) {
    const int n_layer = model_.hparams().n_layer;
    if (layer < 0 || layer > n_layer)
        fail(ErrorKind::InvalidArgument, format("hold layer %d is outside [0, %d]", layer, n_layer));
    if (n_held() > 0) fail(ErrorKind::InvalidArgument, "tokens are already held: finish_held() first");
    if (layer < n_layer && kv_->is_split()) {
        fail(ErrorKind::InvalidArgument, "staged prefill needs a dense cache; this one is already compacted");
    }
    if (layer < n_layer && layer < logged_.layer) {
        fail(ErrorKind::InvalidArgument, format("hold layer %d is below the logged layer %d", layer, logged_.layer));
    }
    held_ = ResidualRows::at(layer < n_layer ? layer : -1, model_.hparams().n_pos_per_token, /*half=*/false);
    // Ids are replayed rather than kept as rows; a re-routing log's rerun has its rows already.
    // Not past a sliding-window layer: its ring has moved on from the held tokens' windows.
    bool windows_below = false;
    for (int il = 0; il < std::min(layer, n_layer); ++il) windows_below = windows_below || kv_->is_ring(il);
    held_.replay = layer > 0 && layer < n_layer && logged_.layer < 0 && !windows_below;
    held_.probe = probe && layer < n_layer;
    if (held_.probe) kv_->keys_only_from(layer, n_past_);  // selection reads the held tokens' keys there, no values
    held_.n_ds = layer < n_layer ? std::max(0, model_.hparams().n_deepstack - layer) : 0;
}

void Context::copy_rows(RowSpan from, RowSpan to, size_t n_values) {
    if (from.f32 && to.f32)
        std::copy_n(from.f32, n_values, to.f32);
    else if (from.f16 && to.f16)
        std::copy_n(from.f16, n_values, to.f16);
    else if (from.f32 && to.f16)
        ggml_fp32_to_fp16_row(from.f32, to.f16, int64_t(n_values));
    else if (from.f16 && to.f32)
        ggml_fp16_to_fp32_row(from.f16, to.f32, int64_t(n_values));
}

Context::RowSpan Context::ResidualRows::extend(int cell, const int32_t * new_tokens, int n, const int32_t * pos,
                                               int n_embd, bool ids) {
    if (tokens.empty()) first_cell = cell;
    const size_t at = tokens.size();
    tokens.insert(tokens.end(), new_tokens, new_tokens + n);
    for (size_t s = 0; s < pos_rows.size(); ++s) pos_rows[s].insert(pos_rows[s].end(), pos + s * n, pos + (s + 1) * n);
    if (layer <= 0) return {};               // layer 0 starts from the tokens
    if (replay && ids && n_rowless == at) {  // no row yet: the kept ones are replayed
        n_rowless += n;
        return {};
    }
    // Rows from here on (with unset slots for a rowless prefix, so rows stay indexed by token).
    if (n_ds > 0) deepstack.resize(tokens.size() * n_ds * n_embd);  // zeros: text has no DeepStack rows
    if (half)
        rows_f16.resize(tokens.size() * n_embd);
    else
        rows_f32.resize(tokens.size() * n_embd);
    return rows(at, n_embd);
}

Context::RowSpan Context::ResidualRows::rows(size_t token, int n_embd) {
    if (layer <= 0) return {};
    const size_t at = token * n_embd;
    return half ? RowSpan{nullptr, rows_f16.data() + at} : RowSpan{rows_f32.data() + at, nullptr};
}

void Context::ResidualRows::truncate(size_t n_tokens) {
    if (n_tokens >= tokens.size()) return;
    const size_t row = tokens.empty() ? 0 : (rows_f32.size() + rows_f16.size()) / tokens.size();
    const size_t ds_row = tokens.empty() ? 0 : deepstack.size() / tokens.size();
    tokens.resize(n_tokens);
    for (auto & p : pos_rows) p.resize(n_tokens);
    n_probed = std::min(n_probed, n_tokens);
    n_rowless = std::min(n_rowless, n_tokens);
    const size_t n_rows = n_tokens > n_rowless ? n_tokens : 0;  // only rowless tokens left: no rows at all
    (half ? rows_f16.resize(n_rows * row) : rows_f32.resize(n_rows * row));
    deepstack.resize(n_rows * ds_row);  // indexed as the rows
}

size_t Context::ResidualRows::bytes() const {
    size_t n = tokens.size() * sizeof(int32_t) +
               (rows_f32.size() + replayed.size() + deepstack.size()) * sizeof(float) +
               rows_f16.size() * sizeof(ggml_fp16_t);
    for (const auto & row : pos_rows) n += row.size() * sizeof(int32_t);
    return n;
}

Context::ResidualRows Context::ResidualRows::at(int layer, int n_pos_rows, bool half) {
    ResidualRows rows;
    rows.layer = layer;
    rows.half = half;
    rows.pos_rows.assign(n_pos_rows, {});
    return rows;
}

std::vector<int32_t> Context::ResidualRows::flat_positions() const {
    std::vector<int32_t> pos;
    for (const auto & row : pos_rows) pos.insert(pos.end(), row.begin(), row.end());
    return pos;
}

namespace {
// Positions of the chosen held tokens, stream-major (n_rows rows of idx.size()).
std::vector<int32_t> gather_positions(const std::vector<std::vector<int32_t>> & rows, const std::vector<int> & idx) {
    std::vector<int32_t> out;
    for (const auto & row : rows) {
        for (int k : idx) out.push_back(row[k]);
    }
    return out;
}
}  // namespace

void Context::probe_held_layer() {
    if (held_.layer < 0 || held_.tokens.empty()) fail(ErrorKind::InvalidArgument, "no tokens are held");
    const size_t from = held_.n_probed, n = held_.tokens.size();
    if (from >= n) return;  // probed as they passed (hold_from_layer(layer, probe))
    if (held_.layer > 0 && from < held_.n_rowless) {
        fail(ErrorKind::InvalidArgument,
             "held tokens that keep no rows are probed as they pass: hold_from_layer(layer, /*probe=*/true)");
    }
    std::vector<int> idx(n - from);
    for (size_t k = from; k < n; ++k) idx[k - from] = int(k);
    const std::vector<int32_t> pos = gather_positions(held_.pos_rows, idx);
    LayerRun run;
    run.tokens = held_.tokens.data() + from;
    run.input(held_.rows(from, model_.hparams().n_embd));  // none at layer 0: it starts from the tokens
    run.pos = pos.data();
    run.n = int(n - from);
    run.first_cell = held_.first_cell + int(from);
    run.begin = held_.layer;
    run.end = held_.layer + 1;
    run.kv_only = true;
    run_layers(run);
    held_.n_probed = n;
}

void Context::replay_held(const std::vector<int32_t> * kept_cells) {
    const int P = held_.layer;
    if (P < 0 || held_.tokens.empty()) fail(ErrorKind::InvalidArgument, "no tokens are held");
    if (kv_->is_split()) {
        fail(ErrorKind::InvalidArgument, "replay_held() reads the dense cache: call it before compact_kv()");
    }
    std::vector<int> idx;  // rowless held tokens to replay
    for (size_t k = 0; k < held_.n_rowless; ++k) {
        const int32_t cell = held_.first_cell + int32_t(k);
        if (!kept_cells || std::binary_search(kept_cells->begin(), kept_cells->end(), cell)) idx.push_back(int(k));
    }
    const int m = static_cast<int>(idx.size()), n_embd = model_.hparams().n_embd;
    held_.replayed.assign(size_t(m) * n_embd, 0.0f);
    if (m > 0) {
        std::vector<int32_t> tokens(m), cells(m);
        for (int j = 0; j < m; ++j) {
            tokens[j] = held_.tokens[idx[j]];
            cells[j] = held_.first_cell + idx[j];
        }
        const std::vector<int32_t> pos = gather_positions(held_.pos_rows, idx);
        LayerRun run;
        run.tokens = tokens.data();
        run.cells = cells.data();
        run.pos = pos.data();
        run.n = m;
        run.first_cell = cells[0];
        run.begin = 0;
        run.end = P;
        run.residual_out = held_.replayed.data();
        const int capture = capture_q_;  // the window's queries were captured in the first pass
        capture_q_ = 0;
        try {
            run_layers(run);
        } catch (...) {
            capture_q_ = capture;
            held_.replayed.clear();
            throw;
        }
        capture_q_ = capture;
    }
    held_.replayed_ready = true;
}

void Context::finish_held() {
    const int n_layer = model_.hparams().n_layer, n_embd = model_.hparams().n_embd, P = held_.layer;
    if (P < 0 || held_.tokens.empty()) fail(ErrorKind::InvalidArgument, "no tokens are held");
    kv_->keys_only_from(P, INT_MAX);  // finishing tokens write their values at P
    std::vector<int> idx;             // held tokens to finish
    int first_sparse = 0;
    for (int k = 0; k < n_held(); ++k) {
        const int cell = held_.first_cell + k;
        if (!kv_->is_split() || std::binary_search(kept_cells_.begin(), kept_cells_.end(), cell)) idx.push_back(k);
    }
    if (kv_->is_split()) {
        for (int il = P; il < n_layer; ++il) {
            if (!kv_->is_window(il) && kv_->n_full_heads(il) > 0)
                fail(ErrorKind::InvalidArgument, format("layer %d of the pruned zone has full KV heads", il));
        }
        if (idx.empty() || idx.back() != n_held() - 1)
            fail(ErrorKind::InvalidArgument, "the last held token must be kept");
        first_sparse = int(std::lower_bound(kept_cells_.begin(), kept_cells_.end(), held_.first_cell + idx[0]) -
                           kept_cells_.begin());
    }
    if (held_.n_rowless > 0 && !held_.replayed_ready) {
        if (kv_->is_split()) {
            fail(ErrorKind::InvalidArgument, "held tokens without rows are replayed from the dense cache: call "
                                             "replay_held(kept) before compact_kv()");
        }
        replay_held(nullptr);  // no compaction: every held token finishes
    }
    const int m = static_cast<int>(idx.size());
    const size_t n_rowless_kept = size_t(std::lower_bound(idx.begin(), idx.end(), int(held_.n_rowless)) - idx.begin());
    if (P > 0 && n_rowless_kept * n_embd != held_.replayed.size()) {
        fail(ErrorKind::InvalidArgument, format("replay_held() replayed %zu tokens; the cache keeps %zu of them",
                                                held_.replayed.size() / n_embd, n_rowless_kept));
    }
    std::vector<int32_t> tokens(m);
    for (int j = 0; j < m; ++j) tokens[j] = held_.tokens[idx[j]];
    RowSpan input;  // none at layer 0: it starts from the tokens
    if (P > 0 && held_.rows_f32.empty()) {
        input = RowSpan{held_.replayed.data(), nullptr};  // every held token was replayed
    } else if (P > 0) {
        // Kept rows move to the front in place (row j <= idx[j], and nothing
        // reads the held rows after this); replayed ones fill their slots.
        for (int j = 0; j < m; ++j) {
            if (size_t(idx[j]) < held_.n_rowless)
                copy_rows(RowSpan{held_.replayed.data() + size_t(j) * n_embd, nullptr}, held_.rows(j, n_embd),
                          size_t(n_embd));
            else if (idx[j] != j)
                copy_rows(held_.rows(idx[j], n_embd), held_.rows(j, n_embd), size_t(n_embd));
            if (held_.n_ds > 0 && idx[j] != j) {  // a replayed (text) token's slot keeps zeros
                const size_t per = size_t(held_.n_ds) * n_embd;
                std::copy_n(held_.deepstack_rows(idx[j], n_embd), per, held_.deepstack_rows(j, n_embd));
            }
        }
        input = held_.rows(0, n_embd);
    }
    const std::vector<int32_t> pos = gather_positions(held_.pos_rows, idx);
    LayerRun run;
    run.tokens = tokens.data();
    run.input(input);
    run.pos = pos.data();
    run.n = m;
    run.first_cell =
        held_.first_cell + idx[0];  // pruned-zone layers have no full heads: only sizes the unused full mask
    run.first_sparse_cell = first_sparse;
    run.begin = P;
    run.end = n_layer;
    std::vector<int32_t> cells;  // sliding-window layers store the kept tokens at their own cells
    if (kv_->is_split() && model_.hparams().n_swa > 0) {
        for (int k : idx) cells.push_back(held_.first_cell + k);
        run.window_cells = cells.data();
    }
    if (!held_.deepstack.empty())
        run.deepstack = held_.deepstack.data(), run.deepstack_stride = size_t(held_.n_ds) * n_embd;
    run_layers(run);
    held_ = ResidualRows{};
}

void Context::log_residual_at(int layer) {
    const int n_layer = model_.hparams().n_layer;
    if (layer < 0 || layer >= n_layer)
        fail(ErrorKind::InvalidArgument, format("log layer %d is outside [0, %d)", layer, n_layer));
    if (n_past_ > 0) fail(ErrorKind::InvalidArgument, "the residual log starts with an empty context");
    if (layer < model_.hparams().n_deepstack) {
        fail(ErrorKind::InvalidArgument,
             format("re-routing on this model needs a select layer of at least %d: its first %d layers add DeepStack "
                    "rows, which the residual log does not keep",
                    model_.hparams().n_deepstack, model_.hparams().n_deepstack));
    }
    logged_ = ResidualRows::at(layer, model_.hparams().n_pos_per_token, /*half=*/true);
}

void Context::rewind_to_logged_layer(int hold_layer) {
    const int n_layer = model_.hparams().n_layer, S = logged_.layer;
    if (S < 0) fail(ErrorKind::InvalidArgument, "no residual log: call log_residual_at() on the empty context");
    if (n_held() > 0) fail(ErrorKind::InvalidArgument, "tokens are held: finish_held() first");
    if (hold_layer < S || hold_layer > n_layer) {
        fail(ErrorKind::InvalidArgument, format("hold layer %d is outside [%d, %d]", hold_layer, S, n_layer));
    }
    if (logged_.tokens.empty()) fail(ErrorKind::InvalidArgument, "nothing to rewind: the log is empty");
    // The dense zone moves over as it is; layers [S, n_layer) are freed now and
    // start over, growing again as the rerun fills them.
    auto fresh = std::make_unique<KvCache>(model_, n_ctx_, n_batch_);
    fresh->take_layers(*kv_, S);
    replace_cache(std::move(fresh));
    n_sparse_cells_ = 0;
    kept_cells_.clear();
    sparse_cell_block_.clear();
    hidden_cells_.clear();
    window_pruned_from_ = kNoPrunedZone;
    window_hidden_.clear();

    hold_from_layer(hold_layer);
    const int n = static_cast<int>(logged_.tokens.size()), n_embd = model_.hparams().n_embd;
    const std::vector<int32_t> pos = logged_.flat_positions();
    try {
        const RowSpan held_rows = held_.layer >= 0
                                      ? held_.extend(logged_.first_cell, logged_.tokens.data(), n, pos.data(), n_embd,
                                                     /*ids=*/false)
                                      : RowSpan{};
        if (hold_layer > S) {
            LayerRun run;
            run.tokens = logged_.tokens.data();
            run.input(logged_.rows(0, n_embd));  // none at layer 0: it starts from the tokens
            run.pos = pos.data();
            run.n = n;
            run.first_cell = logged_.first_cell;
            run.begin = S;
            run.end = hold_layer;
            run.output(held_rows);  // none at hold_layer == n_layer: the logits instead
            run_layers(run);
        } else {
            copy_rows(logged_.rows(0, n_embd), held_rows, size_t(n) * n_embd);  // hold_layer == S
        }
    } catch (...) {
        held_.truncate(0);
        throw;
    }
}

namespace {

// Fills an F16 mask tensor [n_kv, n_rows] query row by query row,
// fill(i, row) writing row i's n_kv values, without a host copy of the whole
// mask (at 64K cells a 512-token batch's mask is 64 MiB): straight into the
// tensor where its buffer is host memory (the CPU), else through a staging
// block of rows of at most 1 MiB.
template <typename Fill> void fill_mask(ggml_tensor * t, Fill fill) {
    const int64_t n_kv = t->ne[0], n_rows = t->ne[1];
    if (ggml_backend_buffer_is_host(t->buffer)) {
        for (int64_t i = 0; i < n_rows; ++i)
            fill(int(i), reinterpret_cast<ggml_fp16_t *>((char *)t->data + i * t->nb[1]));
        return;
    }
    const int64_t block = std::max<int64_t>(1, (int64_t(1) << 20) / int64_t(t->nb[1]));
    std::vector<ggml_fp16_t> staged(size_t(block * n_kv));
    for (int64_t i0 = 0; i0 < n_rows; i0 += block) {
        const int64_t nb = std::min(block, n_rows - i0);
        for (int64_t i = 0; i < nb; ++i) fill(int(i0 + i), staged.data() + i * n_kv);
        ggml_backend_tensor_set(t, staged.data(), size_t(i0) * t->nb[1], size_t(nb) * t->nb[1]);
    }
}

// Which cells a token sees besides the causal ones: those of its bidirectional
// block (Context::eval_embd's blocks) that are stored already (below `stored`:
// a block a micro-batch could not hold whole is seen as far as it is stored,
// as llama.cpp's non-causal decode sees its cache).
struct Blocks {
    const std::vector<int32_t> * of = nullptr;  // per cell: its block or -1
    int stored = 0;                             // cells below this hold their K/V
    int at(int cell) const { return of && size_t(cell) < of->size() ? (*of)[cell] : -1; }
    bool sees(int own, int cell) const {
        if (cell <= own) return true;
        const int b = at(own);
        return b >= 0 && cell < stored && at(cell) == b;
    }
};

// Causal mask [n_kv, n_tokens] over cells filled in arrival order (not by rope
// position: M-RoPE images reuse positions): row i sees cells <= its own
// (first + i, or cells[i] in a replay) and its block's, except `hidden` ones.
void set_causal_mask(ggml_tensor * t, int first, const std::vector<bool> & hidden, const int32_t * cells,
                     const Blocks & blocks) {
    const ggml_fp16_t zero = ggml_fp32_to_fp16(0.0f), neg_inf = ggml_fp32_to_fp16(-INFINITY);
    const int n_kv = int(t->ne[0]);
    fill_mask(t, [&](int i, ggml_fp16_t * row) {
        const int own = cells ? cells[i] : first + i;
        for (int j = 0; j < n_kv; ++j) {
            const bool is_hidden = size_t(j) < hidden.size() && hidden[j];
            row[j] = blocks.sees(own, j) && !is_hidden ? zero : neg_inf;
        }
    });
}

// The sliding-window layers' mask [n_kv_swa, n_tokens]: row i sees the n_swa
// cells up to its own (llama.cpp's LLAMA_SWA_TYPE_STANDARD), read from the
// ring rows that hold them (KvCache::window_row_cell), except `hidden` ones.
// Positions, not cells, count (llama.cpp's is_masked_swa): the pruned zone's
// kept tokens and tokens given at positions of their own see what the same
// tokens would see at those positions in one dense pass.
void set_window_mask(ggml_tensor * t, const GraphContext & gc, const std::vector<bool> & hidden, const int32_t * pos,
                     const std::vector<int32_t> & cell_pos, const Blocks & blocks) {
    const ggml_fp16_t zero = ggml_fp32_to_fp16(0.0f), neg_inf = ggml_fp32_to_fp16(-INFINITY);
    const int n_rows = gc.n_kv_swa, window = gc.hp.n_swa;
    const int last = gc.end_cell - 1;
    std::vector<int> row_cell(n_rows);
    for (int r = 0; r < n_rows; ++r) {
        const int c = gc.kv.window_row_cell(r, last);
        const bool is_hidden = c >= 0 && size_t(c) < hidden.size() && hidden[c];
        row_cell[r] = is_hidden ? -1 : c;
    }
    const int32_t * own_cells = gc.cells ? gc.cells : gc.window_cells;
    fill_mask(t, [&](int i, ggml_fp16_t * row) {
        const int own = own_cells ? own_cells[i] : gc.first_cell + i;
        for (int r = 0; r < n_rows; ++r) {
            const int c = row_cell[r];
            row[r] = c >= 0 && blocks.sees(own, c) && pos[i] - cell_pos[c] < window ? zero : neg_inf;
        }
    });
}

// Whether the scheduler gave an input memory: one that no node reads (the
// full-head mask when every head is sparse, say) has none and needs no data.
bool in_graph(const ggml_tensor * t) { return t && t->buffer; }

void set_i32_rows(ggml_tensor * t, const std::vector<int32_t> & row) {
    if (!in_graph(t)) return;
    std::vector<int32_t> values;
    for (int64_t i = 0; i < t->ne[1]; ++i) values.insert(values.end(), row.begin(), row.end());
    ggml_backend_tensor_set(t, values.data(), 0, ggml_nbytes(t));
}

// Head routing of every layer of a compacted cache (hts_routed_attention).
void set_routed_inputs(const GraphContext & gc, const std::vector<int32_t> & sparse_cell_block) {
    for (int il = gc.layer_begin; il < gc.layer_end; ++il) {
        if (gc.kv.is_window(il)) continue;  // not routed
        const RoutedLayerInputs & in = gc.inp_routed[il];
        const std::vector<bool> & is_full = gc.kv.full_heads(il);
        std::vector<int32_t> perm, unperm, full, sparse;
        hts_head_permutation(is_full, gc.hp.n_head, perm, unperm);
        for (int g = 0; g < gc.hp.n_head_kv; ++g) (is_full[g] ? full : sparse).push_back(g);
        set_i32_rows(in.head_perm, perm);
        set_i32_rows(in.head_unperm, unperm);
        set_i32_rows(in.full_heads, full);
        set_i32_rows(in.sparse_heads, sparse);
    }
    const Blocks blocks{&sparse_cell_block, gc.first_sparse_cell + gc.n_tokens};
    if (in_graph(gc.inp_kq_mask_sparse))
        set_causal_mask(gc.inp_kq_mask_sparse, gc.first_sparse_cell, {}, nullptr, blocks);
}

}  // namespace

// pos: n_pos_per_token rows of this batch's positions, rows pos_stride apart.
struct CellState {                              // what the masks read per cell, from the Context
    const std::vector<bool> & hidden;           // set_hidden_cells
    const std::vector<bool> & window_hidden;    // compact_kv's unkept cells
    const std::vector<int32_t> & pos;           // rope position
    const std::vector<int32_t> & block;         // bidirectional block, or -1
    const std::vector<int32_t> & sparse_block;  // the same per compact cell
    int n_stored;                               // cells holding K/V when this batch attends
};

static void set_inputs(const GraphContext & gc, const int32_t * tokens, const float * residual, const int32_t * pos,
                       int pos_stride, const CellState & cs, const float * deepstack) {
    if (gc.inp_tokens) ggml_backend_tensor_set(gc.inp_tokens, tokens, 0, sizeof(int32_t) * gc.n_tokens);
    if (gc.inp_residual) ggml_backend_tensor_set(gc.inp_residual, residual, 0, ggml_nbytes(gc.inp_residual));
    if (in_graph(gc.inp_deepstack))
        ggml_backend_tensor_set(gc.inp_deepstack, deepstack, 0, ggml_nbytes(gc.inp_deepstack));

    for (int s = 0; s < gc.hp.n_pos_per_token; ++s) {
        ggml_backend_tensor_set(gc.inp_pos, pos + size_t(s) * pos_stride, sizeof(int32_t) * size_t(s) * gc.n_tokens,
                                sizeof(int32_t) * gc.n_tokens);
    }
    const Blocks blocks{&cs.block, cs.n_stored};
    if (in_graph(gc.inp_kq_mask)) set_causal_mask(gc.inp_kq_mask, gc.first_cell, cs.hidden, gc.cells, blocks);
    if (in_graph(gc.inp_kq_mask_swa)) set_window_mask(gc.inp_kq_mask_swa, gc, cs.hidden, pos, cs.pos, blocks);
    if (in_graph(gc.inp_kq_mask_swa_pruned))
        set_window_mask(gc.inp_kq_mask_swa_pruned, gc, cs.window_hidden, pos, cs.pos, blocks);
    if (in_graph(gc.inp_window_rows)) {
        std::vector<int32_t> rows(gc.n_tokens);
        for (int i = 0; i < gc.n_tokens; ++i) rows[i] = gc.kv.window_row(gc.window_cells[i]);
        ggml_backend_tensor_set(gc.inp_window_rows, rows.data(), 0, ggml_nbytes(gc.inp_window_rows));
    }
    if (gc.inp_kq_mask_sparse) set_routed_inputs(gc, cs.sparse_block);

    if (in_graph(gc.inp_out_ids)) {
        std::vector<int32_t> ids(gc.n_outputs);
        for (int k = 0; k < gc.n_outputs; ++k) ids[k] = gc.n_tokens - gc.n_outputs + k;
        ggml_backend_tensor_set(gc.inp_out_ids, ids.data(), 0, sizeof(int32_t) * ids.size());
    }
}

void Context::eval_micro_batch(const int32_t * tokens, const float * residual_in, const int32_t * pos, int pos_stride,
                               const MicroBatch & mb, float * out, const float * deepstack) {
    ggml_init_params params = {graph_meta_.size(), graph_meta_.data(), true};
    ContextGuard guard{ggml_init(params)};
    ggml_cgraph * gf = ggml_new_graph_custom(guard.ctx, graph_size_, false);
    const int n_layer = model_.hparams().n_layer;
    const int end = mb.layer_end < 0 ? n_layer : mb.layer_end;
    const int n_kv_sparse = kv_->is_split() ? kv_->n_sparse_kv_for(mb.first_sparse_cell + mb.n_tokens) : 0;
    kv_->prepare(mb.layer_begin, end, kv_->n_kv_for(mb.kv_end()), mb.cells ? n_past_ : mb.first_cell, n_kv_sparse,
                 mb.first_sparse_cell);
    MicroBatch batch = mb;
    batch.window_pruned_from = window_pruned_from_;
    GraphContext gc(model_, *kv_, guard.ctx, gf, batch);
    ggml_tensor * result = model_.arch().build_graph(gc);  // [n_vocab, n_outputs] or residual [n_embd, n_tokens]
    ggml_set_output(result);
    ggml_build_forward_expand(gf, result);

    ggml_backend_sched_reset(sched_);
    if (!ggml_backend_sched_alloc_graph(sched_, gf)) fail(ErrorKind::Backend, "cannot allocate the compute graph");
    note_compute_bytes();
    // Cells holding K/V when this batch attends: every one a replay reads; otherwise
    // up to the batch's last, since a batch stores its own cells (contiguous, or window_cells) first.
    const int n_stored = mb.cells ? n_past_ : mb.end_cell();
    const CellState cs{hidden_cells_, window_hidden_, cell_pos_, cell_block_, sparse_cell_block_, n_stored};
    set_inputs(gc, tokens, residual_in, pos, pos_stride, cs, deepstack);
    record_graph_ops(gf);
    if (ggml_backend_sched_graph_compute(sched_, gf) != GGML_STATUS_SUCCESS) {
        fail(ErrorKind::Backend, "graph computation failed");
    }
    if (out) ggml_backend_tensor_get(result, out, 0, ggml_nbytes(result));
    if (mb.capture_q > 0) {
        captured_q_.resize(model_.hparams().n_layer);
        n_captured_q_ = mb.capture_q;
        for (size_t il = 0; il < gc.captured_q.size(); ++il) {
            ggml_tensor * t = gc.captured_q[il];
            if (!t) continue;
            captured_q_[il].resize(ggml_nelements(t));
            ggml_backend_tensor_get(t, captured_q_[il].data(), 0, ggml_nbytes(t));
        }
    }
}

}  // namespace hts
