// HT-Sparse bookkeeping of one conversation (docs/architecture.md#staged-prefill): its sparse
// spans, the query window held back until the answer starts, and the
// selection step that routes KV heads, compacts the cache and finishes the
// pruned zone. Conversation drives it; it drives a Context.
//
// Staged prefill: the span (and what follows it) runs through layers [0, P)
// only, as soon as it is added, its residual stream at P kept. When the answer
// starts, the query window (the tokens after the span) runs through [0, P)
// with its queries captured; saliency at every layer below P picks the full
// KV heads and the select layer S picks the kept segments; the cache is
// compacted for every layer (retroactive compaction); then only the kept
// tokens run through the pruned zone [P, L). With S = P, layer S's keys are
// written by a probe (no attention) so selection can read them.
//
// Deviation from the design (docs/architecture.md#deviations-from-the-design): layers [S, P) run every head over every
// token during prefill (routing applies from the answer on), because routing a layer needs that layer's own saliency,
// known only once the window has run through it. All tokens stay in the residual stream there anyway, so only attention
// FLOPs differ.
//
// Re-routing (SparseConfig::reroute): the context logs the residual stream at
// S of every token from the start, and the dense zone [0, S) keeps every
// token (no retroactive compaction there). Each follow-up question rewinds
// layers [S, L) to a dense state, reruns [S, P) for every logged token, and
// then selects, compacts and finishes as the first question did.
#pragma once

#include "context.h"
#include "sparse_config.h"
#include "sparse_select.h"

#include <functional>
#include <optional>
#include <vector>

namespace hts {

class Model;

// Maps the selected span tokens (relative to the first span's start) to the
// ones kept instead: baselines (random, first lines) keep the head routing
// of the real selection and change only the tokens.
using KeptReplacer = std::function<std::vector<int32_t>(const std::vector<int32_t> &)>;

// Milliseconds of each stage of one selection.
struct SelectTimings {
    double question = 0;     // the query window through [0, P), queries captured
    double select = 0;       // saliency, selection and compaction
    double pruned_zone = 0;  // the kept tokens through [P, L); 0 without a pruned zone
    bool held = false;       // a pruned zone ran
};

// Segment starts of a text span: a new segment after every token that ends a
// line, and every max_tokens tokens within a long line.
std::vector<int32_t> line_segments(const Model & model, const std::vector<int32_t> & span, int max_tokens);

class SparseState {
public:
    // config: as requested; resolved here against the model's GGUF keys.
    // Starts the residual log when re-routing (the context must be empty).
    SparseState(Context & context, const SparseConfig & config);

    const SparseConfig & config() const { return config_; }
    const std::vector<SparseSpan> & spans() const { return spans_; }
    const std::vector<int32_t> & pending() const { return pending_; }
    const std::optional<SparseSelection> & selection() const { return selection_; }
    int n_selections() const { return n_selections_; }

    // Tokens after an unselected span wait for the answer (the query window).
    bool holds_back() const { return !spans_.empty() && !selected_; }
    // Queues tokens of the query window (only while holds_back()).
    void queue(const std::vector<int32_t> & tokens);

    // A text span: its segments are lines (split into runs of at most segment_tokens tokens).
    void add_span(const std::vector<int32_t> & tokens);
    // Embedding rows (visual tokens) as a span: F32 [n_embd, n]. segments:
    // span-relative starts (one per frame, say); null: runs of segment_tokens rows.
    // blocks: per row, see Context::eval_embd.
    void add_embedding_span(const std::vector<float> & rows, int32_t placeholder, const TokenPositions * positions,
                            const std::vector<int32_t> * segments, const std::vector<int32_t> * blocks = nullptr);

    // Evaluates the query window with its queries captured, selects, compacts,
    // and runs the kept tokens through the pruned zone. Returns the timings
    // when a selection ran; nullopt when there was no new question (a
    // continuation: the routing stands).
    std::optional<SelectTimings> select(const KeptReplacer * replace_kept);
    // Calibration: evaluates the query window with its queries captured and
    // returns the selection at each (select layer, prune layer) of `zones`,
    // compacting nothing. Needs spans that ran every layer (prune_layer = the
    // layer count) and no selection yet; afterwards nothing is held back and
    // the cache stays dense.
    std::vector<SparseSelection> trial_selections(const std::vector<std::pair<int, int>> & zones);
    // An answer ended: with re-routing, the next question selects anew.
    void answered();

private:
    Context & context_;
    SparseConfig config_;
    std::vector<SparseSpan> spans_;
    std::vector<int32_t> pending_;  // tokens after the last span: the query window
    bool selected_ = false;
    std::optional<SparseSelection> selection_;
    int n_selections_ = 0;

    void begin_span();  // the checks and hold before a span is evaluated
    std::vector<int32_t> kept_cells(const std::vector<int32_t> & kept_in_span) const;
};

}  // namespace hts
